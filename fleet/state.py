"""A device's state and the reason for it, derived from plain data (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum

from fleet.protocol import Flag, Power, Reading


class DeviceState(StrEnum):
    online = "online"
    standby = "standby"
    unreachable = "unreachable"
    site_offline = "site_offline"
    faulty = "faulty"
    unknown = "unknown"


NEVER_HEARD = "never heard"
_POWERED = {Power.on, Power.warming}
_POWERED_DOWN = {Power.standby, Power.off, Power.cooling}


def derive_state(reading: Reading, *, in_class: bool) -> tuple[DeviceState, str]:
    """What one reading says about its device; `in_class` is the site's timetable at reading.ts."""
    if not reading.reachable:
        why = reading.error or "the agent gave no reason"
        return DeviceState.unreachable, f"cannot reach {reading.device}: {why}"
    flags = _flags(reading, Flag.error)
    if flags:
        return DeviceState.faulty, f"error flags: {flags}"
    warnings = _flags(reading, Flag.warning)
    suffix = f"; warnings: {warnings}" if warnings else ""
    if reading.power in _POWERED_DOWN:
        what = "standby" if reading.power == Power.standby else f"power {reading.power.value}"
        if in_class:
            return DeviceState.standby, f"{what} during class hours{suffix}"
        return DeviceState.standby, f"{what} outside class hours (expected){suffix}"
    if reading.power in _POWERED:
        reason = f"reachable, power {reading.power.value}"
    else:
        # It answered, so it is powered; its profile just has no power object.
        reason = "reachable, power not reported"
    if reading.input:
        reason += f", input {reading.input}"
    return DeviceState.online, reason + suffix


def site_offline_reason(
    agent_id: str, since: datetime, *, silent_for: timedelta | None = None
) -> str:
    """Why every device of a site is `site_offline`: the link or the agent, not the devices."""
    at = since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if silent_for is not None:
        minutes = int(silent_for.total_seconds() // 60)
        return f"site agent {agent_id} silent for {minutes} min (last heard at {at})"
    return f"site agent {agent_id} offline since {at} (will fired or it said offline)"


def _flags(reading: Reading, level: Flag) -> str:
    if reading.errors is None:
        return ""
    named = [f"{name}={level.value}" for name, flag in reading.errors if flag == level]
    return ", ".join(named)
