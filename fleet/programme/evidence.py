"""Device evidence: a classroom whose devices have all reported healthy is installed.

A scheduled job (`check_classroom_evidence`), not part of ingest: it reads the samples table
for the devices of classrooms not yet confirmed, keeps each device's first healthy reading in
`programme_classroom_evidence`, and when the last device of a classroom comes healthy it
confirms the classroom's `installed` milestone with that time (or attaches the evidence to the
milestone already recorded). A classroom that reports without an `installed` milestone, or that
is in no phase, is marked for review with the reason.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import Engine, Text, cast, func, literal_column, update
from sqlmodel import Session, SQLModel, col, select

from fleet.db import DATABASE_FAULTS
from fleet.job_rows import each, skip
from fleet.models import Device, Room, Sample, Site
from fleet.programme.milestones import MilestoneFacts, MilestoneName
from fleet.programme.models import (
    PHASE_ITSELF,
    ClassroomEvidence,
    MilestoneRecord,
    Phase,
    PhaseRoom,
)
from fleet.programme.records import MilestoneInput, ProgrammeError, site_today, write_milestone

log = logging.getLogger(__name__)

DEVICE_EVIDENCE = "device_evidence"
# Ingest stamps received_at before it commits: re-read a margin so a late commit is not missed
# (the same margin as the usage roll-up's, fleet.reports.rollup).
RESCAN_MARGIN = timedelta(minutes=2)
SETTLED = ("confirmed", "attached")
JOB = "programme_evidence"


@dataclass(frozen=True)
class DeviceSeen:
    """A classroom device as the evidence job reads it: its id and the time of its newest reading
    (UTC; None: never heard)."""

    id: str
    last_seen_at: datetime | None


def is_healthy(reachable: bool, errors: Mapping[str, Any] | None) -> bool:
    """Reachable, and no PJLink-style flag at `error` (a warning is still a working device)."""
    return reachable and not any(flag == "error" for flag in (errors or {}).values())


def all_healthy_at(devices: list[str], first_healthy: Mapping[str, datetime]) -> datetime | None:
    """When the last of `devices` first came healthy, or None while one has not."""
    if not devices or any(d not in first_healthy for d in devices):
        return None
    return max(first_healthy[d] for d in devices)


def check_classroom_evidence(engine: Engine, now: datetime, *, notify: bool = False) -> None:
    """The scheduled job: see update_classroom_evidence; logs the classrooms to review. When a
    classroom's installation was just confirmed, the programme's overdue check runs at once:
    its overdue alert and late mark go now, not at the hourly check. `notify`: as that
    check's."""
    before, _ = _kept_statuses(engine)
    statuses = update_classroom_evidence(engine, now)
    flagged = sorted(room for room, status in statuses.items() if status == "review")
    if flagged:
        log.info("programme: classrooms to review: %s", ", ".join(flagged))
    confirmed = sorted(
        room
        for room, status in statuses.items()
        if status == "confirmed" and before.get(room) != "confirmed"
    )
    if confirmed:
        # Imported here: the overview's module reads this one's results, not the other way.
        from fleet.programme.overview import check_overdue_milestones

        log.info("programme: installed confirmed by device readings: %s", ", ".join(confirmed))
        check_overdue_milestones(engine, now, notify=notify)


def update_classroom_evidence(engine: Engine, now: datetime) -> dict[str, str]:
    """Run the check once; the status of each classroom that reported. All classrooms are
    judged in one transaction; if that raises, classroom by classroom, and one whose rows
    cannot be read or written is logged, counted and skipped (fleet.job_rows)."""
    devices_by_room: dict[str, list[DeviceSeen]] = defaultdict(list)
    for room_id, seen in _devices_seen(engine):
        devices_by_room[room_id].append(seen)
    statuses, scanned = _kept_statuses(engine)
    pending = {
        room_id: devices
        for room_id, devices in devices_by_room.items()
        if (room_id in statuses and statuses[room_id] not in SETTLED)
        or (room_id not in statuses and any(d.last_seen_at is not None for d in devices))
    }

    def judge(rooms: list[str]) -> list[tuple[str, str]]:
        with Session(engine) as session:
            judged = _update(session, {r: pending[r] for r in rooms}, scanned, now)
            session.commit()
        return list(judged.items())

    rooms = sorted(pending)
    statuses.update(each(JOB, rooms, judge, chunk=max(len(rooms), 1)))
    return statuses


def _devices_seen(engine: Engine) -> list[tuple[str, DeviceSeen]]:
    """(room, device) for every device in service. A classroom with a device that cannot be
    read is left out this run: judged without it, it could look installed when it is not."""
    with Session(engine) as session:
        query = select(Device.id, Device.room_id).where(col(Device.retired_at).is_(None))
        room_of = dict(session.exec(query).all())

    def read(chunk: list[str]) -> list[tuple[str, DeviceSeen]]:
        # Three columns, not whole devices: this runs every minute over the whole fleet, and
        # loading every device's last reading each time only churns memory.
        query = select(Device.id, Device.room_id, Device.last_seen_at).where(
            col(Device.id).in_(chunk)
        )
        with Session(engine) as session:
            return [(room, DeviceSeen(d, seen)) for d, room, seen in session.exec(query)]

    seen = each(JOB, sorted(room_of), read, chunk=5000)
    unread = {room_of[d] for d in room_of.keys() - {s.id for _, s in seen}}
    return [(room, s) for room, s in seen if room not in unread]


def _kept_statuses(engine: Engine) -> tuple[dict[str, str], dict[str, datetime | None]]:
    with Session(engine) as session:
        rooms = list(session.exec(select(ClassroomEvidence.room_id)))

    def read(chunk: list[str]) -> list[tuple[str, str, datetime | None]]:
        query = select(
            ClassroomEvidence.room_id, ClassroomEvidence.status, ClassroomEvidence.scanned_through
        ).where(col(ClassroomEvidence.room_id).in_(chunk))
        with Session(engine) as session:
            return list(session.exec(query))

    kept = each(JOB, rooms, read, chunk=5000)
    return {r: status for r, status, _ in kept}, {r: through for r, _, through in kept}


@dataclass
class _Programme:
    """What judging a classroom needs, read once per run rather than once per classroom."""

    site_of_room: dict[str, str]
    phase_of_room: dict[str, Phase]
    installed: dict[tuple[int, str], MilestoneRecord]  # (phase id, room id)

    @classmethod
    def read(cls, session: Session) -> _Programme:
        rooms = dict(session.exec(select(Room.id, Room.site_code)).all())
        phases = {p.id: p for p in session.exec(select(Phase))}
        links = session.exec(select(PhaseRoom.room_id, PhaseRoom.phase_id)).all()
        installed_ids = list(
            session.exec(
                select(MilestoneRecord.id).where(
                    MilestoneRecord.milestone == MilestoneName.installed.value,
                    col(MilestoneRecord.room_id).is_not(None),
                )
            )
        )

        def records(ids: list[int | None]) -> list[MilestoneRecord]:
            query = select(MilestoneRecord).where(col(MilestoneRecord.id).in_(ids))
            return list(session.exec(query))

        # One record whose dates cannot be read costs its classroom, not the run.
        installed = each(JOB, installed_ids, records, chunk=5000)
        return cls(
            site_of_room=rooms,
            phase_of_room={room: phases[phase] for room, phase in links if phase in phases},
            installed={(m.phase_id, m.room_id or ""): m for m in installed},
        )


def _update(
    session: Session,
    pending: Mapping[str, list[DeviceSeen]],
    scanned: Mapping[str, datetime | None],
    now: datetime,
) -> dict[str, str]:
    statuses: dict[str, str] = {}
    if not pending:
        return statuses
    first_seen = _first_healthy_readings(session, pending, scanned)
    programme = _Programme.read(session)
    kept = {
        e.room_id: e
        for e in session.exec(
            select(ClassroomEvidence).where(col(ClassroomEvidence.room_id).in_(sorted(pending)))
        )
    }
    unchanged: list[str] = []
    for room_id, devices in sorted(pending.items()):
        site_code = programme.site_of_room.get(room_id)
        if site_code is None:
            continue
        evidence = kept.get(room_id)
        if evidence is None:
            evidence = ClassroomEvidence(
                room_id=room_id, site_code=site_code, first_healthy={}, checked_at=now
            )
        known = {d: datetime.fromisoformat(t) for d, t in (evidence.first_healthy or {}).items()}
        for device_id, ts in first_seen.get(room_id, {}).items():
            if device_id not in known or ts < known[device_id]:
                known[device_id] = ts
        first_healthy = {d: t.isoformat() for d, t in sorted(known.items())}
        at = all_healthy_at([d.id for d in devices], known)
        status, reason = _judge(
            session, programme, room_id, site_code, devices, first_healthy, at, now
        )
        statuses[room_id] = status
        before = (evidence.first_healthy, evidence.all_healthy_at, evidence.status, evidence.reason)
        if room_id in kept and before == (first_healthy, at, status, reason):
            unchanged.append(room_id)  # only its watermark moves, below, in one statement
            continue
        evidence.first_healthy = first_healthy
        evidence.all_healthy_at = at
        evidence.status, evidence.reason = status, reason
        evidence.scanned_through = evidence.checked_at = now
        session.add(evidence)
    session.flush()
    table = SQLModel.metadata.tables[ClassroomEvidence.__tablename__]
    for chunk in range(0, len(unchanged), 500):
        session.connection().execute(
            update(table)
            .where(table.c.room_id.in_(unchanged[chunk : chunk + 500]))
            .values(scanned_through=now, checked_at=now)
        )
    return statuses


def _first_healthy_readings(
    session: Session,
    pending: Mapping[str, list[DeviceSeen]],
    scanned: Mapping[str, datetime | None],
) -> dict[str, dict[str, datetime]]:
    """room -> device -> earliest healthy reading among samples received since the last run."""
    room_of = {d.id: room for room, devices in pending.items() for d in devices}
    if not room_of:
        return {}
    since: dict[str, datetime] = {}
    for room in pending:
        through = scanned.get(room)
        if through is not None:
            since[room] = through - RESCAN_MARGIN
    # The database does the grouping: each device's earliest reading per distinct error
    # flags (a handful of groups per device, however many samples), and Python judges each
    # group's flags. Re-reading samples already seen changes nothing: the earliest is kept.
    errors_text = cast(Sample.errors, Text)
    device: Any = col(Sample.device_id)
    if len(since) == len(pending):
        # Every room was scanned before: read only what is new, through the received_at index.
        # SQLite walks each device's whole history through the (device, ts) index instead if
        # given a list of devices, or a bare device_id to group by: the devices are picked
        # out below, and the grouping is by an expression.
        if session.get_bind().dialect.name == "sqlite":
            device = device.concat(literal_column("''"))
        where = col(Sample.received_at) > min(since.values())
    else:  # a classroom seen for the first time: its devices' whole history
        where = col(Sample.device_id).in_(sorted(room_of))
    query = (
        select(device, errors_text, func.min(Sample.ts))
        .where(where, col(Sample.reachable).is_(True))
        .group_by(device, errors_text)
    )
    groups: list[tuple[str, str | None, datetime]]
    try:
        groups = list(session.exec(query))
    except DATABASE_FAULTS:
        raise
    except Exception as exc:
        # A sample whose time no datetime holds: read device by device, and skip only it.
        log.warning("%s: samples unreadable together (%r); reading device by device", JOB, exc)
        groups = each(JOB, sorted(room_of), partial(_groups_of, session, pending, since))
    found: dict[str, dict[str, datetime]] = defaultdict(dict)
    for device_id, errors, ts in groups:
        room_id = room_of.get(device_id)
        if room_id is None:
            continue
        try:
            healthy = is_healthy(True, json.loads(errors) if errors else None)
        except (ValueError, AttributeError) as exc:
            skip(JOB, f"samples of device {device_id} with flags {errors!r}", exc)
            continue
        seen = found[room_id].get(device_id)
        if healthy and (seen is None or ts < seen):
            found[room_id][device_id] = ts
    return found


def _groups_of(
    session: Session,
    pending: Mapping[str, list[DeviceSeen]],
    since: Mapping[str, datetime],
    devices: list[str],
) -> list[tuple[str, str | None, datetime]]:
    """Each of `devices`' earliest reachable sample per distinct flags, received since its
    classroom was last scanned (its whole history if never), read in a session of its own."""
    room_of = {d.id: room for room, members in pending.items() for d in members}
    out: list[tuple[str, str | None, datetime]] = []
    errors_text = cast(Sample.errors, Text)
    with Session(session.get_bind()) as alone:
        for device_id in devices:
            where = [col(Sample.device_id) == device_id, col(Sample.reachable).is_(True)]
            if room_of[device_id] in since:
                where.append(col(Sample.received_at) > since[room_of[device_id]])
            query = select(errors_text, func.min(Sample.ts)).where(*where).group_by(errors_text)
            out += [(device_id, errors, ts) for errors, ts in alone.exec(query)]
    return out


def _judge(
    session: Session,
    programme: _Programme,
    room_id: str,
    site_code: str,
    devices: list[DeviceSeen],
    first_healthy: Mapping[str, str],
    at: datetime | None,
    now: datetime,
) -> tuple[str, str]:
    phase = programme.phase_of_room.get(room_id)
    installed = programme.installed.get((phase.id or 0, room_id)) if phase else None
    if at is None:
        if installed is not None and installed.reached:
            return "waiting", ""
        missing = sorted(d.id for d in devices if d.id not in first_healthy)
        return "review", (
            f"classroom {room_id} reports but has no installed milestone, and not every device "
            f"has been healthy yet (waiting for {', '.join(missing)}): check the installation"
        )
    if phase is None:
        return "review", (
            f"every device of classroom {room_id} has been healthy since {at.isoformat()}, but "
            f"the classroom is in no phase: add it to a phase of site {site_code}"
        )
    proof = {
        "source": DEVICE_EVIDENCE,
        "all_healthy_at": at.isoformat(),
        "devices": dict(first_healthy),
    }
    if installed is not None and installed.reached:
        installed.evidence = {**(installed.evidence or {}), "devices_healthy": proof}
        session.add(installed)
        return "attached", ""
    site = session.get(Site, site_code)
    assert site is not None
    planned = installed.planned if installed else None
    facts = MilestoneFacts(
        milestone=MilestoneName.installed,
        planned=planned,
        actual=site_today(site, at),
        reached=True,
    )
    note = installed.note if installed and installed.note else "confirmed by device readings"
    given = MilestoneInput(facts=facts, note=note, evidence={"devices_healthy": proof})
    try:
        write_milestone(
            session,
            site,
            phase,
            room_id,
            given,
            recorded_by=DEVICE_EVIDENCE,
            now=now,
            mode="upsert",
        )
    except ProgrammeError as exc:
        return "review", (
            f"every device of classroom {room_id} has been healthy since {at.isoformat()}, but "
            f"installed cannot be confirmed: {exc.message}"
        )
    _phase_installed_when_every_classroom_is(session, site, phase, now)
    return "confirmed", ""


def _phase_installed_when_every_classroom_is(
    session: Session, site: Site, phase: Phase, now: datetime
) -> None:
    """The phase's own `installed` milestone sums its classrooms up: once device readings
    confirmed every one, it is reached too, on the last classroom's date, so that the phase
    is neither overdue nor late for want of a record nobody had to write."""
    rooms = set(session.exec(select(PhaseRoom.room_id).where(PhaseRoom.phase_id == phase.id)))
    installed = MilestoneName.installed.value
    records = {
        r.room_id: r
        for r in session.exec(
            select(MilestoneRecord).where(
                MilestoneRecord.phase_id == phase.id, MilestoneRecord.milestone == installed
            )
        )
    }
    own = records.get(PHASE_ITSELF)
    if not rooms or (own is not None and own.reached):
        return
    if not all(room in records and records[room].reached for room in rooms):
        return
    days = [d for d in (records[room].actual for room in rooms) if d is not None]
    facts = MilestoneFacts(
        milestone=MilestoneName.installed,
        planned=own.planned if own is not None else None,
        actual=max(days) if days else site_today(site, now),
        reached=True,
    )
    note = own.note if own is not None and own.note else "every classroom confirmed by devices"
    given = MilestoneInput(facts=facts, note=note, evidence={"classrooms_confirmed": sorted(rooms)})
    try:
        write_milestone(
            session, site, phase, PHASE_ITSELF, given, recorded_by=DEVICE_EVIDENCE, now=now,
            mode="upsert",
        )  # fmt: skip
    except ProgrammeError as exc:  # the classrooms stay confirmed; the phase is for ops
        log.warning("programme: phase %s of %s not marked installed: %s", phase.number,
                    site.code, exc.message)  # fmt: skip
