"""What one simulated device reports over time: plain Python, no I/O.

A device follows its site's timetable in the site's timezone: on during class periods,
standby outside, with now and then a panel left on after hours or switched off during a
class. Projectors warm up and cool down for a minute around each transition and age their
lamp and filter while on. Temperature drifts towards the profile's on/standby figures; faults
come and go. Everything random comes from the given `random.Random`, and time from `clock`,
so tests are deterministic.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from fleet.protocol.messages import Flag, Power, utcnow
from fleet.protocol.profiles import ERROR_FLAGS, Profile, SnmpObject
from fleet.protocol.site_config import DeviceConfig
from fleet.protocol.timetable import Timetable

Clock = Callable[[], datetime]
RawValue = int | str

STEP_S = 60.0  # the model advances in steps of at most a minute
TRANSITION_S = 60.0  # projectors warm up / cool down for this long
MAX_CATCH_UP_S = 6 * 3600.0  # a long gap is not replayed minute by minute
LEFT_ON_CHANCE = 0.05  # per device and day: left on after the last class
OFF_IN_CLASS_CHANCE = 0.03  # per device and class period: not switched on
FAULT_CHANCE_PER_MIN = 0.0002
TEMPERATURE_TIME_CONSTANT_S = 600.0
FOREVER = datetime.max.replace(tzinfo=UTC)


class DeviceBehaviour:
    """The state of one simulated device, advanced lazily to the time it is asked about."""

    def __init__(
        self,
        device: DeviceConfig,
        profile: Profile,
        *,
        timetable: Timetable,
        tz: ZoneInfo,
        room_name: str = "",
        clock: Clock = utcnow,
        rng: random.Random | None = None,
        transition_s: float = TRANSITION_S,
    ) -> None:
        """`transition_s`: how long a projector warms up and cools down around each power
        change, in seconds (PJLink's POWR 3 and 2; a lamp projector takes about a minute)."""
        self.device = device
        self.transition_s = transition_s
        self.profile = profile
        self.timetable = timetable
        self.tz = tz
        self.room_name = room_name
        self.clock = clock
        self.rng = rng or random.Random(0)
        hints = profile.simulation
        self.firmware = hints.firmware
        # Quirks (left on, off in class) are drawn per day from this, not from the stream,
        # so they do not depend on how often the device is polled.
        self._quirk_seed = self.rng.getrandbits(48)
        # Set by a scheduled fault (agent.simulator.fault_schedule): on or off whatever the
        # timetable says, and heat on top of the profile's figures.
        self.forced_on: bool | None = None
        self.extra_heat_c = 0.0
        now = clock()
        self.booted_at = now - timedelta(seconds=self.rng.uniform(3600, 30 * 86400))
        self.on = self._wants_on(now)
        self.changed_at = now - timedelta(hours=1)  # no warm-up at start
        self.temperature_c = self._target_temperature() + self.rng.gauss(0, 0.5)
        self.lamp_hours = hints.lamp_hours_start
        self.filter_hours = hints.filter_hours_start
        self.input = self.rng.choice(hints.inputs) if hints.inputs else None
        self.faults: dict[str, tuple[Flag, datetime]] = {}  # flag -> (level, until)
        self._error_flags = [
            obj.field.split(".", 1)[1]
            for obj in (profile.snmp.objects if profile.snmp else [])
            if obj.field.startswith("errors.")
        ]
        if profile.protocol == "pjlink":
            self._error_flags = sorted(ERROR_FLAGS)  # ERST reports all six
        for flag, level in hints.faults.items():
            self.faults[flag] = (Flag(level), FOREVER)  # set by the profile: never clears
        self._updated = now
        # Firmware update progress, as the device reports it (metrics.update_status).
        self.update_status = "idle"
        # A power command's state, and what the timetable wanted when it came: the command
        # holds until the timetable changes its mind (a class starts or ends).
        self._switched: tuple[bool, bool] | None = None

    def switch(self, on: bool, now: datetime | None = None) -> bool:
        """A power command: False (refused, as PJLink's ERR3) while warming or cooling."""
        now = now or self.clock()
        if self.power(now) in (Power.warming, Power.cooling):
            return False
        self._switched = (on, self._wants_on(now))
        if on != self.on:
            self.on, self.changed_at = on, now
            if on and self.profile.simulation.inputs and self.input is None:
                self.input = self.profile.simulation.inputs[0]
        return True

    def select_input(self, name: str) -> bool:
        """An input command: False for an input this model does not have, or when off."""
        if not self.on or name not in self.profile.simulation.inputs:
            return False
        self.input = name
        return True

    # --- the model ------------------------------------------------------------------------

    def advance(self, now: datetime | None = None) -> None:
        """Bring the model up to `now` (default: the clock) in steps of at most STEP_S seconds; a
        gap longer than MAX_CATCH_UP_S is covered coarsely, not minute by minute."""
        now = now or self.clock()
        gap = (now - self._updated).total_seconds()
        if gap <= 0:
            return
        if gap > MAX_CATCH_UP_S:
            self._step(self._updated, gap - MAX_CATCH_UP_S, coarse=True)
            self._updated = now - timedelta(seconds=MAX_CATCH_UP_S)
        while self._updated < now:
            dt = min(STEP_S, (now - self._updated).total_seconds())
            self._updated += timedelta(seconds=dt)
            self._step(self._updated, dt)

    def _step(self, at: datetime, dt: float, coarse: bool = False) -> None:
        wants_on = self._wants_on(at)
        if self._switched is not None:
            switched, timetable_wanted = self._switched
            if wants_on == timetable_wanted:
                wants_on = switched
            else:
                self._switched = None
        if wants_on != self.on:
            self.on = wants_on
            self.changed_at = at
            if wants_on and self.profile.simulation.inputs:
                self.input = self.rng.choice(self.profile.simulation.inputs)
        pull = 1 - math.exp(-dt / TEMPERATURE_TIME_CONSTANT_S)
        self.temperature_c += (self._target_temperature() - self.temperature_c) * pull
        if not coarse:
            self.temperature_c += self.rng.gauss(0, 0.2)
        if self.on:
            if self.lamp_hours is not None:
                self.lamp_hours += dt / 3600
            if self.filter_hours is not None:
                self.filter_hours += dt / 3600
        for flag, (_, until) in list(self.faults.items()):
            if at >= until:
                del self.faults[flag]
        quiet = not coarse and self._error_flags and not self.faults
        if quiet and self.rng.random() < FAULT_CHANCE_PER_MIN * dt / 60:
            flag = self.rng.choice(self._error_flags)
            level = Flag.warning if self.rng.random() < 0.7 else Flag.error
            self.faults[flag] = (level, at + timedelta(minutes=self.rng.uniform(5, 60)))

    @property
    def _off_in_class(self) -> float:
        share = self.profile.simulation.off_in_class_share
        return OFF_IN_CLASS_CHANCE if share is None else share

    @property
    def _left_on(self) -> float:
        share = self.profile.simulation.left_on_share
        return LEFT_ON_CHANCE if share is None else share

    def _wants_on(self, at: datetime) -> bool:
        if self.forced_on is not None:
            return self.forced_on
        local = at.astimezone(self.tz)
        day_rng = self._day_rng(local.date())
        if self.timetable.in_class(at, self.tz):
            # One draw per period of the day, in order, so the draw for a period is stable.
            for period in self.timetable.periods_on(local.date()):
                off = day_rng.random() < self._off_in_class
                if period.start <= local.time() < period.end:
                    return not off
            return True
        for _ in self.timetable.periods_on(local.date()):
            day_rng.random()
        last_end = self.timetable.last_class_end(at, self.tz)
        left_on = day_rng.random() < self._left_on
        return left_on and last_end is not None and at >= last_end

    def _day_rng(self, day: date) -> random.Random:
        return random.Random(self._quirk_seed * 1_000_003 + day.toordinal())

    def _target_temperature(self) -> float:
        hints = self.profile.simulation
        base = hints.temperature_on_c if self.on else hints.temperature_standby_c
        return base + self.extra_heat_c

    # --- what the device reports ----------------------------------------------------------

    def power(self, now: datetime | None = None) -> Power:
        """The power state at `now`: on or standby, or, for a projector within `transition_s` of a
        change, warming or cooling."""
        now = now or self.clock()
        self.advance(now)
        since = (now - self.changed_at).total_seconds()
        if self.profile.kind == "projector" and since < self.transition_s:
            return Power.warming if self.on else Power.cooling
        return Power.on if self.on else Power.standby

    def uptime_s(self, now: datetime | None = None) -> float:
        """Seconds since the simulated device booted."""
        return max(0.0, ((now or self.clock()) - self.booted_at).total_seconds())

    def error_flag(self, flag: str, now: datetime | None = None) -> Flag:
        """The level of error flag `flag` (fan, lamp, ...) at `now`: ok unless a fault holds it."""
        self.advance(now)
        fault = self.faults.get(flag)
        return fault[0] if fault else Flag.ok

    def field_value(self, field: str, now: datetime | None = None) -> float | str | None:
        """A reading field's value as the collector should report it (None: not reported)."""
        now = now or self.clock()
        self.advance(now)
        if field == "power":
            return self.power(now).value
        if field == "temperature_c":
            return round(self.temperature_c, 1)
        if field == "uptime_s":
            return self.uptime_s(now)
        if field == "lamp_hours":
            return None if self.lamp_hours is None else math.floor(self.lamp_hours)
        if field == "filter_hours":
            return None if self.filter_hours is None else math.floor(self.filter_hours)
        if field == "firmware":
            return self.firmware
        if field == "input":
            return self.input if self.on else None
        if field.startswith("errors."):
            return self.error_flag(field.split(".", 1)[1], now).value
        if field.startswith("metrics."):
            return self._metric(field.split(".", 1)[1])
        return None

    def _metric(self, name: str) -> float | str:
        if name == "sys_name":
            # The configured display name flows here as a device would report it: untrusted
            # text (tests inject markup through it).
            return self.device.name or self.device.id
        if name == "sys_descr":
            return self.profile.simulation.sys_descr
        if name == "sys_object_id":
            return self.profile.simulation.sys_object_id
        if name == "sys_location":
            return self.room_name
        if name == "update_status":
            return self.update_status
        if name.endswith("_pct"):
            return 80 if self.on else 0
        return 1

    def value_for(self, obj: SnmpObject, now: datetime | None = None) -> RawValue | None:
        """The raw SNMP value that the profile maps back onto this device's field value."""
        value = self.field_value(obj.field, now)
        if value is None:
            return None
        if obj.map is not None:
            inverse = {v: k for k, v in obj.map.items()}
            raw = inverse.get(str(value))
            if raw is None:
                return None  # the device has no code for this state in this profile
            return int(raw) if obj.type in ("int", "timeticks") else raw
        if obj.type == "string":
            return str(value)
        if isinstance(value, str):
            return None
        if obj.type == "timeticks":
            return round(value / obj.scale * 100)
        if obj.type == "int":
            return round(value / obj.scale)
        return repr(value / obj.scale)  # float: sent as text, as such agents do
