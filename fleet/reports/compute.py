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
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, func, select
from sqlmodel import SQLModel, col

from agent.profiles import Profile
from fleet.alerts.rules import version_key
from fleet.models import Device, Room, Site
from fleet.profile_book import profiles_in
from fleet.registry import timetable_from_json
from fleet.reports.models import UsageHour
from fleet.settings import Settings

USAGE = SQLModel.metadata.tables[str(UsageHour.__tablename__)]
DEVICES = SQLModel.metadata.tables["device"]

DEFINITIONS = {
    "period": "local dates of each site, from and to inclusive",
    "utilization": "class hours on / timetabled class hours",
    "after_hours_on": "hours on outside timetabled class periods (breaks and days off included)",
    "after_hours_energy_kwh": "after-hours on-time x illustrative power draw per device kind",
    "availability": "class hours reachable and not faulty / class hours with readings; "
    "class hours without readings are reported as class_hours_unknown",
    "mtbf_hours": "hours on / faults",
    "input_share": "each hour's most used input, weighted by that hour's minutes on",
    "end_of_life": "date the rated life is reached at this period's rate of use",
}
# Column order of every row, as in CSV and XLSX; input shares follow as `input_share:<name>`.
COLUMNS = [
    "level",
    "id",
    "name",
    "vendor",
    "site",
    "room",
    "kind",
    "devices",
    "hours_on",
    "class_hours",
    "class_hours_on",
    "utilization",
    "after_hours_on",
    "after_hours_energy_kwh",
    "after_hours_lamp_hours",
    "after_hours_lamp_life_pct",
    "class_hours_known",
    "class_hours_unknown",
    "class_hours_available",
    "availability",
    "faults",
    "mtbf_hours",
    "firmware",
    "firmware_minimum",
    "devices_firmware_known",
    "devices_firmware_compliant",
    "firmware_compliance",
    "peak_temperature_c",
    "lamp_hours_used",
    "lamp_hours_now",
    "lamp_hours_life",
    "lamp_end_of_life",
    "filter_hours_used",
    "filter_hours_now",
    "filter_hours_life",
    "filter_end_of_life",
]
SUMMED = [
    "devices",
    "hours_on",
    "class_hours",
    "class_hours_on",
    "after_hours_on",
    "after_hours_energy_kwh",
    "after_hours_lamp_hours",
    "class_hours_known",
    "class_hours_unknown",
    "class_hours_available",
    "faults",
    "devices_firmware_known",
    "devices_firmware_compliant",
    "lamp_hours_used",
    "filter_hours_used",
]


class ReportError(ValueError):
    """A request a report cannot be made for; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ReportRequest:
    start: date
    end: date  # inclusive
    vendor: str | None = None
    site: str | None = None
    device: str | None = None

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1


@dataclass(frozen=True)
class _DeviceInfo:
    id: str
    name: str
    vendor: str
    site: str
    room: str
    room_name: str
    kind: str
    profile: Profile | None


def check_request(conn: Connection, request: ReportRequest, settings: Settings) -> ReportRequest:
    """The request with the vendor spelt as registered; ReportError names what is wrong."""
    if request.start > request.end:
        raise ReportError(422, f"'from' ({request.start}) is after 'to' ({request.end}): swap them")
    if request.days > settings.report_max_days:
        raise ReportError(
            422,
            f"the period {request.start}..{request.end} covers {request.days} days, more than "
            f"the limit of {settings.report_max_days} (FLEET_REPORT_MAX_DAYS): ask for a "
            "shorter period",
        )
    vendor = request.vendor
    if vendor is not None:
        vendors = sorted(set(conn.execute(select(col(Device.vendor)).distinct()).scalars()))
        match = [v for v in vendors if v.lower() == vendor.lower()]
        if not match:
            raise ReportError(
                404, f"no devices of vendor {vendor!r}: known vendors are {', '.join(vendors)}"
            )
        vendor = match[0]
    known_site = select(Site.code).where(Site.code == request.site)  # type: ignore[call-overload]
    if request.site is not None and conn.execute(known_site).first() is None:
        raise ReportError(404, f"no site {request.site!r}: GET /api/v1/sites lists the codes")
    if request.device is not None:
        found = conn.execute(select(Device.vendor).where(Device.id == request.device)).first()  # type: ignore[call-overload]
        if found is None:
            raise ReportError(
                404, f"no device {request.device!r}: GET /api/v1/devices lists the ids"
            )
        if vendor is not None and found[0] != vendor:
            raise ReportError(404, f"device {request.device!r} is not a {vendor} device")
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


def build_report(conn: Connection, request: ReportRequest, settings: Settings) -> dict[str, Any]:
    """The report as plain data (what formats render). `request` must have passed
    check_request. Deterministic: the same roll-ups give the same report."""
    earliest = datetime.combine(request.start, time(0), tzinfo=UTC) - timedelta(days=1)
    scope = _scope(request, earliest)
    devices = _devices(conn, scope, settings)
    sites = {
        code: (tz, timetable)
        for code, tz, timetable in conn.execute(select(Site.code, Site.timezone, Site.timetable))  # type: ignore[call-overload]
    }
    class_hours = {code: _class_hours(*sites[code], request) for code in {d.site for d in devices}}
    in_period = [USAGE.c.local_date >= request.start, USAGE.c.local_date <= request.end]
    joined = USAGE.join(DEVICES, DEVICES.c.id == USAGE.c.device_id)

    sums = {
        row[0]: row
        for row in conn.execute(
            select(
                USAGE.c.device_id,
                func.sum(USAGE.c.minutes_on),
                func.sum(USAGE.c.class_minutes_on),
                func.sum(USAGE.c.class_minutes_known),
                func.sum(USAGE.c.class_minutes_available),
                func.sum(USAGE.c.fault_starts),
                func.sum(USAGE.c.lamp_hours_added),
                func.sum(USAGE.c.filter_hours_added),
                func.max(USAGE.c.peak_temperature_c),
            )
            .select_from(joined)
            .where(*in_period, *scope)
            .group_by(USAGE.c.device_id)
        )
    }
    inputs: dict[str, dict[str, float]] = defaultdict(dict)
    for device_id, name, minutes in conn.execute(
        select(USAGE.c.device_id, USAGE.c.top_input, func.sum(USAGE.c.minutes_on))
        .select_from(joined)
        .where(*in_period, *scope, USAGE.c.top_input.is_not(None))
        .group_by(USAGE.c.device_id, USAGE.c.top_input)
    ):
        inputs[device_id][name] = float(minutes or 0)
    last = {
        name: _last_values(conn, joined, in_period + scope, column)
        for name, column in (
            ("firmware", USAGE.c.firmware_last),
            ("lamp", USAGE.c.lamp_hours_last),
            ("filter", USAGE.c.filter_hours_last),
        )
    }
    by_hour = [0.0] * 24
    by_weekday = [0.0] * 7
    for hour, weekday, minutes in conn.execute(
        select(USAGE.c.local_hour, USAGE.c.local_weekday, func.sum(USAGE.c.minutes_on))
        .select_from(joined)
        .where(*in_period, *scope)
        .group_by(USAGE.c.local_hour, USAGE.c.local_weekday)
    ):
        by_hour[hour] += float(minutes or 0) / 60
        by_weekday[weekday] += float(minutes or 0) / 60

    device_rows = []
    for info in devices:
        row = _device_row(info, sums.get(info.id), class_hours[info.site], request, settings)
        _add_lasts(row, info, last, request)
        _add_inputs(row, inputs.get(info.id, {}))
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
        "totals": _total(device_rows, "total", request.vendor or "all"),
        "vendors": _group(device_rows, "vendor", lambda r: r["vendor"]),
        "sites": _group(device_rows, "site", lambda r: r["site"]),
        "rooms": _group(device_rows, "room", lambda r: r["room"]),
        "devices": device_rows,
        "charts": {
            "hours_on_by_local_hour": [round(v, 2) for v in by_hour],
            "hours_on_by_weekday": [round(v, 2) for v in by_weekday],
        },
    }


def _devices(conn: Connection, scope: list[Any], settings: Settings) -> list[_DeviceInfo]:
    profiles = profiles_in(settings.profiles_dir)
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
        _DeviceInfo(i, n or i, v, s, r, rooms.get(r, r), k, profiles.get(p))
        for i, n, v, s, r, k, p in rows
    ]


def _class_hours(timezone: str, timetable: dict[str, Any], request: ReportRequest) -> float:
    tz = ZoneInfo(timezone)
    start = datetime.combine(request.start, time(0), tzinfo=tz).astimezone(UTC)
    end = datetime.combine(request.end + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)
    intervals = timetable_from_json(timetable).class_intervals(start, end, tz)
    return sum((b - a).total_seconds() for a, b in intervals) / 3600


def _last_values(conn: Connection, joined: Any, where: list[Any], column: Any) -> dict[str, Any]:
    """Each device's newest non-empty value of `column` within the period."""
    newest = (
        select(USAGE.c.device_id, func.max(USAGE.c.hour_start).label("hour_start"))
        .select_from(joined)
        .where(*where, column.is_not(None))
        .group_by(USAGE.c.device_id)
        .subquery()
    )
    query = select(USAGE.c.device_id, column).join(
        newest,
        (newest.c.device_id == USAGE.c.device_id) & (newest.c.hour_start == USAGE.c.hour_start),
    )
    return dict(conn.execute(query).tuples().all())


def _ratio(part: float | None, whole: float | None) -> float | None:
    return round(part / whole, 4) if part is not None and whole else None


def _device_row(
    info: _DeviceInfo,
    sums: Any,
    class_hours: float,
    request: ReportRequest,
    settings: Settings,
) -> dict[str, Any]:
    totals = [float(v or 0) for v in sums[1:8]] if sums is not None else [0.0] * 7
    on, class_on, class_known, class_available, faults, lamp_used, filter_used = totals
    peak = sums[8] if sums is not None else None
    hours_on, class_on, class_known = on / 60, class_on / 60, class_known / 60
    after = max(0.0, hours_on - class_on)
    draw_w = settings.report_power_draw_w.get(info.kind, 0.0)
    is_projector = info.kind == "projector"
    lamp_life = info.profile.thresholds.lamp_hours_life if info.profile else None
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(
        level="device",
        id=info.id,
        name=info.name,
        vendor=info.vendor,
        site=info.site,
        room=info.room,
        kind=info.kind,
        devices=1,
        hours_on=hours_on,
        class_hours=class_hours,
        class_hours_on=class_on,
        after_hours_on=after,
        after_hours_energy_kwh=after * draw_w / 1000,
        after_hours_lamp_hours=after if is_projector else 0.0,
        class_hours_known=class_known,
        class_hours_unknown=max(0.0, class_hours - class_known),
        class_hours_available=class_available / 60,
        faults=int(faults),
        peak_temperature_c=peak,
        lamp_hours_used=lamp_used if is_projector else 0.0,
        filter_hours_used=filter_used if is_projector else 0.0,
        lamp_hours_life=lamp_life if is_projector else None,
        filter_hours_life=(
            info.profile.thresholds.filter_hours_life if info.profile and is_projector else None
        ),
        firmware_minimum=info.profile.firmware_minimum if info.profile else None,
        _room_name=info.room_name,
    )
    return _finish(row)


def _add_lasts(
    row: dict[str, Any], info: _DeviceInfo, last: dict[str, dict[str, Any]], req: ReportRequest
) -> None:
    firmware = last["firmware"].get(info.id)
    row["firmware"] = firmware
    minimum = row["firmware_minimum"]
    if firmware is not None:
        have = version_key(firmware)
        need = version_key(minimum) if minimum else None
        row["devices_firmware_known"] = 1
        row["devices_firmware_compliant"] = int(need is None or (have is not None and have >= need))
    else:
        row["devices_firmware_known"] = row["devices_firmware_compliant"] = 0
    if info.kind == "projector":
        for part in ("lamp", "filter"):
            now = last[part].get(info.id)
            row[f"{part}_hours_now"] = now
            row[f"{part}_end_of_life"] = end_of_life(
                now, row[f"{part}_hours_life"], row[f"{part}_hours_used"], req
            )
    _finish(row)


def end_of_life(
    now: float | None, life: float | None, used: float, request: ReportRequest
) -> str | None:
    """The local date the counter reaches `life` at the period's daily rate (ISO), if known."""
    if now is None or life is None:
        return None
    remaining = life - now
    if remaining <= 0:
        return request.end.isoformat()  # already past its rated life
    rate_per_day = used / request.days
    if rate_per_day <= 0:
        return None  # not used in the period: no rate to forecast with
    return (request.end + timedelta(days=math.ceil(remaining / rate_per_day))).isoformat()


def _add_inputs(row: dict[str, Any], minutes: dict[str, float]) -> None:
    total = sum(minutes.values())
    row["inputs"] = {k: round(v / total, 4) for k, v in sorted(minutes.items())} if total else {}
    row["_input_minutes"] = minutes


def _finish(row: dict[str, Any]) -> dict[str, Any]:
    """Ratios from the sums, and numbers rounded so every format shows the same figures."""
    row["utilization"] = _ratio(row["class_hours_on"], row["class_hours"])
    row["availability"] = _ratio(row["class_hours_available"], row["class_hours_known"])
    row["mtbf_hours"] = round(row["hours_on"] / row["faults"], 2) if row["faults"] else None
    row["firmware_compliance"] = _ratio(
        row["devices_firmware_compliant"], row["devices_firmware_known"]
    )
    life = row["lamp_hours_life"]
    row["after_hours_lamp_life_pct"] = (
        round(row["after_hours_lamp_hours"] / life * 100, 3) if life else None
    )
    for key in SUMMED:
        if isinstance(row.get(key), float):
            row[key] = round(row[key], 3)
    return row


def _total(rows: list[dict[str, Any]], level: str, key: str) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(COLUMNS)
    out.update(level=level, id=key, name=key)
    first = rows[0] if rows else {}
    for field in ("vendor", "site", "room", "kind"):
        values = {r[field] for r in rows}
        out[field] = first[field] if len(values) == 1 else None
    for field in SUMMED:
        out[field] = sum(r[field] or 0 for r in rows)
    if level == "room" and rows:
        out["name"] = rows[0]["_room_name"]
    temps = [r["peak_temperature_c"] for r in rows if r["peak_temperature_c"] is not None]
    out["peak_temperature_c"] = max(temps) if temps else None
    for part in ("lamp", "filter"):
        dates = [r[f"{part}_end_of_life"] for r in rows if r[f"{part}_end_of_life"]]
        out[f"{part}_end_of_life"] = min(dates) if dates else None  # the first one due
    minutes: dict[str, float] = defaultdict(float)
    for r in rows:
        for k, v in r.get("_input_minutes", {}).items():
            minutes[k] += v
    _add_inputs(out, dict(minutes))
    return _finish(out)


def _group(rows: Iterable[dict[str, Any]], level: str, key: Any) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    return [_total(members, level, k) for k, members in sorted(groups.items())]


def public(report: dict[str, Any]) -> dict[str, Any]:
    """The report without working fields (names starting with '_')."""

    def clean(row: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in row.items() if not k.startswith("_")}

    out = dict(report)
    out["totals"] = clean(report["totals"])
    for level in ("vendors", "sites", "rooms", "devices"):
        out[level] = [clean(r) for r in report[level]]
    return out
