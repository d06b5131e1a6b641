"""The window of time the controller answers about: instants from 2000-01-01 up to, not
including, 2100-01-01 UTC, and the dates 2000-01-01 to 2099-12-31.

The same window a reading's time must fall in (`fleet.protocol.messages`): nothing is stored
outside it, and a date near the ends of what `datetime` holds overflows the conversions that
follow (a site's local midnight, the day after a report's last day, a timeline's axis). Query
parameters (`fleet.api.params`) and the instants and dates in request bodies (a rollout's
`start_at`, a milestone's dates) are refused outside it with a 422 that names the window.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated

from pydantic import AfterValidator

from fleet.protocol.messages import EARLIEST_TS, LATEST_TS

FIRST_DAY = EARLIEST_TS.date()
LAST_DAY = (LATEST_TS - timedelta(days=1)).date()
WINDOW = f"from {FIRST_DAY} to {LAST_DAY} (UTC)"


def instant_in_window(value: datetime) -> datetime:
    """The instant as given, if it carries a UTC offset and falls in the window. Raises
    ValueError (pydantic, and so FastAPI, answer it as a validation error of the field)."""
    if value.tzinfo is None:
        raise ValueError("it has no timezone: write it as ISO 8601 with 'Z' or '+05:45'")
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            f"{value.isoformat()} is out of range in UTC: give a time {WINDOW}"
        ) from None
    if not EARLIEST_TS <= utc < LATEST_TS:
        raise ValueError(f"{value.isoformat()} is outside the times the controller keeps, {WINDOW}")
    return value


def day_in_window(value: date) -> date:
    """The date, if in the window. Raises ValueError."""
    if not FIRST_DAY <= value <= LAST_DAY:
        raise ValueError(f"{value.isoformat()} is outside the dates the controller keeps, {WINDOW}")
    return value


Instant = Annotated[datetime, AfterValidator(instant_in_window)]
Day = Annotated[date, AfterValidator(day_in_window)]
