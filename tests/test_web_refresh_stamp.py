"""The page's "Updated HH:MM" stamp, in Debian's chromium against a real controller process:
after an in-place refresh it is in the page's language (its words from the catalogs, given by
the template; the time written by Intl in that language) and in the page's zone, the site's
or the one the user chose. The script holds no words of its own."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine

from fleet.db import make_engine
from fleet.protocol.messages import utcnow
from fleet.protocol.site_config import DEFAULT_SITES_DIR
from fleet.web.i18n import translations
from tests.fixtures_auth import sign_in, user_token
from tests.fixtures_broker import BrokerThread
from tests.procs import Stack, wait_for

SCRIPT = Path(__file__).resolve().parent.parent / "fleet" / "web" / "static" / "dashboard.js"
# Arabic-Indic and Eastern Arabic-Indic digits, as Intl may write a time in Arabic.
DIGITS = str.maketrans("٠١٢٣٤٥٦٧٨٩۰۱۲۳۴۵۶۷۸۹", "0123456789" * 2)
ENGLISH = ("Updated", "Could not refresh", "showing older data")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("web-stamp")
    broker = BrokerThread()
    broker.start()
    s = Stack(tmp, broker.url, "twebs/fleet/v1", f"sqlite:///{tmp / 'fleet.db'}")
    shutil.copy(DEFAULT_SITES_DIR / "tribhuvan.yaml", s.sites_dir)
    try:
        s.controller()
        wait_for(lambda: len(s.get("/api/v1/sites")) == 2, 30, "the two sites")
        yield s
    finally:
        s.stop_all()
        broker.stop()


@pytest.fixture(scope="module")
def ops_token(stack: Stack) -> str:
    engine: Engine = make_engine(stack.database_url)
    try:
        return user_token(engine, "ops-stamp", "ops")
    finally:
        engine.dispose()


def _refreshed(browser: Any, stack: Stack, token: str, lang: str, path: str) -> str:
    """The stamp's text after the page at `path`, in `lang`, refreshed its live part."""
    context = browser.new_context(locale=lang, viewport={"width": 390, "height": 844})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda exc: problems.append(str(exc)))
    try:
        sign_in(tab, stack.base, token)
        tab.goto(stack.base + path)
        assert tab.locator("html").get_attribute("lang") == lang
        tab.evaluate("document.getElementById('live').refreshNow()")
        # A locator wait: the page's CSP refuses wait_for_function's string evaluation.
        tab.locator("#refreshed.refreshed:not(.refresh-failed):not(:empty)").wait_for(
            timeout=30_000
        )
        text = tab.locator("#refreshed").inner_text()
    finally:
        context.close()
    assert not problems, problems
    return text


def _time_in(text: str) -> tuple[int, int]:
    found = re.search(r"(\d{1,2}):(\d{2})", text.translate(DIGITS))
    assert found, text
    return int(found[1]), int(found[2])


def _near(hour_minute: tuple[int, int], zone: str, before: datetime) -> bool:
    """The stamp's HH:MM is the time in `zone` between `before` and now."""
    after = utcnow()
    seen = {
        (t.hour, t.minute)
        for t in (before.astimezone(ZoneInfo(zone)), after.astimezone(ZoneInfo(zone)))
    }
    return hour_minute in seen


@pytest.mark.parametrize("lang", ["fr", "ar", "ru"])
def test_the_refresh_stamp_is_in_the_pages_language_and_zone(
    stack: Stack, ops_token: str, browser: Any, lang: str
) -> None:
    t = translations(lang)
    before = utcnow() - timedelta(seconds=1)
    for path, zone in (("/sites/upm", "Asia/Kuala_Lumpur"), ("/sites/tribhuvan", "Asia/Kathmandu")):
        text = _refreshed(browser, stack, ops_token, lang, path)
        prefix = t.gettext("Updated %(time)s.").split("%(time)s")[0].strip()
        assert prefix and prefix != "Updated" and text.startswith(prefix), (lang, text)
        assert not any(word in text for word in ENGLISH), (lang, text)
        assert _near(_time_in(text), zone, before), (lang, path, text)


def test_the_script_holds_no_words() -> None:
    """Every word the refresh shows comes from the page's data- attributes (the catalogs)."""
    script = SCRIPT.read_text(encoding="utf-8")
    for word in ENGLISH:
        assert word not in script, word
