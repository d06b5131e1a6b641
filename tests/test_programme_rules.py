"""The milestone ordering rules, as plain functions."""

from __future__ import annotations

from datetime import date

import pytest

from fleet.programme.milestones import (
    MilestoneFacts,
    MilestoneName,
    MilestoneRefused,
    check_recording,
    check_sequence,
    current_and_next,
    is_overdue,
)

M = MilestoneName
TODAY = date(2025, 6, 1)
AGREED = MilestoneFacts(M.agreement_signed, actual=date(2024, 12, 13))
DELIVERY_PLANNED = MilestoneFacts(M.equipment_delivered, planned=date(2025, 3, 1))
INSTALLED = MilestoneFacts(M.installed, actual=date(2024, 3, 25), actual_end=date(2024, 4, 2))


def refused(recorded: list[MilestoneFacts], new: MilestoneFacts, **kw: object) -> str:
    with pytest.raises(MilestoneRefused) as caught:
        check_recording(recorded, new, today=TODAY, **kw)  # type: ignore[arg-type]
    return caught.value.field


def test_in_order_recording_is_accepted_and_actual_implies_reached() -> None:
    new = check_recording([AGREED], DELIVERY_PLANNED, today=TODAY)
    assert not new.reached
    done = check_recording(
        [AGREED], MilestoneFacts(M.equipment_delivered, actual=date(2025, 1, 5)), today=TODAY
    )
    assert done.reached


def test_reaching_a_milestone_while_an_earlier_one_is_only_planned_is_refused() -> None:
    installed = MilestoneFacts(M.installed, actual=date(2025, 4, 1))
    assert refused([AGREED, DELIVERY_PLANNED], installed) == "milestone"


def test_a_correction_may_break_the_order() -> None:
    installed = MilestoneFacts(M.installed, actual=date(2025, 4, 1))
    assert check_recording([DELIVERY_PLANNED], installed, today=TODAY, correction=True).reached


def test_milestones_never_mentioned_do_not_block_later_ones() -> None:
    # UPM: installed is known, its agreement date is not.
    assert check_recording([], INSTALLED, today=TODAY).reached


def test_date_before_the_previous_milestone_is_refused_naming_actual() -> None:
    early = MilestoneFacts(M.equipment_delivered, actual=date(2024, 12, 1))
    assert refused([AGREED], early) == "actual"


def test_date_after_a_later_milestone_is_refused() -> None:
    late_agreement = MilestoneFacts(M.agreement_signed, actual=date(2024, 5, 1))
    assert refused([INSTALLED], late_agreement) == "actual"


def test_training_during_installation_is_in_order() -> None:
    training = MilestoneFacts(M.training_done, actual=date(2024, 3, 28))
    assert check_recording([INSTALLED], training, today=TODAY).reached


def test_planned_date_before_the_earlier_milestone_is_refused_naming_planned() -> None:
    plan = MilestoneFacts(M.installed, planned=date(2024, 1, 1))
    assert refused([AGREED], plan) == "planned"


def test_planning_a_milestone_whose_later_one_is_reached_is_refused() -> None:
    plan = MilestoneFacts(M.agreement_signed, planned=date(2024, 1, 1))
    assert refused([INSTALLED], plan) == "milestone"


@pytest.mark.parametrize(
    ("facts", "field"),
    [
        (
            MilestoneFacts(M.installed, actual=date(2024, 4, 2), actual_end=date(2024, 3, 25)),
            "actual_end",
        ),
        (MilestoneFacts(M.installed, actual_end=date(2024, 4, 2)), "actual_end"),
        (MilestoneFacts(M.installed, actual=date(2030, 1, 1)), "actual"),
        (MilestoneFacts(M.installed), "planned"),
    ],
)
def test_impossible_input_is_refused_even_as_a_correction(
    facts: MilestoneFacts, field: str
) -> None:
    assert refused([], facts, correction=True) == field


def test_the_previous_version_of_the_same_milestone_is_ignored() -> None:
    moved = MilestoneFacts(M.installed, actual=date(2024, 3, 26), actual_end=date(2024, 4, 2))
    assert check_recording([INSTALLED], moved, today=TODAY).actual == date(2024, 3, 26)


def test_a_sequence_listing_a_milestone_twice_is_refused() -> None:
    with pytest.raises(MilestoneRefused, match="twice"):
        check_sequence([AGREED, AGREED], today=TODAY)


def test_overdue_is_a_passed_planned_date_without_the_milestone() -> None:
    planned = MilestoneFacts(M.installed, planned=date(2025, 12, 31))
    assert not is_overdue(planned, date(2025, 12, 31))
    assert is_overdue(planned, date(2026, 1, 1))
    reached = MilestoneFacts(M.installed, planned=date(2025, 12, 31), actual=date(2026, 2, 1))
    assert not is_overdue(reached, date(2026, 3, 1))


def test_current_is_the_furthest_reached_and_next_the_first_planned_after_it() -> None:
    current, upcoming = current_and_next(
        [AGREED, MilestoneFacts(M.installed, planned=date(2025, 12, 31)), DELIVERY_PLANNED]
    )
    assert current is not None and current.milestone == M.agreement_signed
    assert upcoming is not None and upcoming.milestone == M.equipment_delivered
