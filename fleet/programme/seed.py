"""The programme facts a site config states, recorded on registry sync as "site_config".

Idempotent: a second sync with the same config writes nothing. A fact someone else recorded
since (ops through the API, or the devices) is left as it is: the database knows better.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlmodel import Session, select

from fleet.models import Site
from fleet.programme.milestones import (
    MilestoneFacts,
    MilestoneName,
    MilestoneRefused,
    check_sequence,
)
from fleet.programme.models import PHASE_ITSELF, MilestoneRecord, Phase
from fleet.programme.records import (
    MilestoneInput,
    ProgrammeError,
    add_rooms,
    site_today,
    write_milestone,
)
from fleet.protocol.site_config import LoadedSite, Milestone

log = logging.getLogger(__name__)

SITE_CONFIG = "site_config"


def milestone_input(milestone: Milestone) -> MilestoneInput:
    """A site config's milestone as a recording (trained_more_than kept as evidence)."""
    evidence: dict[str, Any] = {}
    if milestone.trained_more_than is not None:
        evidence["trained_more_than"] = milestone.trained_more_than
    facts = MilestoneFacts(
        milestone=MilestoneName(milestone.milestone),
        planned=milestone.planned,
        actual=milestone.actual,
        actual_end=milestone.actual_end,
        reached=milestone.reached,
    )
    return MilestoneInput(facts=facts.normalised(), note=milestone.note, evidence=evidence or None)


def seed_programme(session: Session, loaded: LoadedSite, now: datetime) -> list[str]:
    """Record the config's phases, classrooms and milestones; returns what changed."""
    # Imported here: fleet.devices.registry calls this module, so it cannot be imported at the top.
    from fleet.devices.registry import RegistryError

    config = loaded.config
    site = session.get(Site, config.code)
    assert site is not None, "sync the site before its programme"
    changes: list[str] = []
    for index, phase_config in enumerate(config.programme):
        where = f"{loaded.path}: programme[{index}] (phase {phase_config.phase})"
        given = [milestone_input(m) for m in phase_config.milestones]
        try:
            check_sequence([g.facts for g in given], today=site_today(site, now))
        except MilestoneRefused as exc:
            raise RegistryError(f"{where}.{exc.field}: {exc.reason}") from None
        phase = _phase(session, site, phase_config.phase, now, changes)
        try:
            added = add_rooms(session, phase, phase_config.rooms)
        except ProgrammeError as exc:
            raise RegistryError(f"{where}.rooms: {exc.message}") from None
        changes += [f"phase-room:{site.code}/{phase.number}/{room}" for room in added]
        for item in given:
            _milestone(session, site, phase, item, now, changes, where)
    return changes


def _phase(session: Session, site: Site, number: int, now: datetime, changes: list[str]) -> Phase:
    phase = session.exec(
        select(Phase).where(Phase.site_code == site.code, Phase.number == number)
    ).first()
    if phase is None:
        phase = Phase(site_code=site.code, number=number, recorded_by=SITE_CONFIG, recorded_at=now)
        session.add(phase)
        session.flush()
        changes.append(f"phase:{site.code}/{number}")
    return phase


def _milestone(
    session: Session,
    site: Site,
    phase: Phase,
    given: MilestoneInput,
    now: datetime,
    changes: list[str],
    where: str,
) -> None:
    name = given.facts.milestone.value
    label = f"milestone:{site.code}/{phase.number}/{name}"
    existing = session.exec(
        select(MilestoneRecord).where(
            MilestoneRecord.phase_id == phase.id,
            MilestoneRecord.room_id == PHASE_ITSELF,
            MilestoneRecord.milestone == name,
        )
    ).first()
    if existing is not None and (existing.recorded_by != SITE_CONFIG or _same(existing, given)):
        return
    try:
        write_milestone(
            session,
            site,
            phase,
            PHASE_ITSELF,
            given,
            recorded_by=SITE_CONFIG,
            now=now,
            mode="update" if existing else "create",
        )
    except ProgrammeError as exc:
        # The config contradicts what was recorded since: keep the record, say so.
        log.warning("%s: %s not recorded: %s", where, name, exc.message)
        return
    changes.append(label)


def _same(record: MilestoneRecord, given: MilestoneInput) -> bool:
    facts = given.facts
    return (
        record.planned == facts.planned
        and record.actual == facts.actual
        and record.actual_end == facts.actual_end
        and record.reached == facts.reached
        and record.note == given.note
        and (record.evidence or None) == given.evidence
        and not record.correction
    )
