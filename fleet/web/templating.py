"""Jinja2 for the pages: autoescape on for every template, and the filters the pages share.

Autoescape is not optional here: device names, sysDescr and reasons come from devices and
site configs, so every value is escaped unless a template marks it safe (only our own SVG).
"""

from __future__ import annotations

import functools
import gettext
import math
import re
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

from babel.dates import TIMEDELTA_UNITS, format_date, format_time, format_timedelta
from babel.numbers import format_decimal
from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, pass_context
from jinja2.runtime import Context
from markupsafe import Markup, escape

from fleet.protocol.messages import utcnow
from fleet.protocol.zones import UnknownZone, zone_named
from fleet.web import words
from fleet.web.i18n import (
    LANGUAGES,
    RIGHT_TO_LEFT,
    SITE_ZONE,
    babel_locale,
    language_of,
    translations,
    zone_choice,
)
from fleet.web.viewer import viewer_of

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"

# Worst first: the order problem sites and device lists are sorted by.
STATE_ORDER = ("faulty", "unreachable", "site_offline", "unknown", "standby", "online")
PROBLEM_STATES = frozenset({"faulty", "unreachable", "site_offline"})
# A site's status (fleet.web.overview.LEVELS): its mark and its word.
LEVEL_MARKS = {"critical": "✖", "warning": "⚠", "ok": "✓", "silent": "…"}
LEVEL_WORDS = {
    "critical": words.N_("Critical"),
    "warning": words.N_("Warning"),
    "silent": words.N_("Not reporting yet"),
    "ok": words.N_("All well"),
}


def ago(value: datetime | None, now: datetime | None = None, lang: str = "en") -> str:
    """How long ago, in the language's words ("3 minutes ago", "il y a 3 minutes")."""
    t = translations(lang)
    if value is None:
        return t.gettext("never")
    seconds = ((now or utcnow()) - value).total_seconds()
    if seconds < -60:  # a clock ahead of ours by more than a poll's jitter
        return t.gettext("in the future")
    if seconds < 10:  # within a request's time, or a clock a little ahead
        return t.gettext("just now")
    return _past_words(seconds, lang)


# The fewest of a unit "ago" is worded in: 90 s is "2 minutes ago", 80 s "80 seconds ago".
AGO_THRESHOLD = 1.5
# (unit, count, language) -> words, as Babel gave them; a few hundred at most (a count of
# years, days, hours, minutes or seconds, in four languages), so never pruned but by a bound.
_PAST_WORDS: dict[tuple[str, int, str], str] = {}


def _past_words(seconds: float, lang: str) -> str:
    """Babel's `format_timedelta` of `seconds` (> 0) in the past ("5 minutes ago"), kept by
    the unit and count it rounds to: its words depend on nothing else (babel.dates: the first
    of TIMEDELTA_UNITS that the delta is AGO_THRESHOLD or more of, rounded; seconds at
    least 1), and it cost more than the rest of a row of the overview. Tested against Babel
    itself (tests/test_catalogs.py)."""
    for unit, per_unit in TIMEDELTA_UNITS:
        count = seconds / per_unit
        if count >= AGO_THRESHOLD or unit == "second":
            key = (unit, round(max(1.0, count)), lang)
            break
    words = _PAST_WORDS.get(key)
    if words is None:
        # Babel words a negative delta as past ("5 minutes ago"), a positive one as future.
        words = format_timedelta(
            -timedelta(seconds=seconds),
            threshold=AGO_THRESHOLD,
            add_direction=True,
            locale=babel_locale(lang),
        )
        if len(_PAST_WORDS) >= 10_000:
            _PAST_WORDS.clear()
        _PAST_WORDS[key] = words
    return words


def utc(value: datetime | None) -> str:
    """UTC, for the API's words and logs; the pages show `local` times."""
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _zone_of(context: Context, zone: str | ZoneInfo | None) -> ZoneInfo:
    """The zone a time is shown in: the user's choice, else the one given (the time's site),
    else the page's site, else UTC."""
    chosen = context.get("user_zone")
    if chosen is not None:
        return cast(ZoneInfo, chosen)
    for candidate in (zone, context.get("zone")):
        if isinstance(candidate, ZoneInfo):
            return candidate
        if isinstance(candidate, str) and candidate:
            try:
                return zone_named(candidate)
            except UnknownZone:
                continue
    return ZoneInfo("UTC")


def local_text(value: datetime, zone: ZoneInfo, lang: str) -> str:
    """A time as a person there reads it, with its zone named: "30 Nov 2026, 21:05 Asia/Tokyo"."""
    try:
        there = value.astimezone(zone)
    except OverflowError:  # at the edge of what datetime holds (year 1 or 9999): UTC, named
        return f"{value.astimezone(UTC).strftime('%Y-%m-%d %H:%M')} UTC"
    return _minute_text(there.date(), there.hour, there.minute, zone.key, lang)


@functools.lru_cache(maxsize=4096)
def _minute_text(day: date, hour: int, minute: int, zone: str, lang: str) -> str:
    # Babel's formatting is most of a time's cost on a page, and the overview shows one a
    # site: the words depend only on the day and the minute, which many sites share.
    locale = babel_locale(lang)
    shown = format_time(time(hour, minute), "HH:mm", locale=locale)
    return f"{format_date(day, 'medium', locale=locale)} {shown} {zone}"


@pass_context
def local(
    context: Context,
    value: datetime | None,
    zone: str | ZoneInfo | None = None,
    fixed: bool = False,
) -> Markup:
    """`{{ t | local(site.timezone) }}`: the time in the site's zone (or the user's), named;
    `fixed`: in `zone` whatever the user chose (the local time at a site)."""
    lang = context.get("lang", "en")
    if not value:
        return Markup('<span class="muted">{}</span>').format(translations(lang).gettext("never"))
    shown_in = zone if fixed and isinstance(zone, ZoneInfo) else _zone_of(context, zone)
    text = local_text(value, shown_in, lang)
    return Markup('<time datetime="{}">{}</time>').format(value.isoformat(), text)


@pass_context
def when(context: Context, value: datetime | None, zone: str | ZoneInfo | None = None) -> Markup:
    """`{{ t | when(site.timezone) }}`: a time as "3 minutes ago", the local time and zone on
    hover. A filter, not a macro: the overview calls it once a row, and a Jinja macro call
    costs ten times as much."""
    lang = context.get("lang", "en")
    if not value:
        return Markup('<span class="muted">{}</span>').format(translations(lang).gettext("never"))
    # Escaped and joined by hand: Markup.format's formatter, in Python, cost more than the
    # three values (escape is what it calls on each, too).
    at = escape(value.isoformat())
    there = escape(local_text(value, _zone_of(context, zone), lang))
    since = escape(ago(value, context.get("now"), lang))
    return Markup(f'<time datetime="{at}" title="{there}">{since}</time>')  # noqa: S704


@pass_context
def level_badge(context: Context, level: str) -> Markup:
    """`{{ level_badge(row.level) }}`: a site's status as a badge, a mark and a word. A
    function, not a macro: the overview shows one a site, and a macro call costs ten times
    as much."""
    return level_badge_html(level, context.get("t") or translations("en"))


def level_badge_html(level: str, t: gettext.NullTranslations) -> Markup:
    """`level_badge` for code that writes HTML itself (the overview's rows)."""
    # The word is our own shipped catalog's, trusted as `_` trusts it; the level is escaped.
    said = t.gettext(LEVEL_WORDS[level])
    mark, code = LEVEL_MARKS[level], escape(level)
    return Markup(  # noqa: S704  (escaped above; Markup.format costs more than the badge)
        f'<span class="level level-{code}" data-level="{code}"><span aria-hidden="true">{mark}'
        f"</span> {said}</span>"
    )


# A UTC (or offset) time written into a stored text: a state reason, an alert's message.
STAMP_RE = re.compile(
    r"\b\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2})"
)


@pass_context
def stamps(context: Context, text: str | None, zone: str | ZoneInfo | None = None) -> str:
    """`{{ a.message | stamps(zone) }}`: the text with every time in it written in the site's
    zone (or the user's), named, as the rest of the page: stored texts keep UTC, the API's
    words; the pages show no UTC. A stamp that is no real time is left as it is."""
    if not text:
        return text or ""
    shown_in = _zone_of(context, zone)
    lang = context.get("lang", "en")

    def shown(match: re.Match[str]) -> str:
        try:
            at = datetime.fromisoformat(match.group(0).replace(" ", "T"))
        except ValueError:
            return match.group(0)
        return local_text(at, shown_in, lang)

    return STAMP_RE.sub(shown, str(text))


WORD_TABLES = {
    "state": words.STATES,
    "kind": words.ALERT_KINDS,
    "severity": words.SEVERITIES,
    "alert_state": words.ALERT_STATES,
    "power": words.POWER,
    "agent": words.AGENT_STATES,
    "field": words.FIELDS,
    "flag": words.FLAGS,
    "command": words.COMMAND_KINDS,
    "command_state": words.COMMAND_STATES,
    "milestone": words.MILESTONES,
    "role": words.ROLES,
    "user_state": words.USER_STATES,
}


@pass_context
def word(context: Context, code: str | None, table: str) -> str:
    """`{{ d.state | word("state") }}`: a code's word in the page's language."""
    t = context.get("t") or translations("en")
    return words.word(t, WORD_TABLES[table], code)


@pass_context
def reason(context: Context, text: str | None) -> str:
    """`{{ d.state_reason | reason | stamps }}`: a stored state reason in the page's language."""
    t = context.get("t") or translations("en")
    return words.reason_text(t, text, context.get("lang", "en"))


@pass_context
def alert_words(context: Context, text: str | None) -> str:
    """`{{ a.message | alert_words | stamps(zone) }}`: a stored alert message in the page's
    language; the UTC times in it are left for `stamps`, a wording no format knows as stored."""
    t = context.get("t") or translations("en")
    return words.alert_text(t, text, context.get("lang", "en"))


def epoch(value: datetime | None) -> int:
    """A sort key for tables: never-seen sorts oldest."""
    return int(value.timestamp()) if value is not None else 0


def state_rank(state: str) -> int:
    """A device state's place in STATE_ORDER, worst first, for sorting; a state not in it sorts
    last."""
    return STATE_ORDER.index(state) if state in STATE_ORDER else len(STATE_ORDER)


@pass_context
def number(context: Context, value: float | None, digits: int = 1) -> str:
    """A number as the page's language writes it ("1,234.5", "1 234,5"). A stored value that
    is not a finite number (NaN or Infinity kept before ingest refused them, or text) is shown
    as it is."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return str(value)
    pattern = "#,##0" + ("." + "0" * digits if digits > 0 else "")
    return format_decimal(value, format=pattern, locale=babel_locale(context.get("lang", "en")))


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        extensions=["jinja2.ext.i18n"],
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        # Templates ship with the package: no stat of every template file on every render.
        auto_reload=False,
    )
    env.filters.update(
        stamps=stamps,
        word=word,
        reason=reason,
        alert_words=alert_words,
        utc=utc,
        epoch=epoch,
        number=number,
        when=when,
        local=local,
    )
    env.globals.update(
        state_rank=state_rank,
        level_badge=level_badge,
        STATE_ORDER=STATE_ORDER,
        LANGUAGES=LANGUAGES,
        SITE_ZONE=SITE_ZONE,
    )
    env.install_null_translations(newstyle=True)  # type: ignore[attr-defined]
    return env


def _gettext_callables(t: gettext.NullTranslations) -> dict[str, Any]:
    """`_`, `gettext` and `ngettext` for one render, as Jinja's newstyle gettext makes them: the
    translation is trusted, the `%(name)s` values put into it are escaped."""

    @pass_context
    def gettext_(context: Context, message: str, **variables: Any) -> str:
        text = t.gettext(message)
        if context.eval_ctx.autoescape:
            text = Markup(text)  # noqa: S704  (our own shipped catalog; values are escaped)
        return text % variables if variables else text

    @pass_context
    def ngettext_(context: Context, singular: str, plural: str, n: int, **variables: Any) -> str:
        variables.setdefault("num", n)
        text = t.ngettext(singular, plural, n)
        if context.eval_ctx.autoescape:
            text = Markup(text)  # noqa: S704  (our own shipped catalog; values are escaped)
        return text % variables

    return {"_": gettext_, "gettext": gettext_, "ngettext": ngettext_}


ENV = _environment()


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """The page in the request's language (`fleet.web.i18n`), times in the site's zone or the
    user's chosen one."""
    lang = context.setdefault("lang", language_of(request))
    context.setdefault("now", utcnow())
    context.setdefault("viewer", viewer_of(request))  # a 404 page keeps the menu
    context.setdefault("nav", getattr(request.app.state, "web_nav", ()))
    context.setdefault("text_direction", "rtl" if lang in RIGHT_TO_LEFT else "ltr")
    context.setdefault("user_zone", zone_choice(request))
    context.setdefault("zone", None)
    context.setdefault("t", translations(lang))
    context.update(_gettext_callables(translations(lang)))
    html = ENV.get_template(template).render(request=request, **context)
    return HTMLResponse(html, status_code=status_code)
