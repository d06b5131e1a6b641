"""Every Reading the agent makes is made here, from what a device said, cleaned first.

Devices answer with what their firmware holds: a sysName ending in NUL, an escape sequence in
a projector's name, bytes that are not UTF-8, a counter of NaN, a 400-character "model". The
controller refuses such values reading by reading (fleet/protocol/messages.py). So that a
device's odd text costs neither its reading nor its batch, every collector builds its readings
through `make_reading`, which, before anything reaches the outbox:

- removes control characters (the contract's `CONTROL_RE`) and lone surrogates;
- keeps the U+FFFD that collectors put for bytes that are not UTF-8, and says so;
- caps each text at the contract's length;
- drops numbers that are not finite, or past 64 bits, and fields out of their range;

and notes what it did on the reading itself, in `metrics["cleaned"]`, for a technician to see.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from fleet.protocol.messages import (
    CONTROL_RE,
    INT64_MAX,
    INT64_MIN,
    MAX_METRICS,
    ErrorFlags,
    Power,
    Reading,
)

# The contract's lengths (fleet/protocol/messages.py: Reading).
TEXT_LIMITS = {"input": 64, "firmware": 64, "error": 500}
METRIC_TEXT_MAX = 256
METRIC_NAME_MAX = 64
NUMBER_FIELDS = ("temperature_c", "lamp_hours", "filter_hours", "uptime_s")
CLEANED = "cleaned"  # the metric that says what was cleaned


def clean_text(value: str, limit: int) -> tuple[str, list[str]]:
    """`value` without control characters or lone surrogates, at most `limit` characters,
    and what was done to it (empty when nothing was)."""
    notes: list[str] = []
    if "\ufffd" in value:
        notes.append("bytes that are not UTF-8 replaced")
    removed = len(CONTROL_RE.findall(value))
    if removed:
        value = CONTROL_RE.sub("", value)
        notes.append(f"{removed} control character{'s' if removed > 1 else ''} removed")
    if not value.isascii() and any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
        value = "".join(ch for ch in value if not 0xD800 <= ord(ch) <= 0xDFFF)
        notes.append("lone surrogates removed")
    if len(value) > limit:
        value = value[:limit]
        notes.append(f"cut to {limit} characters")
    return value, notes


def make_reading(
    device: str,
    ts: datetime,
    reachable: bool,
    *,
    power: Power = Power.unknown,
    errors: ErrorFlags | None = None,
    metrics: dict[str, Any] | None = None,
    source: str = "the device",
    out_of_range_fix: str = "check the device",
    **fields: Any,
) -> Reading:
    """A Reading from what a device gave, cleaned (see the module's docstring).

    `fields` are Reading's own (`input`, `firmware`, `temperature_c`, ..., `error`); a field
    whose value the contract cannot take even cleaned is left out, and `error` says which,
    naming `source` (the device's address) and `out_of_range_fix`. Never raises for what the
    device said.
    """
    notes: list[str] = []
    kept: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if name in TEXT_LIMITS:
            value, done = clean_text(str(value), TEXT_LIMITS[name])
            notes += [f"{name}: {n}" for n in done]
        elif name in NUMBER_FIELDS and not _finite(value):
            notes.append(f"{name}: {value!r} dropped, not a finite number")
            continue
        kept[name] = value
    clean_metrics = _clean_metrics(metrics or {}, notes)
    if notes:
        clean_metrics[CLEANED] = clean_text("; ".join(notes), METRIC_TEXT_MAX)[0]
    base = {"device": device, "ts": ts, "reachable": reachable, "power": power, "errors": errors}
    try:
        return Reading(**base, metrics=clean_metrics, **kept)
    except ValidationError as exc:
        # A device reporting nonsense (a temperature of 6000 °C) is still reachable: keep
        # what is valid and say what was dropped.
        bad = sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]})
        kept = {k: v for k, v in kept.items() if k not in bad}
        said = kept.pop("error", None)
        problem = f"{source} reported values out of range for {', '.join(bad)}: {out_of_range_fix}"
        error = f"{said}; {problem}" if said and "error" not in bad else problem
        return Reading(
            **base,
            metrics={} if "metrics" in bad else clean_metrics,
            error=clean_text(error, TEXT_LIMITS["error"])[0],
            **kept,
        )


def _finite(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    return isinstance(value, float) and math.isfinite(value)


def _clean_metrics(metrics: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for raw_name, value in metrics.items():
        name, done = clean_text(str(raw_name), METRIC_NAME_MAX)
        if not name or name == CLEANED:
            notes.append(f"metric {name!r} dropped: no usable name")
            continue
        notes += [f"metric name {name}: {n}" for n in done]
        if isinstance(value, str):
            value, done = clean_text(value, METRIC_TEXT_MAX)
            notes += [f"{name}: {n}" for n in done]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if not _finite(value):
                notes.append(f"{name}: {value!r} dropped, not a finite 64-bit number")
                continue
        elif value is not None and not isinstance(value, bool):
            value, done = clean_text(str(value), METRIC_TEXT_MAX)
            notes += [f"{name}: {n}" for n in done]
        if len(out) >= MAX_METRICS - 1:  # one place kept for `cleaned`
            notes.append(f"metrics past {MAX_METRICS - 1} dropped")
            break
        out[name] = value
    return out
