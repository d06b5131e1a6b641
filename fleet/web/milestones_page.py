"""One site's programme: its phases, their classrooms and milestones, with each milestone's
evidence; and, for ops, the forms that record a milestone and correct one.

Read as `GET /api/v1/sites/{code}/phases` reads it (`programme:read`: ops, and a technician of
the site); written as `POST .../phases/{n}/milestones` and `PATCH .../milestones/{name}` write
(`programme:write`: ops only), through the same domain functions (fleet.programme.records),
validated by the same body models (fleet.programme.schemas) and audited alike: the page's
routes carry the API routes' names, so the audit log reads `programme.post_milestone` and
`programme.patch_milestone` whichever was used. A milestone is corrected in place, as through
the API; the audit log keeps who changed it and when.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ValidationError
from sqlmodel import Session

from fleet.api.deps import SessionDep
from fleet.auth.permissions import Allow, Caller
from fleet.models import Site
from fleet.programme.milestones import MilestoneFacts, MilestoneName, is_overdue
from fleet.programme.models import PHASE_ITSELF, MilestoneRecord, Phase
from fleet.programme.records import (
    MilestoneInput,
    ProgrammeError,
    WriteMode,
    changed_input,
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
from fleet.programme.schemas import MAX_PHASE_NUMBER, MilestoneCreate, MilestonePatch
from fleet.protocol.messages import CONTROL_RE, DEVICE_ID_PATTERN, SITE_CODE_PATTERN, utcnow
from fleet.web.not_found import PageNotFound
from fleet.web.templating import render
from fleet.web.viewer import Viewer, ViewerDep

router = APIRouter(include_in_schema=False)

# Evidence is typed as lines of `name: value`; these bound what one form may carry.
MAX_EVIDENCE_LINES = 20
MAX_EVIDENCE_NAME = 64
MAX_EVIDENCE_VALUE = 500
_WHOLE_NUMBER = re.compile(r"^-?[0-9]{1,15}$")
FormText = Annotated[str, Form()]  # unbounded here: the body models bound them, said on the page


class EvidenceRefused(ValueError):
    """Evidence lines that cannot be kept; the message says which line and why."""


def parse_evidence(text: str) -> dict[str, Any]:
    """The evidence typed in the form, one `name: value` a line (`trained: 25`, `report:
    https://…`, `photos: share/upm/phase1`), as the API's `evidence` object: a whole number
    stays a number, anything else text. Blank lines are skipped. Raises EvidenceRefused on a
    line with no name, a control character, a name given twice, or past the bounds."""
    found: dict[str, Any] = {}
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > MAX_EVIDENCE_LINES:
        raise EvidenceRefused(f"{len(lines)} lines: at most {MAX_EVIDENCE_LINES}")
    for number, line in enumerate(lines, 1):
        if CONTROL_RE.search(line):
            raise EvidenceRefused(f"line {number} holds a control character")
        name, colon, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not colon or not name:
            raise EvidenceRefused(f"line {number} is not 'name: value'")
        if len(name) > MAX_EVIDENCE_NAME or len(value) > MAX_EVIDENCE_VALUE:
            raise EvidenceRefused(
                f"line {number} is too long: a name of at most {MAX_EVIDENCE_NAME} characters, "
                f"a value of at most {MAX_EVIDENCE_VALUE}"
            )
        if name in found:
            raise EvidenceRefused(f"line {number}: {name!r} is given twice")
        found[name] = int(value) if _WHOLE_NUMBER.match(value) else value
    return found


def evidence_lines(evidence: dict[str, Any] | None) -> list[tuple[str, str]]:
    """A milestone's evidence as the page lists it: name and value, a structure (what the
    devices showed) as compact JSON."""
    shown = []
    for name, value in sorted((evidence or {}).items()):
        if isinstance(value, dict | list):
            value = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
        shown.append((str(name), str(value)))
    return shown


def _site_or_404(session: Session, code: str) -> Site:
    if re.fullmatch(SITE_CODE_PATTERN, code):
        try:
            return get_site(session, code)
        except ProgrammeError:
            pass
    raise PageNotFound(f"There is no site {code!r}.", "The overview lists every site.")


def _phase_or_404(session: Session, site: Site, phase: str) -> Phase:
    if phase.isascii() and phase.isdigit() and 1 <= int(phase) <= MAX_PHASE_NUMBER:
        try:
            return get_phase(session, site.code, int(phase))
        except ProgrammeError:
            pass
    raise PageNotFound(
        f"Site {site.code} has no phase {phase!r}.", f"/programme/{site.code} lists its phases."
    )


def _page(
    request: Request,
    session: Session,
    viewer: Viewer,
    site: Site,
    *,
    problem: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    today = site_today(site, utcnow())
    order = list(MilestoneName)
    phases = []
    for phase in phases_of(session, site.code):
        records = sorted(
            milestones_of(session, phase),
            key=lambda r: (r.room_id, order.index(MilestoneName(r.milestone))),
        )
        phases.append(
            {
                "phase": phase,
                "rooms": rooms_of(session, phase),
                "milestones": [
                    {
                        "record": r,
                        "overdue": is_overdue(facts_of(r), today),
                        "evidence": evidence_lines(r.evidence),
                    }
                    for r in records
                ],
            }
        )
    return render(
        request,
        "site_programme.html",
        status_code=status_code,
        viewer=viewer,
        site=site,
        zone=site.timezone,
        today=today,
        phases=phases,
        milestone_names=[m.value for m in order],
        problem=problem,
    )


@router.get("/programme/{code}", response_class=HTMLResponse)
def site_programme_page(
    code: str,
    request: Request,
    session: SessionDep,
    # Before the viewer: the permission is what identifies the caller the viewer is made of.
    caller: Annotated[Caller, Allow("programme:read")],
    viewer: ViewerDep,
) -> HTMLResponse:
    return _page(request, session, viewer, _site_or_404(session, code))


def _refused_on_page(
    request: Request, session: Session, viewer: Viewer, site: Site, reason: str, status: int
) -> HTMLResponse:
    session.rollback()
    request.state.audit_outcome = f"failed {status}"
    return _page(request, session, viewer, site, problem=reason, status_code=status)


def _reasons(exc: ValidationError) -> str:
    return "; ".join(f"{e['loc'][-1] if e['loc'] else 'form'}: {e['msg']}" for e in exc.errors())


def _validated(
    model: type[BaseModel], fields: dict[str, Any], evidence: str
) -> tuple[BaseModel | None, str]:
    """The form as the API's body model takes it, or the reason it does not."""
    try:
        if evidence.strip():
            fields["evidence"] = parse_evidence(evidence)
        return model.model_validate(fields), ""
    except EvidenceRefused as exc:
        return None, f"evidence: {exc}"
    except ValidationError as exc:
        return None, _reasons(exc)


def _date(value: str) -> str | None:
    return value.strip() or None  # an empty date field: no date


def _write(
    request: Request,
    session: Session,
    caller: Caller,
    viewer: Viewer,
    site: Site,
    phase: Phase,
    room_id: str,
    given: MilestoneInput,
    mode: WriteMode,
) -> Response:
    try:
        record = write_milestone(
            session,
            site,
            phase,
            room_id,
            given,
            recorded_by=caller.name,
            now=utcnow(),
            mode=mode,
        )
    except ProgrammeError as exc:
        return _refused_on_page(
            request, session, viewer, site, f"{exc.field}: {exc.message}", exc.status
        )
    session.commit()
    return RedirectResponse(f"/programme/{site.code}#{_anchor(record, phase)}", status_code=303)


def _anchor(record: MilestoneRecord, phase: Phase) -> str:
    return f"m-{phase.number}-{record.room_id or 'phase'}-{record.milestone}"


# Named as the API's routes, so that the audit entry (`programme.<route name>`) is the same.
@router.post("/programme/{code}/phases/{phase}/milestones", name="post_milestone")
def record_milestone_from_page(
    code: str,
    phase: str,
    request: Request,
    session: SessionDep,
    caller: Annotated[Caller, Allow("programme:write")],
    viewer: ViewerDep,
    milestone: FormText = "",
    room: FormText = "",
    planned: FormText = "",
    actual: FormText = "",
    actual_end: FormText = "",
    reached: FormText = "",
    note: FormText = "",
    evidence: FormText = "",
    correction: FormText = "",
) -> Response:
    """The phase's "Record a milestone" form: what `POST /api/v1/sites/{code}/phases/{n}/
    milestones` does. Refused input is said on the page (422, or 409 when it is recorded
    already), and nothing is written."""
    site = _site_or_404(session, code)
    found = _phase_or_404(session, site, phase)
    fields: dict[str, Any] = {
        "milestone": milestone,
        "room": room or None,
        "planned": _date(planned),
        "actual": _date(actual),
        "actual_end": _date(actual_end),
        "reached": bool(reached),
        "note": note,
        "correction": bool(correction),
    }
    body, problem = _validated(MilestoneCreate, fields, evidence)
    if not isinstance(body, MilestoneCreate):
        return _refused_on_page(request, session, viewer, site, problem, 422)
    facts = MilestoneFacts(
        milestone=body.milestone,
        planned=body.planned,
        actual=body.actual,
        actual_end=body.actual_end,
        reached=body.reached,
    )
    given = MilestoneInput(facts, body.note, body.evidence, body.correction)
    room_id = body.room or PHASE_ITSELF
    return _write(request, session, caller, viewer, site, found, room_id, given, "create")


@router.post("/programme/{code}/phases/{phase}/milestones/{milestone_name}", name="patch_milestone")
def correct_milestone_from_page(
    code: str,
    phase: str,
    milestone_name: str,
    request: Request,
    session: SessionDep,
    caller: Annotated[Caller, Allow("programme:write")],
    viewer: ViewerDep,
    room: FormText = "",
    planned: FormText = "",
    actual: FormText = "",
    actual_end: FormText = "",
    reached: FormText = "",
    note: FormText = "",
    evidence: FormText = "",
    correction: FormText = "",
) -> Response:
    """A milestone's "Correct" form: what `PATCH /api/v1/sites/{code}/phases/{n}/milestones/
    {name}` does with every field given (the form shows them all; an emptied date clears it)
    and the evidence lines added to what is recorded. Refused input is said on the page."""
    site = _site_or_404(session, code)
    found = _phase_or_404(session, site, phase)
    if milestone_name not in MilestoneName.__members__:
        raise PageNotFound(
            f"There is no milestone {milestone_name!r}.", f"/programme/{site.code} lists them."
        )
    # A room no classroom can have (a NUL, which PostgreSQL cannot even look up) is none.
    known_room = room == PHASE_ITSELF or re.fullmatch(DEVICE_ID_PATTERN, room) is not None
    name = MilestoneName(milestone_name)
    current = find_milestone(session, found, room, name) if known_room else None
    if current is None:
        where = f"phase {found.number}" + (f" classroom {room!r}" if room else "")
        raise PageNotFound(
            f"{milestone_name} of {where} is not recorded yet.",
            f"/programme/{site.code} lists what is.",
        )
    fields: dict[str, Any] = {
        "planned": _date(planned),
        "actual": _date(actual),
        "actual_end": _date(actual_end),
        "reached": bool(reached),
        "note": note,
        "correction": bool(correction),
    }
    body, problem = _validated(MilestonePatch, fields, evidence)
    if not isinstance(body, MilestonePatch):
        return _refused_on_page(request, session, viewer, site, problem, 422)
    given = changed_input(current, body.model_dump(exclude_unset=True))
    return _write(request, session, caller, viewer, site, found, current.room_id, given, "update")
