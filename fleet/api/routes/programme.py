"""The installation programme: phases and milestones per site, the fleet overview, CSV, timeline.

Writes go through fleet.programme.records in one transaction per request: a refusal leaves
nothing written. Refusals answer 4xx with FastAPI's error shape, naming the field at fault.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from sqlmodel import Session

from fleet.api.deps import SessionDep
from fleet.api.params import RoomFilter, SiteCodePath, SiteFilter, day_query
from fleet.auth.permissions import Allow
from fleet.exports import content_disposition
from fleet.models import Site
from fleet.programme.csv_records import export_programme_csv, import_programme_csv
from fleet.programme.milestones import MilestoneFacts, MilestoneName, is_overdue
from fleet.programme.models import PHASE_ITSELF, MilestoneRecord, Phase
from fleet.programme.overview import located_milestones
from fleet.programme.queries import site_programmes
from fleet.programme.records import (
    MilestoneInput,
    ProgrammeError,
    WriteMode,
    changed_input,
    create_phase,
    facts_of,
    find_milestone,
    get_phase,
    get_site,
    milestones_of,
    phases_of,
    rooms_of,
    site_today,
    write_milestone,
)
from fleet.programme.schemas import (
    MAX_PHASE_NUMBER,
    ImportResult,
    MilestoneCreate,
    MilestoneOut,
    MilestonePatch,
    PhaseCreate,
    PhaseOut,
    SiteProgramme,
)
from fleet.programme.timeline import Timeline, build_timeline, timeline_json, timeline_svg
from fleet.protocol.messages import utcnow
from fleet.time_window import Day

router = APIRouter(prefix="/api/v1", tags=["programme"])

PATH_FIELDS = ("code", "phase", "milestone_name")
PhaseNumberPath = Annotated[
    int, Path(ge=1, le=MAX_PHASE_NUMBER, description=f"a phase number, 1 to {MAX_PHASE_NUMBER}")
]


def ops_recorder(request: Request) -> str:
    """Who records: the caller the route's `programme:write` permission let in."""
    caller = getattr(request.state, "caller", None)
    return str(getattr(caller, "name", "ops"))


OpsRecorder = Annotated[str, Depends(ops_recorder)]


def refused(exc: ProgrammeError, where: str | None = None) -> HTTPException:
    """The refusal as FastAPI's 422 shape, located at the field at fault: in the path, or in
    the body (always, for `where="body"`: a CSV's columns)."""
    where = where or ("path" if exc.field in PATH_FIELDS else "body")
    detail = [{"loc": [where, exc.field], "msg": exc.message, "type": "programme"}]
    return HTTPException(exc.status, detail=detail)


@router.get(
    "/sites/{code}/phases", response_model=list[PhaseOut], dependencies=[Allow("programme:read")]
)
def list_phases(code: SiteCodePath, session: SessionDep) -> list[PhaseOut]:
    try:
        site = get_site(session, code)
    except ProgrammeError as exc:
        raise refused(exc) from None
    return [_phase_out(session, site, phase) for phase in phases_of(session, code)]


@router.post(
    "/sites/{code}/phases",
    response_model=PhaseOut,
    status_code=201,
    dependencies=[Allow("programme:write")],
)
def post_phase(
    code: SiteCodePath, body: PhaseCreate, session: SessionDep, who: OpsRecorder
) -> PhaseOut:
    try:
        site = get_site(session, code)
        phase = create_phase(
            session,
            site,
            number=body.phase,
            name=body.name,
            rooms=body.rooms,
            recorded_by=who,
            now=utcnow(),
        )
    except ProgrammeError as exc:
        raise refused(exc) from None
    session.commit()
    return _phase_out(session, site, phase)


@router.post(
    "/sites/{code}/phases/{phase}/milestones",
    response_model=MilestoneOut,
    status_code=201,
    dependencies=[Allow("programme:write")],
)
def post_milestone(
    code: SiteCodePath,
    phase: PhaseNumberPath,
    body: MilestoneCreate,
    session: SessionDep,
    who: OpsRecorder,
) -> MilestoneOut:
    facts = MilestoneFacts(
        milestone=body.milestone,
        planned=body.planned,
        actual=body.actual,
        actual_end=body.actual_end,
        reached=body.reached,
    )
    given = MilestoneInput(facts, body.note, body.evidence, body.correction)
    return _write(session, code, phase, body.room or PHASE_ITSELF, given, who, "create")


@router.patch(
    "/sites/{code}/phases/{phase}/milestones/{milestone_name}",
    response_model=MilestoneOut,
    dependencies=[Allow("programme:write")],
)
def patch_milestone(
    code: SiteCodePath,
    phase: PhaseNumberPath,
    milestone_name: MilestoneName,
    body: MilestonePatch,
    session: SessionDep,
    who: OpsRecorder,
    room: RoomFilter = None,
) -> MilestoneOut:
    room_id = room or PHASE_ITSELF
    try:
        site = get_site(session, code)
        found = get_phase(session, site.code, phase)
    except ProgrammeError as exc:
        raise refused(exc) from None
    current = find_milestone(session, found, room_id, milestone_name)
    if current is None:  # write_milestone says so with the right status and field
        given = MilestoneInput(MilestoneFacts(milestone_name, reached=True))
        return _write(session, code, phase, room_id, given, who, "update")
    given = changed_input(current, body.model_dump(exclude_unset=True))
    return _write(session, code, phase, room_id, given, who, "update")


@router.get("/programme", response_model=list[SiteProgramme], dependencies=[Allow("fleet:read")])
def get_programme(
    session: SessionDep,
    as_of: Annotated[Day | None, day_query("judge lateness on this day")] = None,
) -> list[SiteProgramme]:
    return site_programmes(session, utcnow(), as_of)


@router.get("/programme.csv", response_class=Response, dependencies=[Allow("fleet:read")])
def get_programme_csv(
    session: SessionDep,
    site: SiteFilter = None,
    bom: Annotated[
        bool, Query(description="start with a UTF-8 byte order mark, for Excel")
    ] = False,
) -> Response:
    text = export_programme_csv(session, site, bom=bom)
    headers = {"Content-Disposition": content_disposition("programme.csv")}
    return Response(text, media_type="text/csv; charset=utf-8", headers=headers)


MAX_CSV_BYTES = 5 * 1024 * 1024  # some 50,000 rows: far more than a programme holds


@router.post(
    "/programme.csv",
    response_model=ImportResult,
    dependencies=[Allow("programme:write")],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"text/csv": {"schema": {"type": "string", "maxLength": MAX_CSV_BYTES}}},
        }
    },
)
async def post_programme_csv(
    request: Request, session: SessionDep, who: OpsRecorder
) -> ImportResult:
    """Import an export (same columns): creates or overwrites, all rows or none."""
    body = bytearray()
    async for chunk in request.stream():  # read up to the cap, never the whole of a huge body
        body += chunk
        if len(body) > MAX_CSV_BYTES:
            raise HTTPException(413, f"the CSV is over {MAX_CSV_BYTES} bytes: import it in parts")
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        error = ProgrammeError("csv", "the body is not UTF-8 text: send the CSV as UTF-8")
        raise refused(error) from None
    try:
        rows = import_programme_csv(session, text, utcnow())
    except ProgrammeError as exc:
        raise refused(exc, "body") from None
    session.commit()
    return ImportResult(rows=rows)


@router.get("/sites/{code}/timeline", dependencies=[Allow("programme:read")])
def get_timeline(code: SiteCodePath, session: SessionDep) -> dict[str, object]:
    site = _site(session, code)
    return timeline_json(_timeline(session, site))


@router.get(
    "/sites/{code}/timeline.svg", response_class=Response, dependencies=[Allow("programme:read")]
)
def get_timeline_svg(code: SiteCodePath, session: SessionDep) -> Response:
    site = _site(session, code)
    return Response(timeline_svg(_timeline(session, site)), media_type="image/svg+xml")


def _site(session: Session, code: str) -> Site:
    try:
        return get_site(session, code)
    except ProgrammeError as exc:
        raise refused(exc) from None


def _timeline(session: Session, site: Site) -> Timeline:
    return build_timeline(site, located_milestones(session, site.code), site_today(site, utcnow()))


def _write(
    session: Session,
    code: str,
    phase: int,
    room_id: str,
    given: MilestoneInput,
    who: str,
    mode: WriteMode,
) -> MilestoneOut:
    try:
        site = get_site(session, code)
        found = get_phase(session, site.code, phase)
        record = write_milestone(
            session,
            site,
            found,
            room_id,
            given,
            recorded_by=who,
            now=utcnow(),
            mode=mode,
        )
    except ProgrammeError as exc:
        session.rollback()
        raise refused(exc) from None
    session.commit()
    return _milestone_out(record, site_today(site, utcnow()))


def _phase_out(session: Session, site: Site, phase: Phase) -> PhaseOut:
    today = site_today(site, utcnow())
    records = sorted(
        milestones_of(session, phase),
        key=lambda r: (r.room_id, list(MilestoneName).index(MilestoneName(r.milestone))),
    )
    return PhaseOut(
        site=site.code,
        phase=phase.number,
        name=phase.name,
        rooms=rooms_of(session, phase),
        recorded_by=phase.recorded_by,
        recorded_at=phase.recorded_at,
        milestones=[_milestone_out(r, today) for r in records],
    )


def _milestone_out(record: MilestoneRecord, today: date) -> MilestoneOut:
    facts = facts_of(record)
    return MilestoneOut(
        milestone=facts.milestone,
        room=record.room_id or None,
        planned=record.planned,
        actual=record.actual,
        actual_end=record.actual_end,
        reached=record.reached,
        overdue=is_overdue(facts, today),
        note=record.note,
        evidence=record.evidence,
        correction=record.correction,
        recorded_by=record.recorded_by,
        recorded_at=record.recorded_at,
    )
