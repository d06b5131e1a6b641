"""What the agents said of the update commands, applied to the rollout's devices: a refused
command (cmd_ack) fails its device, an update result (event) moves it to the state reported,
judged by plan.on_device_report; a power or input command's ack goes to fleet.commands.
Each tick reads the agents' messages stored by ingest since its cursor; a report of an older
attempt, or of a device already settled, changes nothing."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from fleet.commands.sending import apply_ack
from fleet.models import AgentMessage
from fleet.rollouts.campaigns import policy_from_json
from fleet.rollouts.models import Rollout, RolloutDevice, TickLease
from fleet.rollouts.plan import (
    ENDED,
    IN_FLIGHT,
    DeviceUpdateState,
    MarkDevice,
    on_device_report,
)
from fleet.rollouts.snapshot import apply_mark, device_view, next_window

REPORTS_PER_TICK = 5000
log = logging.getLogger(__name__)


def apply_reports(session: Session, lease: TickLease, now: datetime) -> int:
    """Apply the agents' messages after `lease.cursor` (at most REPORTS_PER_TICK) and move
    the cursor past them; returns how many changed a device. Nothing is committed here."""
    rows = session.exec(
        select(AgentMessage)
        .where(col(AgentMessage.id) > lease.cursor)
        .order_by(col(AgentMessage.id))
        .limit(REPORTS_PER_TICK)
    ).all()
    applied = 0
    for row in rows:
        applied += _apply_report(session, row.site_code, row.kind, row.body, now)
        lease.cursor = max(lease.cursor, row.id or 0)
    session.add(lease)
    return applied


def _apply_report(
    session: Session, site: str, kind: str, body: dict[str, Any], now: datetime
) -> int:
    """One agent message from `site` (the site its broker login published as)."""
    data = body.get("data") or {}
    cmd_id = body.get("cmd_id") if kind == "cmd_ack" else data.get("cmd_id")
    if not cmd_id:
        return 0
    target = session.exec(select(RolloutDevice).where(RolloutDevice.cmd_id == cmd_id)).first()
    if target is None and kind == "cmd_ack":
        return apply_ack(session, site, body, now)  # a power or input command's answer
    if target is not None and target.site_code != site:
        # Another site's command id: a site speaks for its own devices only.
        log.warning(
            "site %s reported on %s, a command of site %s: ignored", site, cmd_id, target.site_code
        )
        return 0
    if target is None or target.state not in IN_FLIGHT:
        return 0  # stale: an older attempt, or already settled
    rollout = session.get(Rollout, target.rollout_id)
    assert rollout is not None
    policy = policy_from_json(rollout.policy)
    view = device_view(target, None, None, rollout)
    # A cancelled rollout sends nothing again: what its agents report is final.
    ended = rollout.state in {s.value for s in ENDED}
    if kind == "cmd_ack":
        if body.get("ok"):
            return 0  # success counts only when the device reports the version (events)
        message = body.get("message") or "refused"
        refused = (
            DeviceUpdateState.cancelled
            if ended and message.startswith("cancelled")
            else DeviceUpdateState.failed
        )
        mark = on_device_report(view, refused, policy, message, ended=ended)
    else:
        try:
            reported = DeviceUpdateState(data.get("state", ""))
        except ValueError:
            return 0
        message = body.get("message") or reported.value
        if (
            reported == DeviceUpdateState.succeeded
            and data.get("firmware") != rollout.release_version
        ):
            reported = DeviceUpdateState.failed
            message = f"agent reported success but the device reports {data.get('firmware')!r}"
        mark = on_device_report(view, reported, policy, message, ended=ended)
        if reported == DeviceUpdateState.skipped:
            mark = MarkDevice(
                mark.device_id,
                mark.state,
                mark.message,
                next_window(session, rollout, target.site_code, now, after_current=True),
            )
    apply_mark(target, mark, now)
    session.add(target)
    return 1
