"""The pages' language and time zone: which one a request gets, and its message catalog.

Catalogs are Babel `.po` files under `fleet/web/locale/<lang>/LC_MESSAGES/messages.po`, read
and compiled in memory on first use: nothing to build after `pip install -e .`, and a fresh
checkout serves every language. English is the source language (the msgids), so it needs no
catalog. The language comes from the user's choice (the `fleet_lang` cookie, set by
`GET /preferences`), else the browser's Accept-Language, else English.
"""

from __future__ import annotations

import functools
import gettext
from io import BytesIO
from pathlib import Path
from zoneinfo import ZoneInfo

from babel import Locale, UnknownLocaleError
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations
from fastapi import Request

from fleet.protocol.zones import UnknownZone, zone_named

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
# The languages of the sites (SITES.md): French in Senegal, Algeria and Morocco; Arabic in
# Algeria, Morocco and Iraq; Russian in Uzbekistan and Kyrgyzstan. Each named in itself.
LANGUAGES = {"en": "English", "fr": "Français", "ar": "العربية", "ru": "Русский"}
RIGHT_TO_LEFT = frozenset({"ar"})
DEFAULT_LANGUAGE = "en"
LANG_COOKIE = "fleet_lang"
ZONE_COOKIE = "fleet_tz"
SITE_ZONE = "site"  # the zone cookie's value for "each site's own time" (the default)


def catalog_path(lang: str) -> Path:
    """Where language `lang`'s `.po` catalog is, whether or not one is shipped."""
    return LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po"


@functools.cache
def translations(lang: str) -> gettext.NullTranslations:
    """The compiled catalog of one of LANGUAGES; English (and an unknown code) is the source
    text itself. A fuzzy entry is left out, as msgfmt does: its source text shows instead."""
    if lang not in LANGUAGES or lang == DEFAULT_LANGUAGE or not catalog_path(lang).is_file():
        return gettext.NullTranslations()  # no catalog shipped yet: the English source text
    with catalog_path(lang).open("rb") as po:
        catalog = read_po(po, locale=lang)
    compiled = BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return Translations(compiled, domain="messages")


def _accepted(header: str) -> list[str]:
    """Accept-Language's tags, most wanted first (RFC 9110 12.5.4); a bad q counts as 0."""
    ranked = []
    for position, part in enumerate(header.split(",")[:32]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        if tag and quality > 0:
            ranked.append((-quality, position, tag.strip()))
    return [tag for _, _, tag in sorted(ranked)]


def language_of(request: Request) -> str:
    """The user's chosen language, else the browser's first one we have, else English."""
    chosen = request.query_params.get("lang") or request.cookies.get(LANG_COOKIE, "")
    if chosen in LANGUAGES:
        return chosen
    for tag in _accepted(request.headers.get("accept-language", "")):
        primary = tag.split("-")[0].split("_")[0].lower()
        if primary in LANGUAGES:
            return primary
    return DEFAULT_LANGUAGE


def zone_choice(request: Request) -> ZoneInfo | None:
    """The zone the user chose to read times in; None: each site's own (the default)."""
    name = request.cookies.get(ZONE_COOKIE, SITE_ZONE)
    if name == SITE_ZONE or not name:
        return None
    try:
        return zone_named(name)
    except UnknownZone:
        return None  # a cookie from an older tzdata, or edited: the site's time


@functools.lru_cache(maxsize=64)
def babel_locale(lang: str) -> Locale:
    """The Babel locale of `lang`, for formatting numbers and dates; English for a code Babel
    cannot parse."""
    # Cached: Babel builds a new Locale on every parse, and a page formats a time or a number
    # a row.
    try:
        return Locale.parse(lang)
    except (UnknownLocaleError, ValueError):
        return Locale.parse(DEFAULT_LANGUAGE)
