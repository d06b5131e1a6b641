"""Every page as ops, a technician and a vendor would open it, in each language: no text the
catalogs translate is left in English, no raw field name or code shows, no word is doubled and
"1" never takes a plural."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from babel.messages.pofile import read_po
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlmodel import Session, select

from fleet.alerts.models import Alert
from fleet.api.app import create_app
from fleet.commands.models import DeviceCommand
from fleet.devices.state import site_offline_reason
from fleet.models import AgentStatus, Device
from fleet.protocol.messages import utcnow
from fleet.settings import Settings
from fleet.web import words
from fleet.web.i18n import LOCALE_DIR, translations
from tests.fixtures_auth import Tokens

ROOT = Path(__file__).resolve().parent.parent
SHOWN_ATTRIBUTES = ("title", "aria-label", "data-label", "alt", "placeholder")
# Codes the pages must put in words (every table of fleet.web.words, and the milestones).
CODES = {
    code
    for table in (
        words.STATES,
        words.ALERT_KINDS,
        words.FIELDS,
        words.MILESTONES,
        words.POWER,
        words.ALERT_STATES,
    )
    for code in table
    if "_" in code
}
CODE_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, CODES))) + r")\b")
DOUBLED = re.compile(r"\b(\w{2,})\s+\1\b", re.IGNORECASE | re.UNICODE)
ONE_PLURAL = re.compile(
    r"(?<![\d.,])\b1 (open alerts|alerts|devices|sites|classrooms|critical alerts|warning alerts)\b"
)


class Shown(HTMLParser):
    """The text a person sees on a page (and reads in its labels and tips), piece by piece;
    code samples and scripts left out."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "code"):
            self._skip += 1
        for name, value in attrs:
            if name in SHOWN_ATTRIBUTES and value:
                self.texts.append(value.strip())

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "code") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.texts.append(" ".join(data.split()))


def shown(html: str) -> list[str]:
    parser = Shown()
    parser.feed(html)
    return parser.texts


@pytest.fixture(scope="module")
def english_msgids(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every marked English text, as `pybabel extract` finds it; a page in another language
    showing one of them as a whole piece left it untranslated."""
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
        ids = {m.id for m in read_po(pot) if isinstance(m.id, str) and m.id}
    # Words the same in a language as in English (a name, a code kept on purpose).
    return {i for i in ids if "%(" not in i and len(i) > 3}


@pytest.fixture
def client(registered: Engine, tokens: Tokens, tmp_path: Any) -> Iterator[TestClient]:
    app = create_app(
        Settings(data_dir=tmp_path, database_url=str(registered.url)), engine=registered
    )
    with TestClient(app) as c:
        yield c


def _fleet_with_troubles(engine: Engine) -> str:
    """A Seewo device at upm with a full reading (raw metric names in it) and an open alert,
    another with an error: the fields and words every page has to show."""
    now = utcnow()
    with Session(engine) as session:
        device = session.exec(
            select(Device).where(Device.vendor == "Seewo", Device.site_code == "upm")
        ).first()
        assert device is not None
        device.state, device.state_since, device.last_seen_at = "online", now, now
        device.state_reason = "reachable, power on, input HDMI1"
        device.last_reading = {
            "device": device.id,
            "ts": now.isoformat(),
            "reachable": True,
            "power": "on",
            "temperature_c": 41.5,
            "metrics": {"sys_name": "panel", "update_status": "idle", "brightness_pct": 80},
            "errors": {"fan": "warning", "lamp": "ok"},
        }
        session.add(device)
        session.add(
            Alert(
                kind="left_on_after_hours",
                severity="warning",
                state="open",
                subject=f"device:{device.id}",
                site_code="upm",
                device_id=device.id,
                message=f"{device.id} is powered on after hours",
                opened_at=now - timedelta(minutes=5),
                updated_at=now,
            )
        )
        session.add(
            DeviceCommand(
                cmd_id="walk-1",
                campaign="power-1",
                device_id=device.id,
                site_code="upm",
                kind="power",
                value="off",
                state="done",
                requested_by="ops-centre",
                reason="after hours",
                created_at=now - timedelta(minutes=3),
                expires_at=now + timedelta(minutes=7),
                confirmed_at=now - timedelta(minutes=2),
                updated_at=now,
            )
        )
        session.commit()
        return device.id


ROLE_PAGES = {
    "ops": [
        "/",
        "/alerts",
        "/programme",
        "/programme/upm",
        "/enrolment",
        "/rollouts",
        "/rollouts/new",
        "/reports",
        "/users",
        "/sites/upm",
        "DEVICE",
    ],
    "technician": ["/", "/alerts", "/sites/upm", "/programme/upm", "/enrolment", "DEVICE"],
    "vendor": ["/", "/alerts", "/reports", "DEVICE"],
}


@pytest.mark.parametrize("role", sorted(ROLE_PAGES))
def test_every_page_reads_in_every_language(
    registered: Engine,
    client: TestClient,
    tokens: Tokens,
    english_msgids: set[str],
    role: str,
) -> None:
    device = _fleet_with_troubles(registered)
    found: list[tuple[str, str, str, str]] = []
    for lang in ("en", "fr", "ar", "ru"):
        t = translations(lang)
        # Marked texts whose translation differs: shown as they are, they were left out.
        untranslated = {i for i in english_msgids if t.gettext(i) != i}
        for path in [*ROLE_PAGES[role], "/login"]:
            path = f"/devices/{device}" if path == "DEVICE" else path
            headers = {
                "Accept-Language": lang,
                **({} if path == "/login" else tokens.headers(role)),
            }
            page = client.get(path, headers=headers)
            assert page.status_code == 200, (role, lang, path, page.status_code)
            for text in shown(page.text):
                if lang != "en" and text in untranslated:
                    found.append((lang, path, "English", text))
                if CODE_RE.search(text):
                    found.append((lang, path, "code", text))
                if DOUBLED.search(text) and not re.search(r"\d", DOUBLED.search(text).group(0)):  # type: ignore[union-attr]
                    found.append((lang, path, "doubled", text))
                if lang == "en" and ONE_PLURAL.search(text):
                    found.append((lang, path, "plural", text))
    assert not found, "\n".join(" | ".join(f) for f in found)


def test_the_device_page_says_its_reason_and_commands_in_the_language(
    registered: Engine, client: TestClient, tokens: Tokens
) -> None:
    device = _fleet_with_troubles(registered)
    html = client.get(
        f"/devices/{device}", headers={"Accept-Language": "ru", **tokens.headers("ops")}
    ).text
    assert "доступно, питание: " in html and ", вход HDMI1" in html
    assert "reachable, power" not in html
    assert "Команды питания и входа" in html and "Power and input commands" not in html
    assert "выполнена" in html and "(confirmed" not in html
    assert not re.search(r"\d\d:\d\d:\d\dZ", html)  # no UTC stamp: the site's time


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.builds(
            lambda head, tail: head + tail,
            st.sampled_from(
                [
                    "reachable, power ",
                    "cannot reach ",
                    "error flags: ",
                    "standby during class hours",
                    "power off outside class hours (expected)",
                    "no answer outside class hours: taken as switched off (expected) (",
                    "site agent ",
                ]
            ),
            st.text(),
        ),
    ),
    st.sampled_from(["en", "fr", "ar", "ru"]),
)
def test_any_stored_reason_is_shown(text: str, lang: str) -> None:
    """A reason of any wording (an agent's error text, control characters, a placeholder-like
    "%(x)s") is shown, translated where known, never an error; in English as stored."""
    shown_text = words.reason_text(translations(lang), text, lang)
    assert isinstance(shown_text, str)
    if lang == "en" and not text.startswith("site agent "):
        assert shown_text == text  # a site's silence says its minutes as Babel words them


def _site_offline(engine: Engine, code: str) -> list[str]:
    """The site's agent silent for 7 minutes, every device of it `site_offline` with the
    reason fleet.devices.state words (one that fell silent, one whose agent said offline)."""
    now = utcnow()
    heard = now - timedelta(minutes=7)
    with Session(engine) as session:
        status = session.get(AgentStatus, code)
        agent_id = status.agent_id if status else f"{code}-agent-1"
        session.merge(
            AgentStatus(
                site_code=code,
                agent_id=agent_id,
                state="offline",
                ts=heard,
                received_at=heard,
                last_message_at=heard,
            )
        )
        devices = session.exec(select(Device).where(Device.site_code == code)).all()
        for n, device in enumerate(devices):
            device.state, device.state_since, device.last_seen_at = "site_offline", heard, heard
            device.state_reason = (
                site_offline_reason(agent_id, heard, silent_for=timedelta(minutes=7))
                if n % 2 == 0
                else site_offline_reason(agent_id, heard)
            )
            session.add(device)
        session.commit()
        return [d.id for d in devices]


# The reasons' English, and the duration each language must say instead.
OFFLINE_ENGLISH = ("silent for", "last heard", "offline since", "said offline", "will fired")
SEVEN_MINUTES = {"en": "7 minutes", "fr": "7 minutes", "ar": "7 دقائق", "ru": "7 минут"}


@pytest.mark.parametrize("lang", ["en", "fr", "ar", "ru"])
def test_an_offline_site_reads_in_the_language(
    registered: Engine,
    client: TestClient,
    tokens: Tokens,
    english_msgids: set[str],
    lang: str,
) -> None:
    """A site whose agent fell silent: the overview, its page and a device's page say why in
    the page's language, the silence's length in its words, no English and no UTC left."""
    devices = _site_offline(registered, "upm")
    t = translations(lang)
    untranslated = {i for i in english_msgids if t.gettext(i) != i}
    found: list[tuple[str, str]] = []
    pages = {}
    for path in ["/", "/sites/upm", f"/devices/{devices[0]}", f"/devices/{devices[1]}"]:
        page = client.get(path, headers={"Accept-Language": lang, **tokens.headers("ops")})
        assert page.status_code == 200, (lang, path)
        pages[path] = page.text
        for text in shown(page.text):
            if lang != "en" and (text in untranslated or any(e in text for e in OFFLINE_ENGLISH)):
                found.append((path, text))
            if re.search(r"\d\d:\d\d:\d\dZ", text):
                found.append((path, text))
    assert not found, "\n".join(" | ".join(f) for f in found)
    site = " ".join(shown(pages["/sites/upm"]))
    assert SEVEN_MINUTES[lang] in site, site
    said = t.gettext(words.STATES["site_offline"])
    assert said in site
    if lang != "en":
        assert t.gettext("site agent") in site
    # The refresh stamp's words come from the catalogs too (dashboard.js fills in the time).
    assert f'data-updated="{t.gettext("Updated %(time)s.")}"' in pages["/"]
    assert 'data-zone="Asia/Kuala_Lumpur"' in pages["/sites/upm"]
