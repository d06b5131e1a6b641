"""Writing the programme: phases, their classrooms and milestones, each through the rules.

Every function works inside the caller's session and never commits, so one request (or one
CSV import) is one transaction: a refusal half-way leaves nothing written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlmodel import Session, col, func, select

from fleet.models import Room, Site
from fleet.programme.milestones import (
    MilestoneFacts,
    MilestoneName,
    MilestoneRefused,
    check_recording,
)
from fleet.programme.models import PHASE_ITSELF, MilestoneRecord, Phase, PhaseRoom


class ProgrammeError(ValueError):
    """Bad input for the programme; `field` names it, `status` is the HTTP status to answer."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        """`field`: the input at fault; `message`: what is wrong and what to do; `status`: 422 by
        default."""
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status


@dataclass(frozen=True)
class MilestoneInput:
    """One milestone as someone records it."""

    facts: MilestoneFacts
    note: str = ""
    evidence: dict[str, Any] | None = None
    correction: bool = False


WriteMode = Literal["create", "update", "upsert"]


def site_today(site: Site, now: datetime) -> date:
    """The date at the site: "planned for the 13th" means the site's 13th."""
    return now.astimezone(ZoneInfo(site.timezone)).date()


def get_site(session: Session, code: str) -> Site:
    """The site with this code. Raises ProgrammeError (404) when there is none."""
    site = session.get(Site, code)
    if site is None:
        raise ProgrammeError(
            "code", f"no site {code!r}: GET /api/v1/sites lists the known codes", 404
        )
    return site


def get_phase(session: Session, site_code: str, number: int) -> Phase:
    """The site's phase with this number. Raises ProgrammeError (404) when there is none."""
    phase = session.exec(
        select(Phase).where(Phase.site_code == site_code, Phase.number == number)
    ).first()
    if phase is None:
        raise ProgrammeError(
            "phase",
            f"site {site_code!r} has no phase {number}: GET /api/v1/sites/{site_code}/phases "
            "lists them, POST there creates one",
            404,
        )
    return phase


def phases_of(session: Session, site_code: str) -> list[Phase]:
    """The site's phases, by number."""
    query = select(Phase).where(Phase.site_code == site_code).order_by(col(Phase.number))
    return list(session.exec(query).all())


def rooms_of(session: Session, phase: Phase) -> list[str]:
    """The ids of the classrooms the phase covers, sorted."""
    query = select(PhaseRoom.room_id).where(PhaseRoom.phase_id == phase.id)
    return sorted(session.exec(query).all())


def milestones_of(session: Session, phase: Phase) -> list[MilestoneRecord]:
    """Every milestone recorded for the phase, its own and its classrooms'."""
    query = select(MilestoneRecord).where(MilestoneRecord.phase_id == phase.id)
    return list(session.exec(query).all())


def facts_of(record: MilestoneRecord) -> MilestoneFacts:
    """The recorded milestone as the rules read it."""
    return MilestoneFacts(
        milestone=MilestoneName(record.milestone),
        planned=record.planned,
        actual=record.actual,
        actual_end=record.actual_end,
        reached=record.reached,
    )


def find_milestone(
    session: Session, phase: Phase, room_id: str, name: MilestoneName
) -> MilestoneRecord | None:
    """The recorded milestone `name` of the phase (room_id PHASE_ITSELF) or of one of its
    classrooms, or None."""
    query = select(MilestoneRecord).where(
        MilestoneRecord.phase_id == phase.id,
        MilestoneRecord.room_id == room_id,
        MilestoneRecord.milestone == name.value,
    )
    return session.exec(query).first()


_FACTS = ("planned", "actual", "actual_end", "reached")


def changed_input(current: MilestoneRecord, changes: Mapping[str, Any]) -> MilestoneInput:
    """What a correction of `current` records: the fields `changes` gives (a partial
    milestone, as `PATCH .../milestones/{name}` takes it: planned, actual, actual_end,
    reached, note, evidence, correction) over the recorded ones. A date given as None clears
    it; an actual date given makes it reached; reached=False alone clears when it happened;
    evidence keys given are added to (or replace) the recorded ones."""
    merged = {**facts_of(current).__dict__, **{k: v for k, v in changes.items() if k in _FACTS}}
    if changes.get("actual") is not None and "reached" not in changes:
        merged["reached"] = True
    if changes.get("reached") is False and "actual" not in changes:
        merged["actual"] = merged["actual_end"] = None  # un-reaching clears when it happened
    evidence = current.evidence
    if "evidence" in changes:
        evidence = {**(current.evidence or {}), **(changes["evidence"] or {})} or None
    note = changes.get("note")
    return MilestoneInput(
        facts=MilestoneFacts(**merged),
        note=current.note if note is None else note,
        evidence=evidence,
        correction=bool(changes.get("correction", False)),
    )


def create_phase(
    session: Session,
    site: Site,
    *,
    number: int | None,
    name: str,
    rooms: Iterable[str],
    recorded_by: str,
    now: datetime,
) -> Phase:
    """Add a phase to the site (`number` None: the next free one) covering `rooms`, in the caller's
    session. Raises ProgrammeError: a number below 1, a number the site has already (409), or a room
    not of the site or already in another phase."""
    if number is None:
        last = session.exec(
            select(func.max(Phase.number)).where(Phase.site_code == site.code)
        ).one()
        number = (last or 0) + 1
    elif number < 1:
        raise ProgrammeError("phase", f"phase {number}: phases are numbered from 1")
    exists = session.exec(
        select(Phase).where(Phase.site_code == site.code, Phase.number == number)
    ).first()
    if exists is not None:
        raise ProgrammeError(
            "phase", f"site {site.code!r} already has phase {number}: PATCH it instead", 409
        )
    phase = Phase(
        site_code=site.code, number=number, name=name, recorded_by=recorded_by, recorded_at=now
    )
    session.add(phase)
    session.flush()
    add_rooms(session, phase, rooms)
    return phase


def add_rooms(session: Session, phase: Phase, rooms: Iterable[str]) -> list[str]:
    """Cover these classrooms by the phase; returns those newly added."""
    added = []
    for room_id in rooms:
        _check_room_of_site(session, phase.site_code, room_id, "rooms")
        link = session.get(PhaseRoom, room_id)
        if link is not None and link.phase_id == phase.id:
            continue
        if link is not None:
            other = session.get(Phase, link.phase_id)
            number = other.number if other else "?"
            raise ProgrammeError(
                "rooms",
                f"classroom {room_id!r} is already covered by phase {number}: a classroom "
                "belongs to one phase",
                409,
            )
        assert phase.id is not None
        session.add(PhaseRoom(room_id=room_id, phase_id=phase.id))
        added.append(room_id)
    session.flush()
    return added


def write_milestone(
    session: Session,
    site: Site,
    phase: Phase,
    room_id: str,
    given: MilestoneInput,
    *,
    recorded_by: str,
    now: datetime,
    mode: WriteMode,
) -> MilestoneRecord:
    """Record (create), change (update) or either (upsert) one milestone of a phase or room."""
    if room_id != PHASE_ITSELF:
        _check_room_of_phase(session, phase, room_id)
    siblings = {
        r.milestone: r
        for r in session.exec(
            select(MilestoneRecord).where(
                MilestoneRecord.phase_id == phase.id, MilestoneRecord.room_id == room_id
            )
        )
    }
    existing = siblings.get(given.facts.milestone.value)
    subject = f"phase {phase.number}" + (f" classroom {room_id}" if room_id else "")
    if existing is not None and mode == "create":
        raise ProgrammeError(
            "milestone",
            f"{given.facts.milestone} of {subject} is already recorded: PATCH it to change it",
            409,
        )
    if existing is None and mode == "update":
        raise ProgrammeError(
            "milestone",
            f"{given.facts.milestone} of {subject} is not recorded yet: POST it first",
            404,
        )
    try:
        facts = check_recording(
            [facts_of(r) for r in siblings.values()],
            given.facts,
            today=site_today(site, now),
            correction=given.correction,
        )
    except MilestoneRefused as exc:
        raise ProgrammeError(exc.field, f"{subject}: {exc.reason}") from None
    record = existing or MilestoneRecord(
        phase_id=phase.id or 0,
        room_id=room_id,
        milestone=facts.milestone.value,
        recorded_by=recorded_by,
        recorded_at=now,
    )
    record.planned = facts.planned
    record.actual = facts.actual
    record.actual_end = facts.actual_end
    record.reached = facts.reached
    record.note = given.note
    record.evidence = given.evidence or None
    record.correction = given.correction
    record.recorded_by = recorded_by
    record.recorded_at = now
    session.add(record)
    session.flush()
    return record


def _check_room_of_site(session: Session, site_code: str, room_id: str, field: str) -> Room:
    room = session.get(Room, room_id)
    if room is None or room.site_code != site_code:
        raise ProgrammeError(
            field,
            f"no classroom {room_id!r} at site {site_code!r}: GET /api/v1/sites/{site_code} "
            "lists its rooms",
        )
    return room


def _check_room_of_phase(session: Session, phase: Phase, room_id: str) -> None:
    _check_room_of_site(session, phase.site_code, room_id, "room")
    link = session.get(PhaseRoom, room_id)
    if link is None or link.phase_id != phase.id:
        raise ProgrammeError(
            "room",
            f"classroom {room_id!r} is not covered by phase {phase.number}: add it to the "
            "phase's rooms first",
        )
