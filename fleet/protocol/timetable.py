"""A site's class timetable, in its own timezone.

Time inside the product is UTC; the timetable is the one place a site's local time is used.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class Period(BaseModel):
    """One class period of a day, `start` to `end` in the site's local time."""

    model_config = ConfigDict(frozen=True)

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> Period:
        """A period from its YAML form, `HH:MM-HH:MM`. Raises ValueError, with the fix, for
        any other text or a period that does not end after it starts."""
        try:
            a, b = (part.strip() for part in text.split("-"))
            start, end = time.fromisoformat(a), time.fromisoformat(b)
        except ValueError:
            raise ValueError(
                f"{text!r} is not a class period. Fix: write it as HH:MM-HH:MM, e.g. 08:00-10:00"
            ) from None
        if end <= start:
            raise ValueError(f"{text!r} ends before it starts. Fix: write it as HH:MM-HH:MM")
        return cls(start=start, end=end)


def _period(value: object) -> Period:
    if isinstance(value, Period):
        return value
    if isinstance(value, dict):  # the form model_dump gives back
        return Period.model_validate(value)
    return Period.parse(str(value))


class Timetable(BaseModel):
    """Weekly class periods plus days without classes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weekly: dict[str, tuple[Period, ...]] = Field(default_factory=dict)
    closed: tuple[date, ...] = ()

    @field_validator("weekly", mode="before")
    @classmethod
    def _parse_weekly(cls, value: object) -> object:
        if not isinstance(value, dict):
            return value
        out: dict[str, tuple[Period, ...]] = {}
        for day, periods in value.items():
            if day not in WEEKDAYS:
                raise ValueError(f"{day!r} is not a weekday. Fix: use one of {', '.join(WEEKDAYS)}")
            if not isinstance(periods, list):
                raise ValueError(
                    f"weekly.{day} is not a list. Fix: list periods like ['08:00-10:00']"
                )
            parsed = tuple(
                sorted(
                    (_period(p) for p in periods),
                    key=lambda p: p.start,
                )
            )
            for earlier, later in pairwise(parsed):
                if later.start < earlier.end:
                    raise ValueError(
                        f"weekly.{day}: periods overlap. Fix: make each period end before "
                        "the next starts"
                    )
            out[day] = parsed
        return out

    def periods_on(self, day: date) -> tuple[Period, ...]:
        """The class periods of a local `day`, earliest first; none on a closed day."""
        if day in self.closed:
            return ()
        return self.weekly.get(WEEKDAYS[day.weekday()], ())

    def in_class(self, at: datetime, tz: ZoneInfo) -> bool:
        """Whether a class period is on at `at` (aware), in the site's timezone `tz`."""
        local = at.astimezone(tz)
        now = local.time()
        return any(p.start <= now < p.end for p in self.periods_on(local.date()))

    def last_class_end(self, at: datetime, tz: ZoneInfo) -> datetime | None:
        """End (UTC) of the last class of the local day containing `at`, if it had classes."""
        local = at.astimezone(tz)
        periods = self.periods_on(local.date())
        if not periods:
            return None
        end = datetime.combine(local.date(), periods[-1].end, tzinfo=tz)
        return end.astimezone(UTC)

    def class_intervals(
        self, start: datetime, end: datetime, tz: ZoneInfo
    ) -> list[tuple[datetime, datetime]]:
        """Class periods overlapping [start, end), as UTC intervals clipped to it."""
        out = []
        day = start.astimezone(tz).date() - timedelta(days=1)
        last = end.astimezone(tz).date() + timedelta(days=1)
        while day <= last:
            for p in self.periods_on(day):
                a = datetime.combine(day, p.start, tzinfo=tz).astimezone(UTC)
                b = datetime.combine(day, p.end, tzinfo=tz).astimezone(UTC)
                a, b = max(a, start), min(b, end)
                if a < b:
                    out.append((a, b))
            day += timedelta(days=1)
        return out
