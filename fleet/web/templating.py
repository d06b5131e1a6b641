"""Jinja2 for the pages: autoescape on for every template, and the filters the pages share.

Autoescape is not optional here: device names, sysDescr and reasons come from devices and
site configs, so every value is escaped unless a template marks it safe (only our own SVG).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, pass_context
from jinja2.runtime import Context
from markupsafe import Markup

from fleet.protocol.messages import utcnow

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"

# Worst first: the order problem sites and device lists are sorted by.
STATE_ORDER = ("faulty", "unreachable", "site_offline", "unknown", "standby", "online")
PROBLEM_STATES = frozenset({"faulty", "unreachable", "site_offline"})


def ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return "never"
    seconds = int(((now or utcnow()) - value).total_seconds())
    if seconds < 0:
        return "in the future"
    if seconds < 90:
        return f"{seconds} s ago"
    if seconds < 90 * 60:
        return f"{seconds // 60} min ago"
    if seconds < 36 * 3600:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def utc(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@pass_context
def when(context: Context, value: datetime | None) -> Markup:
    """`{{ t | when }}`: a time as "3 min ago", the exact UTC time on hover. A filter, not a macro:
    the overview calls it once a row, and a Jinja macro call costs ten times as much."""
    if not value:
        return Markup('<span class="muted">never</span>')
    # Every part is made here from a datetime: nothing in it needs escaping.
    return Markup(  # noqa: S704  (made from a datetime)
        f'<time datetime="{value.isoformat()}" title="{utc(value)}">'
        f"{ago(value, context.get('now'))}</time>"
    )


def epoch(value: datetime | None) -> int:
    """A sort key for tables: never-seen sorts oldest."""
    return int(value.timestamp()) if value is not None else 0


def state_rank(state: str) -> int:
    return STATE_ORDER.index(state) if state in STATE_ORDER else len(STATE_ORDER)


def number(value: float | None, digits: int = 1) -> str:
    """A number with thousands separators. A stored value that is not a finite number (NaN or
    Infinity kept before ingest refused them, or text) is shown as it is."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return str(value)
    return f"{value:,.{digits}f}"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        # Templates ship with the package: no stat of every template file on every render.
        auto_reload=False,
    )
    env.filters.update(ago=ago, utc=utc, epoch=epoch, number=number, when=when)
    env.globals.update(state_rank=state_rank, STATE_ORDER=STATE_ORDER)
    return env


ENV = _environment()


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("now", utcnow())
    context.setdefault("nav", getattr(request.app.state, "web_nav", ()))
    html = ENV.get_template(template).render(request=request, **context)
    return HTMLResponse(html, status_code=status_code)
