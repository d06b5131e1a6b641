"""One device's page: latest reading, charts from its samples, alerts, firmware history, and
its power and input commands (the power schedule's notes and actions with their reasons)."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlmodel import col, select

from fleet.alerts.queries import recent_alerts_of_device
from fleet.api.deps import SessionDep
from fleet.auth.permissions import Allow
from fleet.commands.models import DeviceCommand
from fleet.models import Device, Room, Site
from fleet.protocol.messages import DEVICE_ID_PATTERN
from fleet.web.charts import line_chart, power_band
from fleet.web.device_history import (
    DEFAULT_WINDOW,
    WINDOWS,
    firmware_history,
    history,
    newest_sample_at,
)
from fleet.web.not_found import PageNotFound
from fleet.web.templating import render, utc
from fleet.web.viewer import ViewerDep

router = APIRouter(include_in_schema=False)

# Reading fields shown in the "latest reading" table, in this order, with their labels.
READING_FIELDS = (
    ("ts", "Read at"),
    ("reachable", "Reachable"),
    ("power", "Power"),
    ("input", "Input"),
    ("temperature_c", "Temperature (°C)"),
    ("lamp_hours", "Lamp hours"),
    ("filter_hours", "Filter hours"),
    ("uptime_s", "Uptime"),
    ("firmware", "Firmware"),
    ("error", "Error"),
)


@router.get(
    "/devices/{device_id}", response_class=HTMLResponse, dependencies=[Allow("devices:read")]
)
def device_page(
    device_id: str,
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    window: Annotated[str, Query(max_length=8)] = DEFAULT_WINDOW,
    partial: bool = False,
) -> HTMLResponse:
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
    newest = newest_sample_at(session, device.id)
    charts = None
    if newest is not None:
        h = history(session, device.id, newest, WINDOWS[window])
        charts = {
            "history": h,
            "temperature": line_chart(
                h.temperature, title="Temperature", unit="°", start=h.start, end=h.end
            ),
            "power": power_band(h.power, title="Power", start=h.start, end=h.end),
            "lamp": line_chart(h.lamp_hours, title="Lamp hours", unit="", start=h.start, end=h.end)
            if h.lamp_hours
            else None,
        }
    reading = device.last_reading or {}
    shown = [(label, _shown(key, reading.get(key))) for key, label in READING_FIELDS]
    return render(
        request,
        "_device.html" if partial else "device.html",
        viewer=viewer,
        device=device,
        site=site,
        room=room,
        reading=reading,
        reading_fields=[(label, value) for label, value in shown if value is not None],
        error_flags=reading.get("errors") or {},
        metrics=reading.get("metrics") or {},
        charts=charts,
        window=window,
        windows=list(WINDOWS),
        firmware=firmware_history(session, device.id),
        alerts=recent_alerts_of_device(session, device.id),
        # Power and input commands, the schedule's notes among them: staff only (vendors
        # hold devices:read but not devices:command).
        commands=_commands(session, device.id) if viewer.may("devices:command") else None,
    )


def _commands(session: SessionDep, device_id: str) -> list[DeviceCommand]:
    return list(
        session.exec(
            select(DeviceCommand)
            .where(DeviceCommand.device_id == device_id)
            .order_by(col(DeviceCommand.id).desc())
            .limit(20)
        )
    )


NUMBERS = ("temperature_c", "lamp_hours", "filter_hours", "uptime_s")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shown(key: str, value: Any) -> str | None:
    """A reading's value as a person reads it; None when the device did not report it. The
    reading is whatever was stored, from before ingest checked values too: a number that is
    not one (NaN, Infinity, text) is shown as given, not computed with."""
    if value is None:
        return None
    if key == "ts":
        try:
            return utc(datetime.fromisoformat(value))
        except (TypeError, ValueError, OverflowError):
            return str(value)
    if key == "reachable":
        return "yes" if value else "no"
    if key in NUMBERS and not _finite(value):
        return f"{value} (not a number a device can report)"
    if key == "uptime_s":
        minutes = int(value) // 60
        return f"{minutes // 1440} d {minutes // 60 % 24} h {minutes % 60} min"
    if key in ("lamp_hours", "filter_hours"):
        return f"{value:,.0f} h"
    if key == "temperature_c":
        return f"{value:.1f}"
    return str(value)
