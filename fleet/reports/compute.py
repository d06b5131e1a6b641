"""A usage report's figures, from hourly roll-ups only (never raw samples).

The period is a range of local dates, inclusive, read in each site's own calendar: March at
Tribhuvan starts at 18:15 UTC on 28 February. Figures are per device, then summed per room,
site and vendor (ratios are recomputed from the sums, not averaged).

Definitions (also written into every report):
- utilization: class hours on / timetabled class hours.
- after-hours: hours on outside the timetable's class periods (breaks and days off included).
- availability: class hours reachable and not faulty / class hours with readings. Class hours
  without readings (an agent or link outage) are left out of it and reported as
  `class_hours_unknown`.
- MTBF: hours on / faults (a fault is the device turning faulty; a gap does not split one).
- input shares: each hour's most used input, weighted by that hour's minutes on.
- end of life: the date the lamp (filter) reaches its profile's rated life if used as much per
  day as in this period.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, case, func, select
from sqlmodel import SQLModel, col

from fleet.commands.schedules import SCHEDULE_ACTOR, avoided_hours
from fleet.devices.profile_book import profiles_in
from fleet.devices.registry import timetable_from_json
from fleet.models import Device, Room, Site
from fleet.reports.models import UsageHour
from fleet.reports.rows import (
    DeviceInfo,
    ReportRequest,
    add_inputs,
    add_lasts,
    add_savings,
    device_row,
    group,
    total,
)

USAGE = SQLModel.metadata.tables[str(UsageHour.__tablename__)]
DEVICES = SQLModel.metadata.tables["device"]

DEFINITIONS = {
    "period": "local dates of each site, from and to inclusive",
    "utilization": "class hours on / timetabled class hours",
    "after_hours_on": "hours on outside timetabled class periods (breaks and days off included)",
    "after_hours_energy_kwh": "after-hours on-time x illustrative power draw per device kind",
    "saved_on_hours": "on-time the power schedules' switch-offs avoided: from each confirmed "
    "switch-off to the next timetabled class, at most 24 h (an estimate)",
    "saved_lamp_hours": "saved_on_hours of projectors",
    "saved_energy_kwh": "saved_on_hours x illustrative power draw per device kind",
    "availability": "class hours reachable and not faulty / class hours with readings; "
    "class hours without readings are reported as class_hours_unknown",
    "mtbf_hours": "hours on / faults",
    "input_share": "each hour's most used input, weighted by that hour's minutes on",
    "end_of_life": "date the rated life is reached at this period's rate of use",
}


@dataclass(frozen=True)
class ReportBasis:
    """What a report's figures rest on besides the roll-ups."""

    # The firmware profiles: rated lamp and filter life, minimum firmware, by profile id.
    profiles_dir: Path
    # Illustrative draw when on, by device kind (W), for after-hours energy.
    power_draw_w: Mapping[str, float]


class ReportError(ValueError):
    """A request a report cannot be made for; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        """`status`: the HTTP status to answer with; `message`: what is wrong and what to ask
        instead."""
        super().__init__(message)
        self.status = status


def check_request(conn: Connection, request: ReportRequest, max_days: int) -> ReportRequest:
    """The request with the vendor spelt as registered; ReportError names what is wrong (a
    period longer than `max_days`, an unknown vendor, site or device)."""
    if request.start > request.end:
        raise ReportError(422, f"'from' ({request.start}) is after 'to' ({request.end}): swap them")
    if request.days > max_days:
        raise ReportError(
            422,
            f"the period {request.start}..{request.end} covers {request.days} days, more than "
            f"the limit of {max_days} (FLEET_REPORT_MAX_DAYS): ask for a "
            "shorter period",
        )
    vendor = request.vendor
    if vendor is not None:
        vendors = sorted(set(conn.execute(select(col(Device.vendor)).distinct()).scalars()))
        match = [v for v in vendors if v.lower() == vendor.lower()]
        if not match:
            # Never the list of vendors: a vendor's caller would learn every other's name.
            raise ReportError(
                404,
                f"no devices of vendor {vendor!r}: spell it as the firmware profiles do "
                "(GET /api/v1/devices lists the devices you may see)",
            )
        vendor = match[0]
    known_site = select(Site.code).where(Site.code == request.site)  # type: ignore[call-overload]
    if request.site is not None and conn.execute(known_site).first() is None:
        raise ReportError(404, f"no site {request.site!r}: GET /api/v1/sites lists the codes")
    if request.device is not None:
        found = conn.execute(select(Device.vendor).where(Device.id == request.device)).first()  # type: ignore[call-overload]
        # Another vendor's device answers as a made-up id does: its existence is not ours to
        # tell (a vendor's caller always has `vendor` set to its own).
        if found is None or (vendor is not None and found[0] != vendor):
            raise ReportError(
                404, f"no device {request.device!r}: GET /api/v1/devices lists the registered ids"
            )
    return ReportRequest(request.start, request.end, vendor, request.site, request.device)


def _scope(request: ReportRequest, period_start_utc: datetime) -> list[Any]:
    conditions: list[Any] = [
        (DEVICES.c.retired_at.is_(None)) | (DEVICES.c.retired_at >= period_start_utc)
    ]
    if request.vendor is not None:
        conditions.append(DEVICES.c.vendor == request.vendor)
    if request.site is not None:
        conditions.append(DEVICES.c.site_code == request.site)
    if request.device is not None:
        conditions.append(DEVICES.c.id == request.device)
    return conditions


def build_report(conn: Connection, request: ReportRequest, basis: ReportBasis) -> dict[str, Any]:
    """The report as plain data (what formats render). `request` must have passed
    check_request. Deterministic: the same roll-ups and basis give the same report."""
    earliest = datetime.combine(request.start, time(0), tzinfo=UTC) - timedelta(days=1)
    scope = _scope(request, earliest)
    devices = _devices(conn, scope, basis.profiles_dir)
    sites = {
        code: (tz, timetable)
        for code, tz, timetable in conn.execute(select(Site.code, Site.timezone, Site.timetable))  # type: ignore[call-overload]
    }
    class_hours = {code: _class_hours(*sites[code], request) for code in {d.site for d in devices}}
    in_period = [USAGE.c.local_date >= request.start, USAGE.c.local_date <= request.end]
    joined = USAGE.join(DEVICES, DEVICES.c.id == USAGE.c.device_id)

    sums, inputs, last = _per_device(conn, in_period, scope)
    # The scope filters by device: when it keeps every device (a whole-fleet report, nothing
    # retired before the period), the chart's pass needs no look-up of each row's device.
    every_device = len(devices) == conn.execute(select(func.count()).select_from(DEVICES)).scalar()
    by_hour = [0.0] * 24
    by_weekday = [0.0] * 7
    for hour, weekday, minutes in conn.execute(
        select(USAGE.c.local_hour, USAGE.c.local_weekday, func.sum(USAGE.c.minutes_on))
        .select_from(USAGE if every_device else joined)
        .where(*in_period, *([] if every_device else scope))
        .group_by(USAGE.c.local_hour, USAGE.c.local_weekday)
    ):
        by_hour[hour] += float(minutes or 0) / 60
        by_weekday[weekday] += float(minutes or 0) / 60

    avoided = _avoided(conn, scope, request, sites)
    device_rows = []
    for info in devices:
        row = device_row(
            info, sums.get(info.id), class_hours[info.site], request, basis.power_draw_w
        )
        add_savings(row, avoided.get(info.id, 0.0), basis.power_draw_w)
        add_lasts(row, info, last, request)
        add_inputs(row, inputs.get(info.id, {}))
        device_rows.append(row)
    return {
        "report": "usage",
        "vendor": request.vendor,
        "site": request.site,
        "device": request.device,
        "from": request.start.isoformat(),
        "to": request.end.isoformat(),
        "days": request.days,
        "definitions": DEFINITIONS,
        "totals": total(device_rows, "total", request.vendor or "all"),
        "vendors": group(device_rows, "vendor", lambda r: r["vendor"]),
        "sites": group(device_rows, "site", lambda r: r["site"]),
        "rooms": group(device_rows, "room", lambda r: r["room"]),
        "devices": device_rows,
        "charts": {
            "hours_on_by_local_hour": [round(v, 2) for v in by_hour],
            "hours_on_by_weekday": [round(v, 2) for v in by_weekday],
        },
    }


def _devices(conn: Connection, scope: list[Any], profiles_dir: Path) -> list[DeviceInfo]:
    profiles = profiles_in(profiles_dir)
    rooms: dict[str, str] = dict(conn.execute(select(Room.id, Room.name)).tuples().all())  # type: ignore[call-overload]
    rows = conn.execute(
        select(
            DEVICES.c.id,
            DEVICES.c.name,
            DEVICES.c.vendor,
            DEVICES.c.site_code,
            DEVICES.c.room_id,
            DEVICES.c.kind,
            DEVICES.c.profile,
        )
        .where(*scope)
        .order_by(DEVICES.c.site_code, DEVICES.c.room_id, DEVICES.c.id)
    )
    return [
        DeviceInfo(i, n or i, v, s, r, rooms.get(r, r), k, profiles.get(p))
        for i, n, v, s, r, k, p in rows
    ]


def _avoided(
    conn: Connection,
    scope: list[Any],
    request: ReportRequest,
    sites: dict[str, tuple[str, dict[str, Any]]],
) -> dict[str, float]:
    """Hours of on-time avoided per device by the power schedules' confirmed switch-offs
    made on the period's local dates (fleet.commands.schedules.avoided_hours)."""
    commands = SQLModel.metadata.tables["device_command"]
    lo = datetime.combine(request.start, time(0), tzinfo=UTC) - timedelta(days=1)
    hi = datetime.combine(request.end, time(0), tzinfo=UTC) + timedelta(days=2)
    rows = conn.execute(
        select(commands.c.device_id, commands.c.site_code, commands.c.confirmed_at)
        .select_from(commands.join(DEVICES, DEVICES.c.id == commands.c.device_id))
        .where(
            *scope,
            commands.c.requested_by == SCHEDULE_ACTOR,
            commands.c.kind == "power",
            commands.c.value == "off",
            commands.c.state == "done",
            commands.c.confirmed_at.is_not(None),
            commands.c.confirmed_at >= lo,
            commands.c.confirmed_at < hi,
        )
    )
    out: dict[str, float] = defaultdict(float)
    for device_id, site_code, confirmed_at in rows:
        tz_name, timetable = sites[site_code]
        tz = ZoneInfo(tz_name)
        at = confirmed_at if confirmed_at.tzinfo else confirmed_at.replace(tzinfo=UTC)
        if request.start <= at.astimezone(tz).date() <= request.end:
            out[device_id] += avoided_hours(at, timetable_from_json(timetable), tz)
    return dict(out)


def _class_hours(timezone: str, timetable: dict[str, Any], request: ReportRequest) -> float:
    tz = ZoneInfo(timezone)
    start = datetime.combine(request.start, time(0), tzinfo=tz).astimezone(UTC)
    end = datetime.combine(request.end + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)
    intervals = timetable_from_json(timetable).class_intervals(start, end, tz)
    return sum((b - a).total_seconds() for a, b in intervals) / 3600


_SUMMED = (
    "minutes_on",
    "class_minutes_on",
    "class_minutes_known",
    "class_minutes_available",
    "fault_starts",
    "lamp_hours_added",
    "filter_hours_added",
)
_LASTS = (
    ("firmware", "firmware_last"),
    ("lamp", "lamp_hours_last"),
    ("filter", "filter_hours_last"),
)


def _per_device(
    conn: Connection, in_period: list[Any], scope: list[Any]
) -> tuple[dict[str, tuple[Any, ...]], dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
    """Each device's sums over the period (device id, the seven sums, the peak temperature),
    its minutes on by top input, and its newest non-empty firmware, lamp and filter hours:
    all from ONE pass over the period's roll-ups, grouped by device and top input in the
    database, with the newest values looked up by primary key. (One query each, as before,
    was six passes over the month's roll-ups: six times the cost of the aggregate itself.)
    The scope, a condition on devices, is applied to the groups, not to each roll-up row."""
    grouped = (
        select(
            USAGE.c.device_id,
            USAGE.c.top_input,
            *(func.sum(USAGE.c[name]).label(name) for name in _SUMMED),
            func.max(USAGE.c.peak_temperature_c).label("peak"),
            *(
                func.max(case((USAGE.c[column].is_not(None), USAGE.c.hour_start))).label(key)
                for key, column in _LASTS
            ),
        )
        .where(*in_period)
        .group_by(USAGE.c.device_id, USAGE.c.top_input)
        .subquery("grouped")
    )
    in_scope = (
        select(grouped)
        .select_from(grouped.join(DEVICES, DEVICES.c.id == grouped.c.device_id))
        .where(*scope)
        .subquery("in_scope")
    )
    # The newest hour of each value over all of a device's input groups, then that hour's row.
    newest = select(
        in_scope,
        *(
            func.max(in_scope.c[key]).over(partition_by=in_scope.c.device_id).label(f"{key}_at")
            for key, _ in _LASTS
        ),
    ).subquery("newest")
    found = {key: USAGE.alias(f"last_{key}") for key, _ in _LASTS}
    query = select(
        newest.c.device_id,
        newest.c.top_input,
        *(newest.c[name] for name in _SUMMED),
        newest.c.peak,
        *(found[key].c[column] for key, column in _LASTS),
    ).select_from(newest)
    for key, _ in _LASTS:
        query = query.outerjoin(
            found[key],
            (found[key].c.device_id == newest.c.device_id)
            & (found[key].c.hour_start == newest.c[f"{key}_at"]),
        )
    partial: dict[str, list[Any]] = {}
    inputs: dict[str, dict[str, float]] = defaultdict(dict)
    last: dict[str, dict[str, Any]] = {key: {} for key, _ in _LASTS}
    for device_id, top_input, *values in conn.execute(query).tuples():
        summed, peak, lasts = values[: len(_SUMMED)], values[len(_SUMMED)], values[-len(_LASTS) :]
        if top_input is not None:
            inputs[device_id][top_input] = float(summed[0] or 0)
        known = partial.get(device_id)
        if known is None:
            partial[device_id] = [*summed, peak]
        else:
            for i, value in enumerate(summed):
                known[i] = _add(known[i], value)
            known[-1] = _greatest(known[-1], peak)
        for (key, _), value in zip(_LASTS, lasts, strict=True):
            last[key][device_id] = _known(value)
    sums = {d: (d, *map(_known, values)) for d, values in partial.items()}
    return sums, inputs, last


def _add(a: Any, b: Any) -> Any:
    """SQL's SUM over two groups' sums: NULL (no values) is left out; Infinity and NaN carry
    through as they would in one SUM, for `_known` to judge."""
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _greatest(a: Any, b: Any) -> Any:
    """SQL's MAX over two groups' maxima: NULL left out; NaN the greatest, as PostgreSQL
    orders it (SQLite stores NaN as NULL)."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, float) and math.isnan(a):
        return a
    if isinstance(b, float) and math.isnan(b):
        return b
    return max(a, b)


def _known(value: Any) -> Any:
    """A roll-up value as a report uses it: a number that is not finite (NaN or Infinity,
    rolled up from samples stored before ingest refused them) is unknown, not a figure to
    compute a lamp's end of life with or to write into JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
