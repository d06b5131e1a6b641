"""Between the database and plan.py: a rollout's rows read into the views `next_actions` and
`on_device_report` judge (each device's version, reachability and use, its site's link), the
sites' calendars the update windows need, and plan's marks written back onto the rows."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from sqlmodel import Session, col, select

from fleet.devices.registry import timetable_from_json
from fleet.models import AgentStatus, Device, Site
from fleet.protocol.timetable import Timetable
from fleet.rollouts.campaigns import policy_from_json
from fleet.rollouts.models import Rollout, RolloutDevice
from fleet.rollouts.plan import (
    DeviceUpdateState,
    DeviceView,
    MarkDevice,
    Policy,
    RolloutState,
    RolloutView,
)
from fleet.rollouts.windows import next_window_start


def read_rollout(
    session: Session, rollout: Rollout, policy: Policy
) -> tuple[list[RolloutDevice], RolloutView]:
    """The rollout's device rows, and the view of it plan.next_actions takes."""
    rows = list(
        session.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout.id)).all()
    )
    registry = {
        d.id: d
        for d in session.exec(select(Device).where(col(Device.id).in_([r.device_id for r in rows])))
    }
    online = {
        s.site_code: s.state == "online"
        for s in session.exec(
            select(AgentStatus).where(col(AgentStatus.site_code).in_({r.site_code for r in rows}))
        )
    }
    devices = tuple(
        device_view(r, registry.get(r.device_id), online.get(r.site_code, False), rollout)
        for r in rows
    )
    view = RolloutView(
        state=RolloutState(rollout.state),
        current_wave=rollout.current_wave,
        target_version=rollout.release_version,
        policy=policy,
        devices=devices,
        start_at=rollout.start_at,
        approved_through=rollout.approved_through,
    )
    return rows, view


def device_view(
    row: RolloutDevice, device: Device | None, site_online: bool | None, rollout: Rollout
) -> DeviceView:
    """One device of the rollout as plan.py sees it. `device` None: its registry row was not
    read (or is gone), so nothing of its firmware or use is known; `site_online` None: the
    site's link was not read, taken as online."""
    reading = (device.last_reading or {}) if device else {}
    return DeviceView(
        device_id=row.device_id,
        site_code=row.site_code,
        wave=row.wave,
        state=DeviceUpdateState(row.state),
        attempts=row.attempts,
        sent_at=row.sent_at,
        next_try_at=row.next_try_at,
        message=row.message,
        firmware=device.firmware if device else None,
        seen_at=device.last_seen_at if device else None,
        reachable=device.reachable if device else None,
        in_use=bool(device and device.power == "on" and reading.get("input")),
        site_online=bool(site_online) if site_online is not None else True,
        method=row.method,
    )


def apply_mark(row: RolloutDevice, mark: MarkDevice, now: datetime) -> None:
    """Write a device mark from the plan onto its rollout row, stamped `now`."""
    row.state, row.message, row.next_try_at, row.updated_at = (
        mark.state.value,
        mark.message,
        mark.next_try_at,
        now,
    )


def site_calendar(session: Session, site_code: str) -> tuple[Timetable, ZoneInfo]:
    """The site's timetable and timezone; LookupError for a site not registered."""
    site = session.get(Site, site_code)
    if site is None:
        raise LookupError(f"site {site_code} is not registered")
    return timetable_from_json(site.timetable), ZoneInfo(site.timezone)


def next_window(
    session: Session,
    rollout: Rollout,
    site: str,
    now: datetime,
    *,
    policy: Policy | None = None,
    after_current: bool = False,
) -> datetime | None:
    """When the rollout's update window next opens at `site`: `now` if open (unless
    `after_current`, then the window after this one); None when the policy leaves no time
    (see fleet.rollouts.windows.next_window_start)."""
    timetable, tz = site_calendar(session, site)
    window = (policy or policy_from_json(rollout.policy)).window
    return next_window_start(now, timetable, tz, window, after_current=after_current)
