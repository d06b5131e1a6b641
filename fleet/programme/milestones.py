"""Milestones and the rules for recording them: plain data in, a refusal with a reason out.

A subject (a phase, or one classroom of a phase) moves through the milestones in `ORDER`.
Milestones the sources never mention are simply absent: UPM's agreement date is not known, yet
its installation is. So "in order" means: nothing recorded as reached while an earlier recorded
milestone is still only planned, and the dates never run backwards along the order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date
from enum import StrEnum


class MilestoneName(StrEnum):
    """The milestones of a site's installation programme, in the order a phase or a classroom
    reaches them."""

    agreement_signed = "agreement_signed"
    equipment_delivered = "equipment_delivered"
    installed = "installed"
    training_done = "training_done"
    in_use = "in_use"


ORDER: tuple[MilestoneName, ...] = tuple(MilestoneName)


def position(name: MilestoneName) -> int:
    """The milestone's place in ORDER, from 0."""
    return ORDER.index(name)


@dataclass(frozen=True)
class MilestoneFacts:
    """What is known of one milestone of one subject.

    `reached` without `actual` means it happened on a date nobody gave (e.g. "training for
    faculty" at Tribhuvan).
    """

    milestone: MilestoneName
    planned: date | None = None
    actual: date | None = None
    actual_end: date | None = None
    reached: bool = False

    def normalised(self) -> MilestoneFacts:
        """These facts with `reached` set when an actual date is given."""
        return replace(self, reached=self.reached or self.actual is not None)

    @property
    def anchor(self) -> date | None:
        """The date that must respect the order: when it happened, else when it is planned."""
        return self.actual if self.reached else self.planned

    @property
    def anchor_field(self) -> str:
        """The name of the field `anchor` comes from ("actual" or "planned"), for a refusal to point
        at."""
        return "actual" if self.reached else "planned"


class MilestoneRefused(ValueError):
    """A recording the rules refuse; `field` names the input at fault."""

    def __init__(self, field: str, reason: str) -> None:
        """`field`: the input at fault; `reason`: why, in words for the person recording it."""
        super().__init__(reason)
        self.field = field
        self.reason = reason


def check_recording(
    recorded: Mapping[MilestoneName, MilestoneFacts] | Iterable[MilestoneFacts],
    new: MilestoneFacts,
    *,
    today: date,
    correction: bool = False,
) -> MilestoneFacts:
    """The normalised `new`, or MilestoneRefused saying why it cannot be recorded.

    `recorded` is what the same subject already has (a previous version of `new` is ignored).
    A correction skips the ordering rules, never the sanity ones (ranges, future dates).
    """
    new = new.normalised()
    _check_sane(new, today)
    if correction:
        return new
    others = recorded.values() if isinstance(recorded, Mapping) else recorded
    by_name = {f.milestone: f.normalised() for f in others if f.milestone != new.milestone}
    _check_order(by_name, new)
    return new


def _check_sane(new: MilestoneFacts, today: date) -> None:
    name = new.milestone.value
    if new.actual_end is not None and new.actual is None:
        raise MilestoneRefused(
            "actual_end", f"{name}: an end date needs a start date: give actual as well"
        )
    if new.actual is not None and new.actual_end is not None and new.actual_end < new.actual:
        raise MilestoneRefused(
            "actual_end",
            f"{name}: impossible range {new.actual} to {new.actual_end}: the end is before the "
            "start",
        )
    last = new.actual_end or new.actual
    if last is not None and last > today:
        raise MilestoneRefused(
            "actual_end" if new.actual_end else "actual",
            f"{name}: {last} is in the future (today is {today}): record it as planned instead",
        )
    if new.planned is None and not new.reached:
        raise MilestoneRefused(
            "planned", f"{name}: nothing to record: give planned, actual, or reached=true"
        )


def _check_order(recorded: Mapping[MilestoneName, MilestoneFacts], new: MilestoneFacts) -> None:
    here = position(new.milestone)
    hint = "fix that milestone first, or mark this recording as a correction"
    for other in sorted(recorded.values(), key=lambda f: position(f.milestone)):
        earlier = position(other.milestone) < here
        if new.reached and earlier and not other.reached:
            raise MilestoneRefused(
                "milestone",
                f"{new.milestone} cannot be reached while the earlier {other.milestone} is only "
                f"planned{_on(other.planned, 'for')}: {hint}",
            )
        if not new.reached and not earlier and other.reached:
            raise MilestoneRefused(
                "milestone",
                f"{new.milestone} cannot be only planned while the later {other.milestone} is "
                f"already reached{_on(other.actual, 'on')}: {hint}",
            )
        if new.anchor is None or other.anchor is None:
            continue
        if earlier and new.anchor < other.anchor:
            raise MilestoneRefused(
                new.anchor_field,
                f"{new.milestone} {new.anchor_field} {new.anchor} is before the earlier "
                f"{other.milestone} ({other.anchor_field} {other.anchor}): {hint}",
            )
        if not earlier and new.anchor > other.anchor:
            raise MilestoneRefused(
                new.anchor_field,
                f"{new.milestone} {new.anchor_field} {new.anchor} is after the later "
                f"{other.milestone} ({other.anchor_field} {other.anchor}): {hint}",
            )


def check_sequence(facts: Iterable[MilestoneFacts], *, today: date) -> None:
    """Check a whole subject at once (a site config's list), each against all the others."""
    items = [f.normalised() for f in facts]
    seen: set[MilestoneName] = set()
    for item in items:
        if item.milestone in seen:
            raise MilestoneRefused("milestone", f"{item.milestone} is listed twice")
        seen.add(item.milestone)
        check_recording(items, item, today=today)


def is_overdue(facts: MilestoneFacts, today: date) -> bool:
    """Planned for a day that has passed, and not reached."""
    facts = facts.normalised()
    return not facts.reached and facts.planned is not None and facts.planned < today


def current_and_next(
    facts: Iterable[MilestoneFacts],
) -> tuple[MilestoneFacts | None, MilestoneFacts | None]:
    """The furthest milestone reached, and the first one after it that is planned."""
    ordered = sorted((f.normalised() for f in facts), key=lambda f: position(f.milestone))
    reached = [f for f in ordered if f.reached]
    current = reached[-1] if reached else None
    after = position(current.milestone) if current else -1
    upcoming = [f for f in ordered if position(f.milestone) > after and f.planned is not None]
    return current, (upcoming[0] if upcoming else None)


def _on(day: date | None, preposition: str) -> str:
    return f" {preposition} {day}" if day else ""
