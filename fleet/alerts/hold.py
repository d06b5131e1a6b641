"""Hold times: when observations open and clear an alert (no I/O).

A value jittering around its limit, or a flag toggling between warning and ok, gives a stream
of observations that cross the raising level again and again. Raised on every crossing, it
would open and resolve an alert (and send two webhooks) each time. Here a condition opens
its alert only once it has been seen often enough for long enough, and the alert clears only
once the condition has been gone often enough for long enough, so an episode notifies once
when it opens and once when it clears.

`step` is the whole rule: the counts of one (subject, kind) and an observation in, the new
counts and what to do with the alert out. The counts live in the `alert_condition` table
between judgements (reconcile.py), since ingest and the schedule judge in turns, across
restarts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from fleet.alerts.rules import Hold, Observation


@dataclass(frozen=True)
class Counts:
    """What the observations of one (subject, kind) have built up so far."""

    # The run of observations at the raising level that may open an alert: when it began,
    # how many, the latest. Only a clearing, or RUN_LAPSES_AFTER without any, ends it.
    raise_since: datetime | None = None
    raise_count: int = 0
    last_raise_at: datetime | None = None
    # Observations in a row at the clearing level: one at the raising level starts it over.
    clear_since: datetime | None = None
    clear_count: int = 0
    # The newest evidence counted: a reading judged again, or an older one, counts no more.
    last_at: datetime | None = None

    @property
    def empty(self) -> bool:
        """True when there is nothing worth keeping (no row needed)."""
        return self.raise_count == 0 and self.clear_count == 0


NONE = Counts()
# A run of observations at the raising level that has had none for this long is over: three
# spikes an hour apart are not one condition held.
RUN_LAPSES_AFTER = timedelta(minutes=15)


class Action(StrEnum):
    """What one observation does to the alert of its (subject, kind): keep it as it is, open it, or
    resolve it."""

    keep = "keep"  # the alert (or its absence) stands
    open = "open"
    resolve = "resolve"


def step(counts: Counts, raised: bool, seen: Observation, hold: Hold) -> tuple[Counts, Action]:
    """Take one observation of a (subject, kind) whose alert is `raised` (open or
    acknowledged) or not. Returns the counts to keep and what to do with the alert; counts
    whose `empty` is true need no row."""
    if counts.last_at is not None and seen.at <= counts.last_at:
        return counts, Action.keep
    at = seen.at
    if seen.finding is not None:
        if raised:  # it holds still: any clearing run is over
            return replace(NONE, last_at=at), Action.keep
        counts = replace(counts, clear_since=None, clear_count=0, last_at=at)
        if counts.last_raise_at is not None and at - counts.last_raise_at > RUN_LAPSES_AFTER:
            counts = replace(counts, raise_since=None, raise_count=0)  # the earlier run lapsed
        counts = replace(
            counts,
            raise_since=counts.raise_since or at,
            raise_count=counts.raise_count + 1,
            last_raise_at=at,
        )
        assert counts.raise_since is not None
        due = counts.raise_count >= hold.raise_readings and at - counts.raise_since >= (
            hold.raise_after
        )
        if due:
            return replace(NONE, last_at=at), Action.open
        return counts, Action.keep
    if not seen.cleared:
        return counts, Action.keep  # between the levels: neither raises nor clears
    counts = replace(
        counts, clear_since=counts.clear_since or at, clear_count=counts.clear_count + 1, last_at=at
    )
    assert counts.clear_since is not None
    if counts.clear_count >= hold.clear_readings and at - counts.clear_since >= hold.clear_after:
        return NONE, Action.resolve if raised else Action.keep
    if not raised and counts.raise_count == 0:
        return NONE, Action.keep  # nothing pending, nothing open: a clearing has nothing to do
    return counts, Action.keep
