"""The pages' message catalogs: every string the code and templates mark is translated in every
shipped language, with the same placeholders; the language follows the user, then the browser;
numbers and dates follow the locale."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine

from fleet.api.app import create_app
from fleet.settings import Settings
from fleet.web.i18n import LANGUAGES, LOCALE_DIR, catalog_path, translations
from tests.fixtures_auth import Tokens

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(set(LANGUAGES) - {"en"})
PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    """What the code and templates mark today, extracted as `pybabel extract` does."""
    out = tmp_path_factory.mktemp("pot") / "messages.pot"
    subprocess.run(
        [
            sys.executable, "-m", "babel.messages.frontend", "extract",
            "-F", str(LOCALE_DIR / "babel.cfg"), "-k", "N_", "--no-location",
            "-o", str(out), ".",
        ],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    with out.open("rb") as pot:
        return read_po(pot)


def _ids(message: Any) -> tuple[str, ...]:
    return message.id if isinstance(message.id, tuple) else (message.id,)


@pytest.mark.parametrize("lang", SHIPPED)
def test_every_marked_string_is_in_the_catalog(template: Catalog, lang: str) -> None:
    with catalog_path(lang).open("rb") as po:
        catalog = read_po(po, locale=lang)
    missing, untranslated, placeholders = [], [], []
    for message in template:
        if not message.id:
            continue
        found = catalog.get(message.id)
        if found is None:
            missing.append(message.id)
            continue
        forms = found.string if isinstance(found.string, tuple) else (found.string,)
        if (
            found.fuzzy
            or not all(forms)
            or len(forms) != (catalog.num_plurals if isinstance(message.id, tuple) else 1)
        ):
            untranslated.append(message.id)
            continue
        wanted = set().union(*(PLACEHOLDER.findall(i) for i in _ids(message)))
        for form in forms:
            got = set(PLACEHOLDER.findall(form))
            # A plural form may say the number in words ("one", "two"), never another name.
            if got - wanted or wanted - got - {"num"}:
                placeholders.append((message.id, form))
    assert not missing, f"{lang}: not in {catalog_path(lang)}: {missing}"
    assert not untranslated, f"{lang}: untranslated or fuzzy: {untranslated}"
    assert not placeholders, f"{lang}: placeholders differ: {placeholders}"


@pytest.mark.parametrize("lang", SHIPPED)
def test_no_word_holds_what_html_would_read_as_markup(template: Catalog, lang: str) -> None:
    """The pages write the catalogs' words as they are, unescaped: the templates' `_` makes
    them Markup, and the overview's rows (fleet.web.overview.SiteRow.html) put them straight
    into attributes such as data-label="...". A quote would end such an attribute, and <, >
    or & would be read as markup, so none of them may be in a msgid or a translation."""
    with catalog_path(lang).open("rb") as po:
        catalog = read_po(po, locale=lang)
    unsafe = [
        text
        for source in (template, catalog)
        for message in source
        if message.id  # the header
        for text in (*_ids(message), *_forms(message))
        if any(c in text for c in '"<>&')
    ]
    assert not unsafe, f"{lang}: words the pages would write as markup: {unsafe}"


def _forms(message: Any) -> tuple[str, ...]:
    return message.string if isinstance(message.string, tuple) else (message.string,)


@pytest.mark.parametrize("lang", SHIPPED)
def test_plurals_follow_the_language(lang: str) -> None:
    t = translations(lang)
    words = {
        n: t.ngettext("%(num)d open alert", "%(num)d open alerts", n) % {"num": n}
        for n in (1, 2, 5, 21)
    }
    assert len(set(words.values())) == 4
    if lang == "ru":
        assert words[1].startswith("1 ") and "оповещение" in words[1]
        assert "оповещения" in words[2] and "оповещений" in words[5] and "оповещение" in words[21]


def test_english_plurals() -> None:
    t = translations("en")
    assert t.ngettext("%(num)d open alert", "%(num)d open alerts", 1) % {"num": 1} == "1 open alert"


@pytest.fixture
def client(registered: Engine, tokens: Tokens, tmp_path: Any) -> Iterator[TestClient]:
    app = create_app(
        Settings(data_dir=tmp_path, database_url=str(registered.url)), engine=registered
    )
    with TestClient(app, headers=tokens.headers("ops")) as c:
        yield c


@pytest.mark.parametrize(
    ("accept", "lang", "direction", "heading"),
    [
        ("fr-SN,fr;q=0.9,en;q=0.5", "fr", "ltr", "Vue d'ensemble du parc"),
        ("ar-DZ", "ar", "rtl", "نظرة عامة على الأسطول"),
        ("uz-UZ, ru;q=0.8", "ru", "ltr", "Обзор парка"),
        ("de-DE, *;q=0.1", "en", "ltr", "Fleet overview"),
        ("fr;q=0, ru;q=0.2", "ru", "ltr", "Обзор парка"),
    ],
)
def test_the_browsers_language_is_used(
    client: TestClient, accept: str, lang: str, direction: str, heading: str
) -> None:
    html = client.get("/", headers={"Accept-Language": accept}).text
    assert f'<html lang="{lang}" dir="{direction}">' in html
    assert f"<h1>{heading}</h1>" in html.replace("&#39;", "'")


def test_the_users_choice_beats_the_browser(client: TestClient) -> None:
    client.cookies.set("fleet_lang", "ar")
    html = client.get("/alerts", headers={"Accept-Language": "fr"}).text
    assert 'lang="ar" dir="rtl"' in html and "التنبيهات" in html


def test_numbers_and_dates_follow_the_locale() -> None:
    from jinja2.runtime import new_context

    from fleet.web.templating import ENV, local_text, number

    def shown(lang: str) -> str:
        return str(number(new_context(ENV, "t", {}, {"lang": lang}), 1234.5))

    assert shown("en") == "1,234.5"
    assert shown("fr").replace("\u202f", " ").replace("\xa0", " ") == "1 234,5"
    assert shown("ru").replace("\xa0", " ") == "1 234,5"
    at = datetime(2025, 3, 3, 14, 15, tzinfo=UTC)
    from zoneinfo import ZoneInfo

    assert "mars" in local_text(at, ZoneInfo("Africa/Dakar"), "fr")
    assert "мар" in local_text(at, ZoneInfo("Asia/Tashkent"), "ru")
    assert local_text(at, ZoneInfo("Asia/Tashkent"), "ru").endswith("19:15 Asia/Tashkent")


PAST = {"en": "5 minutes ago", "fr": "il y a 5 minutes", "ar": "قبل 5 دقائق", "ru": "5 минут назад"}


@pytest.mark.parametrize("lang", LANGUAGES)
def test_a_past_time_reads_as_past_in_each_language(lang: str) -> None:
    from datetime import timedelta

    from fleet.web.templating import ago

    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    assert ago(now - timedelta(minutes=5), now, lang) == PAST[lang]
    assert ago(now - timedelta(seconds=3), now, lang) == translations(lang).gettext("just now")
    assert ago(now + timedelta(minutes=5), now, lang) == translations(lang).gettext("in the future")


@given(st.integers(min_value=10, max_value=50 * 365 * 24 * 3600))
def test_any_past_time_is_worded_ago_never_in(seconds: int) -> None:
    from datetime import timedelta

    from fleet.web.templating import ago

    now = datetime(2026, 11, 30, 12, tzinfo=UTC)
    words = ago(now - timedelta(seconds=seconds), now, "en")
    assert words.endswith(" ago") and not words.startswith("in "), words


# Rounding edges of each unit (a count of 1.5, and x.5 either side), then any delta at all.
EDGES = [
    per * count + shift
    for per in (60, 3600, 86400, 7 * 86400, 30 * 86400, 365 * 86400)
    for count in (1.5, 2.5, 89.5, 35.5)
    for shift in (-1e-6, 0, 1e-6, -0.5, 0.5)
]


@given(
    st.one_of(
        st.sampled_from(EDGES),
        st.floats(min_value=10, max_value=9000 * 365 * 86400, allow_nan=False),
    ),
    st.sampled_from(sorted(LANGUAGES)),
)
def test_the_remembered_words_are_babel_s_for_every_delta(seconds: float, lang: str) -> None:
    """`ago` keeps Babel's words by the unit and count they round to: the same words Babel
    gives for the delta itself, at every rounding edge and in each language."""
    from datetime import timedelta

    from babel.dates import format_timedelta

    from fleet.web.i18n import babel_locale
    from fleet.web.templating import ago

    now = datetime(9999, 1, 1, tzinfo=UTC)
    then = now - timedelta(seconds=seconds)
    babel = format_timedelta(
        then - now, threshold=1.5, add_direction=True, locale=babel_locale(lang)
    )
    # Twice: once perhaps remembered from an earlier example, once surely.
    assert ago(then, now, lang) == babel
    assert ago(then, now, lang) == babel
