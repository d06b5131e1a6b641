"""One device's page: latest reading, charts from its samples, alerts, firmware history, and
its power and input commands (the power schedule's notes and actions with their reasons),
with the buttons that send one (fleet/web/power_forms.py) for the actions the device takes."""

from __future__ import annotations

import gettext
import math
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from babel.dates import format_timedelta
from babel.numbers import format_decimal
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlmodel import Session

from fleet.alerts.queries import recent_alerts_of_device, unacknowledged_alerts_by_device
from fleet.alerts.silences import active, covering, silenced_now
from fleet.api.deps import SessionDep, SettingsDep
from fleet.auth.permissions import Allow
from fleet.commands.requested import control_problem, profiles, recent_commands
from fleet.models import Device, Room, Site
from fleet.protocol.messages import DEVICE_ID_PATTERN, CommandKind, utcnow
from fleet.protocol.zones import UnknownZone, zone_named
from fleet.web.charts import line_chart, power_band
from fleet.web.device_history import (
    DEFAULT_WINDOW,
    WINDOWS,
    firmware_history,
    history,
    newest_sample_at,
)
from fleet.web.i18n import babel_locale, language_of, translations, zone_choice
from fleet.web.not_found import PageNotFound
from fleet.web.templating import local_text, render
from fleet.web.viewer import Viewer, ViewerDep
from fleet.web.words import FIELDS, POWER, word

router = APIRouter(include_in_schema=False)

# Reading fields shown in the "latest reading" table, in this order (labels: fleet.web.words).
READING_FIELDS = (
    "ts",
    "reachable",
    "power",
    "input",
    "temperature_c",
    "lamp_hours",
    "filter_hours",
    "uptime_s",
    "firmware",
    "error",
    "collectors",
)


def make_and_model(vendor: str, model: str) -> str:
    """ "Seewo interactive flat panel", not "Seewo Seewo interactive flat panel": a model name
    that already starts with its make is not given the make twice."""
    if not vendor or model.casefold().startswith(vendor.casefold()):
        return model
    return f"{vendor} {model}"


@router.get(
    "/devices/{device_id}", response_class=HTMLResponse, dependencies=[Allow("devices:read")]
)
def device_page(
    device_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    viewer: ViewerDep,
    window: Annotated[str, Query(max_length=8)] = DEFAULT_WINDOW,
    partial: bool = False,
) -> HTMLResponse:
    return device_view(
        request, session, viewer, settings.profiles_dir, device_id, window, partial=partial
    )


def device_view(
    request: Request,
    session: Session,
    viewer: Viewer,
    profiles_dir: Path,
    device_id: str,
    window: str = DEFAULT_WINDOW,
    *,
    partial: bool = False,
    problem: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    """The device page (or its refreshing part); `problem`: why a command from its forms was
    not sent, said on the page with `status_code` (422). Raises PageNotFound."""
    # An id no device can have is not looked up (PostgreSQL's text holds no NUL, say).
    device = session.get(Device, device_id) if re.fullmatch(DEVICE_ID_PATTERN, device_id) else None
    if device is None:
        raise PageNotFound(
            f"There is no device {device_id!r}.", "Open its site from the overview to find it."
        )
    if window not in WINDOWS:
        window = DEFAULT_WINDOW
    site = session.get(Site, device.site_code)
    room = session.get(Room, device.room_id)
    zone = _zone(site)
    shown = zone_choice(request) or zone  # the zone the page's times are in
    newest = newest_sample_at(session, device.id)
    charts = None
    if newest is not None:
        h = history(session, device.id, newest, WINDOWS[window])
        charts = {
            "history": h,
            "temperature": line_chart(
                h.temperature, title="Temperature", unit="°", start=h.start, end=h.end, zone=shown
            ),
            "power": power_band(h.power, title="Power", start=h.start, end=h.end, zone=shown),
            "lamp": line_chart(
                h.lamp_hours, title="Lamp hours", unit="", start=h.start, end=h.end, zone=shown
            )
            if h.lamp_hours
            else None,
        }
    reading = device.last_reading or {}
    alerts = recent_alerts_of_device(session, device.id)
    now = utcnow()
    # Power and input commands, the schedule's notes among them: staff only (vendors hold
    # devices:read but not devices:command).
    commands = recent_commands(session, device.id, 20) if viewer.may("devices:command") else None
    lang = language_of(request)
    t = translations(lang)
    fields = [
        (word(t, FIELDS, key), _shown(key, reading.get(key), t, shown, lang))
        for key in READING_FIELDS
    ]
    return render(
        request,
        "_device.html" if partial else "device.html",
        lang=lang,
        viewer=viewer,
        device=device,
        make_model=make_and_model(device.vendor, device.model),
        site=site,
        zone=zone,
        room=room,
        reading=reading,
        reading_fields=[(label, value) for label, value in fields if value is not None],
        open_alerts=unacknowledged_alerts_by_device(
            session, getattr(request.state, "caller", None), device.site_code
        ).get(device.id),
        error_flags=reading.get("errors") or {},
        metrics=reading.get("metrics") or {},
        charts=charts,
        window=window,
        windows=list(WINDOWS),
        firmware=firmware_history(session, device.id),
        alerts=alerts,
        commands=commands,
        # Refreshed more often while a command waits for its answer.
        pending=any(c.state == "sent" for c in commands or []),
        controls=_controls(profiles_dir, device) if commands is not None else None,
        problem=problem,
        status_code=status_code,
        # Its alerts a silence mutes now, and the silence on the device itself: shown in
        # words (🔇 and "Silenced"), not only by colour.
        silenced=silenced_now(
            session.connection(), [(a.id or 0, a.site_code, a.device_id) for a in alerts], now
        ),
        device_silence=covering(
            active(session.connection(), now), device.site_code, device.room_id, device.id
        ),
        silence_link="/silences?"
        + urlencode({"site": device.site_code, "device": device.id})
        + "#new",
    )


def _controls(profiles_dir: Path, device: Device) -> dict[str, Any] | None:
    """What the page offers to switch: power, input (with the inputs to pick from), or None
    when the device takes neither (fleet.commands.requested says the same to the API)."""
    if device.retired_at is not None:
        return None
    book = profiles(profiles_dir)
    power = control_problem(book, device, CommandKind.power) is None
    takes_input = control_problem(book, device, CommandKind.input) is None
    if not power and not takes_input:
        return None
    profile = book.get(device.profile)
    inputs = profile.input_names() if profile is not None and takes_input else []
    return {"power": power, "input": takes_input, "inputs": inputs}


NUMBERS = ("temperature_c", "lamp_hours", "filter_hours", "uptime_s")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _zone(site: Site | None) -> ZoneInfo:
    try:
        return zone_named(site.timezone) if site is not None else ZoneInfo("UTC")
    except UnknownZone:
        return ZoneInfo("UTC")


def _shown(
    key: str,
    value: Any,
    t: gettext.NullTranslations | None = None,
    zone: ZoneInfo | None = None,
    lang: str = "en",
) -> str | None:
    """A reading's value as a person reads it, in the page's language and the site's zone;
    None when the device did not report it. The reading is whatever was stored, from before
    ingest checked values too: a number that is not one (NaN, Infinity, text) is shown as
    given, not computed with."""
    t = t or gettext.NullTranslations()
    if value is None:
        return None
    locale = babel_locale(lang)
    if key == "ts":
        try:
            return local_text(datetime.fromisoformat(value), zone or ZoneInfo("UTC"), lang)
        except (TypeError, ValueError, OverflowError):
            return str(value)
    if key == "reachable":
        return t.gettext("yes") if value else t.gettext("no")
    if key == "power":
        return word(t, POWER, str(value))
    if key in NUMBERS and not _finite(value):
        return t.gettext("%(value)s (not a number a device can report)") % {"value": value}
    if key == "uptime_s":
        return format_timedelta(timedelta(seconds=int(value)), threshold=1.5, locale=locale)
    if key in ("lamp_hours", "filter_hours"):
        return f"{format_decimal(value, format='#,##0', locale=locale)} h"
    if key == "temperature_c":
        return format_decimal(value, format="#,##0.0", locale=locale)
    if key == "collectors" and isinstance(value, dict):
        # The profile's collectors in chain order, and which answered this reading.
        return ", ".join(
            f"{name} {t.gettext('answered') if ok else t.gettext('no answer')}"
            for name, ok in value.items()
        )
    return str(value)
