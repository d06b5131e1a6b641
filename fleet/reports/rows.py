"""A usage report's rows: one per device from its sums, and the room, site, vendor and total
rows summed from those (ratios recomputed from the sums, never averaged). Numbers are
rounded here, so that every format shows the same figures."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from fleet.alerts.rules import version_key
from fleet.protocol.profiles import Profile

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
    "saved_on_hours",
    "saved_lamp_hours",
    "saved_energy_kwh",
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
    "saved_on_hours",
    "saved_lamp_hours",
    "saved_energy_kwh",
    "class_hours_known",
    "class_hours_unknown",
    "class_hours_available",
    "faults",
    "devices_firmware_known",
    "devices_firmware_compliant",
    "lamp_hours_used",
    "filter_hours_used",
]


@dataclass(frozen=True)
class ReportRequest:
    """What a usage report is asked for: the local dates `start` to `end` (both included), narrowed
    to a vendor, a site or a device when given."""

    start: date
    end: date  # inclusive
    vendor: str | None = None
    site: str | None = None
    device: str | None = None

    @property
    def days(self) -> int:
        """How many days the period covers, both ends included."""
        return (self.end - self.start).days + 1


@dataclass(frozen=True)
class DeviceInfo:
    """A device as its report row names it, with its firmware profile (None when its profile is not
    found)."""

    id: str
    name: str
    vendor: str
    site: str
    room: str
    room_name: str
    kind: str
    profile: Profile | None


def _ratio(part: float | None, whole: float | None) -> float | None:
    return round(part / whole, 4) if part is not None and whole else None


def device_row(
    info: DeviceInfo,
    sums: Any,
    class_hours: float,
    request: ReportRequest,
    power_draw_w: Mapping[str, float],
) -> dict[str, Any]:
    """One device's row from its sums over the period (None: no roll-ups), its timetabled
    `class_hours`, and the illustrative draw when on by device kind (W; a kind not listed
    draws nothing)."""
    totals = [float(v or 0) for v in sums[1:8]] if sums is not None else [0.0] * 7
    on, class_on, class_known, class_available, faults, lamp_used, filter_used = totals
    peak = sums[8] if sums is not None else None
    hours_on, class_on, class_known = on / 60, class_on / 60, class_known / 60
    after = max(0.0, hours_on - class_on)
    draw_w = power_draw_w.get(info.kind, 0.0)
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
        saved_on_hours=0.0,
        saved_lamp_hours=0.0,
        saved_energy_kwh=0.0,
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
    return finish(row)


def add_savings(
    row: dict[str, Any], avoided_hours: float, power_draw_w: Mapping[str, float]
) -> None:
    """What the power schedules' switch-offs saved on this device: on-time avoided (h), lamp
    hours (projectors) and energy at the illustrative draw of its kind (kWh)."""
    row["saved_on_hours"] = avoided_hours
    row["saved_lamp_hours"] = avoided_hours if row["kind"] == "projector" else 0.0
    row["saved_energy_kwh"] = avoided_hours * power_draw_w.get(row["kind"], 0.0) / 1000
    finish(row)


def add_lasts(
    row: dict[str, Any], info: DeviceInfo, last: dict[str, dict[str, Any]], req: ReportRequest
) -> None:
    """Add to a device's row what its newest values in the period say (`last`: by field, then by
    device id): its firmware and whether it meets the minimum, and for a projector its lamp and
    filter hours now and the date each reaches its rated life."""
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
    finish(row)


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


def add_inputs(row: dict[str, Any], minutes: dict[str, float]) -> None:
    """Add to a row its share of on-time on each input (fractions of 1, by input name) from
    `minutes` on each."""
    total = sum(minutes.values())
    row["inputs"] = {k: round(v / total, 4) for k, v in sorted(minutes.items())} if total else {}
    row["_input_minutes"] = minutes


def finish(row: dict[str, Any]) -> dict[str, Any]:
    """Ratios from the sums, and numbers rounded so every format shows the same figures."""
    # Unknown when no class hour is known: none heard is not "never on" (0 %).
    row["utilization"] = (
        _ratio(row["class_hours_on"], row["class_hours"]) if row["class_hours_known"] else None
    )
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


def total(rows: list[dict[str, Any]], level: str, key: str) -> dict[str, Any]:
    """The row of `level` that sums `rows` under the name `key`: a field all rows share is kept,
    else None; the hottest peak, the first end-of-life date, input shares from the summed
    minutes."""
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
    add_inputs(out, dict(minutes))
    return finish(out)


def group(rows: Iterable[dict[str, Any]], level: str, key: Any) -> list[dict[str, Any]]:
    """One total row of `level` per value of `key(row)`, sorted by that value."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    return [total(members, level, k) for k, members in sorted(groups.items())]


def public(report: dict[str, Any]) -> dict[str, Any]:
    """The report without working fields (names starting with '_')."""

    def clean(row: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in row.items() if not k.startswith("_")}

    out = dict(report)
    out["totals"] = clean(report["totals"])
    for level in ("vendors", "sites", "rooms", "devices"):
        out[level] = [clean(r) for r in report[level]]
    return out
