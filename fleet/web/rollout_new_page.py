"""The New rollout page: ops choose a release, targets, waves, thresholds and a maintenance
window, preview the devices it will touch by wave, then create it.

The form is read into the API's own body (`RolloutRequest`) and judged by the rollouts
domain's `propose`, the function `POST /api/v1/rollouts` and `POST /api/v1/rollouts/preview`
call, so what the preview shows is what creation stores. A value the API would refuse is said
on the page (422), and nothing is created.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlmodel import Session, col, select

from fleet.api.deps import SessionDep, SettingsDep
from fleet.auth.permissions import Allow
from fleet.devices.profile_book import profiles_in
from fleet.models import Site
from fleet.protocol.messages import utcnow
from fleet.protocol.profiles import Profile
from fleet.rollouts.campaigns import RolloutRefused, create_rollout
from fleet.rollouts.proposal import preview_out, propose
from fleet.rollouts.schemas import RolloutPreviewOut, RolloutRequest
from fleet.settings import Settings
from fleet.web.i18n import language_of, translations, zone_choice
from fleet.web.templating import render
from fleet.web.viewer import ViewerDep
from fleet.web.words import N_

router = APIRouter(include_in_schema=False)

# The form's fields, their defaults (the API's), and how the page names them in a reason.
DEFAULTS: dict[str, str] = {
    "name": "",
    "release": "",
    "vendor": "",
    "model": "",
    "current_versions": "",
    "waves": "1, 100%",
    "success_threshold_pct": "90",
    "abort_min_done": "3",
    "abort_failure_pct": "20",
    "device_timeout_min": "30",
    "max_retries": "1",
    "margin_min": "30",
    "night_start": "22:00",
    "night_end": "06:00",
    "start": "draft",
    "start_at": "",
}
CHECKBOXES = ("pause_for_approval", "nights_only", "weekends_only")
LABELS = {
    "name": N_("Name"),
    "release_version": N_("Release"),
    "release": N_("Release"),
    "targets": N_("Targets"),
    "sites": N_("Sites"),
    "vendor": N_("Vendor"),
    "model": N_("Model"),
    "current_versions": N_("Only devices on versions"),
    "waves": N_("Waves"),
    "success_threshold_pct": N_("Success threshold (%)"),
    "abort_min_done": N_("Abort after at least this many are done"),
    "abort_failure_pct": N_("Abort above this failure rate (%)"),
    "device_timeout_s": N_("Device timeout (minutes)"),
    "device_timeout_min": N_("Device timeout (minutes)"),
    "max_retries": N_("Retries per device"),
    "window": N_("Maintenance window"),
    "margin_min": N_("Clear of classes by (minutes)"),
    "night_start": N_("Night from"),
    "night_end": N_("Night until"),
    "start": N_("Start"),
    "start_at": N_("Start at"),
}
FIELD_CHARS = 10_000  # one form value: above the API's own bounds, it only caps the work


@dataclass
class RolloutForm:
    """The form as sent, kept to fill it in again, and what it makes: the API's body, or the
    reasons it cannot be one."""

    values: dict[str, str] = field(default_factory=lambda: dict(DEFAULTS))
    sites: list[str] = field(default_factory=list)
    checked: set[str] = field(default_factory=set)
    body: RolloutRequest | None = None
    problems: list[str] = field(default_factory=list)


async def read_form(request: Request) -> dict[str, list[str]]:
    """A POSTed form's values by name, every value of a repeated name kept."""
    form = await request.form()
    out: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            out.setdefault(key, []).append(value)
    return out


FormDep = Annotated[dict[str, list[str]], Depends(read_form)]


def _numbers(text: str) -> str | None:
    # An empty field takes the API's default rather than failing as "not a number".
    stripped = text.strip()
    return stripped or None


def _waves(text: str) -> tuple[list[dict[str, str]], list[str]]:
    """Waves written as "1, 10%, 100%": each a count, or the share of all targets reached by
    the wave's end (the API's {"count"} and {"percent"})."""
    waves, problems = [], []
    for index, item in enumerate(p.strip() for p in text.split(",") if p.strip()):
        if item.endswith("%"):
            waves.append({"percent": item[:-1].strip()})
        elif item.lstrip("+-").isdigit():
            waves.append({"count": item})
        else:
            problems.append(
                f"wave {index + 1}: {item[:40]!r} is neither a count (10) nor a share (10%)"
            )
    return waves, problems


def _start_at(text: str, zone: ZoneInfo) -> str:
    """A datetime-local value (no zone) read in the zone the page names beside the field."""
    try:
        naive = datetime.fromisoformat(text.strip())
    except ValueError:
        return text  # the API's own validation says what is wrong with it
    return (naive if naive.tzinfo else naive.replace(tzinfo=zone)).isoformat()


def parse_form(
    fields: dict[str, list[str]], releases: dict[str, tuple[Profile, str]], zone: ZoneInfo
) -> RolloutForm:
    """The API's body from the form's fields, or the reasons it is none (English, as the API
    gives them, each prefixed by the field's label key)."""
    form = RolloutForm()
    for key in DEFAULTS:
        if key in fields:
            value = fields[key][-1]
            if len(value) > FIELD_CHARS:
                # Refused, not cut: a list of versions cut short would target other devices.
                form.problems.append(f"{key}: longer than {FIELD_CHARS} characters")
            form.values[key] = value[:FIELD_CHARS]
    form.sites = [s[:FIELD_CHARS] for s in fields.get("sites", [])][:2000]
    form.checked = {c for c in CHECKBOXES if fields.get(c)}
    values = form.values
    chosen = releases.get(values["release"])
    if chosen is None:
        shown = values["release"][:60] or "none"
        form.problems.append(f"release: unknown release {shown!r}: choose one of the list")
    waves, wave_problems = _waves(values["waves"])
    form.problems += [f"waves: {p}" for p in wave_problems]
    timeout = _numbers(values["device_timeout_min"])
    try:
        timeout_s: Any = float(timeout) * 60 if timeout is not None else None
    except ValueError:
        timeout_s = timeout  # the API's validation names it
    body: dict[str, Any] = {
        "name": values["name"].strip(),
        "release_version": chosen[1] if chosen else "0",
        "targets": {
            "profile": chosen[0].id if chosen else None,
            "vendor": values["vendor"].strip() or None,
            "model": values["model"].strip() or None,
            "sites": form.sites,
            "current_versions": [
                v.strip() for v in values["current_versions"].split(",") if v.strip()
            ],
        },
        "waves": waves,
        "pause_for_approval": "pause_for_approval" in form.checked,
        "window": {
            "nights_only": "nights_only" in form.checked,
            "weekends_only": "weekends_only" in form.checked,
        },
        "start": values["start"] in ("now", "at"),
    }
    for key in ("success_threshold_pct", "abort_min_done", "abort_failure_pct", "max_retries"):
        if (number := _numbers(values[key])) is not None:
            body[key] = number
    if timeout_s is not None:
        body["device_timeout_s"] = timeout_s
    for key in ("margin_min", "night_start", "night_end"):
        if (text := _numbers(values[key])) is not None:
            body["window"][key] = text
    if values["start"] == "at":
        body["start_at"] = _start_at(values["start_at"], zone)
    elif values["start"] not in ("draft", "now"):
        form.problems.append("start_at: choose draft, now, or a time")
    try:
        form.body = RolloutRequest.model_validate(body)
    except ValidationError as exc:
        for error in exc.errors():
            loc = [str(p) for p in error["loc"]]
            key = next((p for p in reversed(loc) if p in LABELS), loc[0] if loc else "")
            where = f" (wave {int(loc[1]) + 1})" if loc[:1] == ["waves"] and len(loc) > 1 else ""
            message = error["msg"]
            if key == "device_timeout_s":
                message = "give minutes from 0 to 43200 (30 days)"
            form.problems.append(f"{key}: {message}{where}")
    if form.problems:
        form.body = None
    return form


def known_releases(settings: Settings) -> dict[str, tuple[Profile, str]]:
    """ "profile/version" -> (profile, version), every release of every profile."""
    return {
        f"{p.id}/{r.version}": (p, r.version)
        for p in profiles_in(settings.profiles_dir).values()
        for r in p.releases
    }


def _zone(request: Request) -> ZoneInfo:
    return zone_choice(request) or ZoneInfo("UTC")


def _page(
    request: Request,
    session: Session,
    settings: Settings,
    viewer: object,
    form: RolloutForm,
    preview: RolloutPreviewOut | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    t = translations(language_of(request))
    problems = []
    for problem in form.problems:
        key, _, text = problem.partition(": ")
        label = LABELS.get(key)
        problems.append(f"{t.gettext(label)}: {text}" if label else problem)
    if status_code == 422:
        request.state.audit_outcome = "failed 422"
    return render(
        request,
        "rollout_new.html",
        status_code=status_code,
        viewer=viewer,
        form=form,
        problems=problems,
        releases=known_releases(settings),
        sites=list(session.exec(select(Site.code, Site.name).order_by(col(Site.code)))),
        start_zone=_zone(request).key,
        preview=preview,
        labels=LABELS,
    )


@router.get("/rollouts/new", response_class=HTMLResponse, dependencies=[Allow("rollouts:write")])
def new_rollout_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    viewer: ViewerDep,
    preview: bool = False,
) -> HTMLResponse:
    """The form with the API's defaults; with `preview=1` and the form's fields in the query,
    the devices the rollout would touch by wave, or why it would be refused. Stores nothing."""
    if not preview:
        return _page(request, session, settings, viewer, RolloutForm())
    fields: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        fields.setdefault(key, []).append(value)
    form = parse_form(fields, known_releases(settings), _zone(request))
    if form.body is None:
        return _page(request, session, settings, viewer, form, status_code=422)
    proposal = propose(
        session, profiles_in(settings.profiles_dir), settings.artifact_store(), form.body
    )
    return _page(request, session, settings, viewer, form, preview=preview_out(proposal))


@router.post("/rollouts/new", dependencies=[Allow("rollouts:write")])
def create_from_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    viewer: ViewerDep,
    fields: FormDep,
) -> Response:
    """The preview's Create button: what `POST /api/v1/rollouts` does, audited alike; a value
    or a rollout the API would refuse is said on the page (422) and nothing is stored."""
    form = parse_form(fields, known_releases(settings), _zone(request))
    if form.body is None:
        return _page(request, session, settings, viewer, form, status_code=422)
    profiles = profiles_in(settings.profiles_dir)
    try:
        rollout = create_rollout(session, profiles, settings.artifact_store(), form.body, utcnow())
    except RolloutRefused as exc:
        session.rollback()
        form.problems = [f"rollout refused: {r}" for r in exc.reasons]
        proposal = propose(session, profiles, settings.artifact_store(), form.body)
        return _page(
            request, session, settings, viewer, form, preview_out(proposal), status_code=422
        )
    return RedirectResponse(f"/rollouts#rollout-{rollout.id}", status_code=303)
