"""Alert messages on the pages in the page's language: each kind's message built by the rule
code itself, shown in French, Arabic and Russian with none of its English left and its values
kept; any other stored text shown as stored; and an alert page read in French."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from babel.dates import format_date
from babel.numbers import format_decimal, format_percent
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlmodel import Session, select

from fleet.alerts.models import Alert, AlertKind
from fleet.alerts.rules import evaluate, evaluate_site
from fleet.api.app import create_app
from fleet.devices.state import AgentFacts
from fleet.models import Device, Site
from fleet.programme.milestones import MilestoneFacts, MilestoneName
from fleet.programme.overview import Located, overdue_finding, progress
from fleet.protocol.messages import utcnow
from fleet.settings import Settings
from fleet.web import words
from fleet.web.i18n import translations
from tests.test_alert_rules import MONDAY_KTM, NOON, PROJECTOR, TRIBHUVAN, device, local, reading

DEVICE = "tu-sc1-projector"
LANGS = ("fr", "ar", "ru")


def _one(found: set[Any], kind: AlertKind) -> str:
    [message] = [f.message for f in found if f.kind == kind]
    return str(message)


def _samples() -> list[tuple[AlertKind, str, list[Any], tuple[str, ...]]]:
    """Each kind's message(s) as the rules build them: (kind, message, values the translation
    must keep, English words of its format that must not be left)."""
    out: list[tuple[AlertKind, str, list[Any], tuple[str, ...]]] = []
    unreachable = device(state="unreachable", since=local(TRIBHUVAN, MONDAY_KTM, "11:20"))
    found = evaluate(unreachable, None, PROJECTOR, TRIBHUVAN, local(TRIBHUVAN, MONDAY_KTM, "12:10"))
    out.append(
        (
            AlertKind.device_unreachable,
            _one(found, AlertKind.device_unreachable),
            [DEVICE, 50, 10],
            ("unreachable", "them", "class", "hours"),
        )
    )
    after = datetime(2025, 3, 3, 8, 45, tzinfo=UTC)  # 14:30 in Kathmandu
    found = evaluate(device(), reading(ts=after), PROJECTOR, TRIBHUVAN, after)
    out.append(
        (
            AlertKind.left_on_after_hours,
            _one(found, AlertKind.left_on_after_hours),
            [DEVICE, "14:30", "Asia/Kathmandu", 30],
            ("powered", "after", "hours", "since", "last", "class", "on"),
        )
    )
    found = evaluate(device(), reading(temperature_c=81.5), PROJECTOR, TRIBHUVAN, NOON)
    out.append(
        (
            AlertKind.over_temperature,
            _one(found, AlertKind.over_temperature),
            [DEVICE, 81.5, 75, "test-projector"],
            ("above", "profile's", "its"),
        )
    )
    for kind, field, life, used in (
        (AlertKind.lamp_hours, "lamp_hours", 5000, 4800),
        (AlertKind.lamp_hours, "lamp_hours", 5000, 5200),
        (AlertKind.filter_hours, "filter_hours", 2000, 1900),
        (AlertKind.filter_hours, "filter_hours", 2000, 2100),
    ):
        found = evaluate(device(), reading(**{field: used}), PROJECTOR, TRIBHUVAN, NOON)
        out.append(
            (
                kind,
                _one(found, kind),
                [DEVICE, used, life, ("%", used / life)],
                ("lamp", "filter", "life", "its", "replace", "now", "order", "replacement"),
            )
        )
    errors = {"fan": "error", "lamp": "warning"}
    found = evaluate(device(), reading(errors=errors), PROJECTOR, TRIBHUVAN, NOON)
    out.append(
        (
            AlertKind.device_error,
            _one(found, AlertKind.device_error),
            [DEVICE],
            ("reports", "fan", "lamp", "error", "warning"),
        )
    )
    found = evaluate(device(), reading(firmware="1.2.0"), PROJECTOR, TRIBHUVAN, NOON)
    out.append(
        (
            AlertKind.firmware_below_minimum,
            _one(found, AlertKind.firmware_below_minimum),
            [DEVICE, "1.2.0", "test-projector", "1.10.0"],
            ("runs", "firmware", "below", "schedule", "rollout"),
        )
    )
    went = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
    for state, late in (("offline", 5), ("online", 7)):
        agent = AgentFacts("upm", "upm-agent-1", state, went, went)
        found_site = evaluate_site(agent, timedelta(minutes=3), went + timedelta(minutes=late))
        assert found_site is not None
        out.append(
            (
                AlertKind.site_offline,
                _one(found_site, AlertKind.site_offline),
                ["upm-agent-1", "2025-03-03 12:00:00Z"],
                ("silent", "heard", "offline", "fired", "since", "said"),
            )
        )
    site = Site(code="ugb", name="UGB", country="SN", timezone="Africa/Dakar")
    planned = date(2026, 1, 5)
    items = [
        Located("ugb", 1, "B-101", MilestoneFacts(MilestoneName.installed, planned=planned)),
        Located("ugb", 2, "", MilestoneFacts(MilestoneName.training_done, planned=planned)),
    ]
    finding = overdue_finding(progress(site, items, [], date(2026, 11, 30)))
    assert finding is not None
    out.append(
        (
            AlertKind.programme_overdue,
            finding.message,
            ["ugb", "B-101", ("day", planned), ("day", date(2026, 11, 30))],
            ("past", "planned", "today", "there", "record", "milestone", "move", "installed"),
        )
    )
    return out


SAMPLES = _samples()


def _shown_value(value: Any, lang: str) -> str:
    if isinstance(value, tuple) and value[0] == "%":
        return format_percent(value[1], locale=lang)
    if isinstance(value, tuple):
        return format_date(value[1], format="medium", locale=lang)
    if isinstance(value, int | float):
        return format_decimal(value, locale=lang)
    return str(value)


def test_every_kind_has_a_sample_and_every_format_a_kind() -> None:
    """A rule whose wording changes without its format here fails: each message the rule code
    builds matches the format of its own kind, and no format is left that nothing builds."""
    assert {kind for kind, *_ in SAMPLES} == set(AlertKind)
    for kind, message, *_ in SAMPLES:
        assert words.alert_kind_of(message) == kind.value, message
    used = {
        id(pattern)
        for _kind, pattern, _msgid in words.ALERT_MESSAGES
        for _k, message, *_ in SAMPLES
        if pattern.fullmatch(message)
    }
    assert used == {id(pattern) for _kind, pattern, _msgid in words.ALERT_MESSAGES}


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s[0].value)
def test_each_kind_reads_in_the_language_with_its_values(
    sample: tuple[AlertKind, str, list[Any], tuple[str, ...]], lang: str
) -> None:
    _kind, message, values, english = sample
    shown = words.alert_text(translations(lang), message, lang)
    assert shown != message
    left = [w for w in english if re.search(rf"\b{re.escape(w)}\b", shown, re.IGNORECASE)]
    assert not left, (left, shown)
    for value in values:
        assert _shown_value(value, lang) in shown, (value, shown)


def test_english_pages_keep_the_rules_words() -> None:
    """In English a message keeps its words and values, numbers and dates as the locale writes
    them ("5000" -> "5,000", "2026-01-05" -> "Jan 5, 2026"), flags spelled out ("fan=error" ->
    "Fan: error"). A site's offline reason reads as the device pages word it ("7 minutes",
    "its link dropped")."""
    letters = re.compile(r"[^\W\d_]+")
    for kind, message, values, _english in SAMPLES:
        shown = words.alert_text(translations("en"), message, "en")
        for value in values:
            assert _shown_value(value, "en") in shown, (value, shown)
        if kind != AlertKind.site_offline:
            said = set(letters.findall(shown.lower()))
            assert set(letters.findall(message.lower())) <= said, shown


PREFIXES = [m[: len(m) // 2] for _k, m, *_ in SAMPLES] + [m for _k, m, *_ in SAMPLES]


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.text(alphabet=st.characters(codec="utf-8", categories=["Cc", "Cf", "Zs", "Nd"])),
        st.builds(lambda head, tail: head + tail, st.sampled_from(PREFIXES), st.text()),
        st.builds(
            lambda sample, at, insert: sample[:at] + insert + sample[at:],
            st.sampled_from(PREFIXES),
            st.integers(0, 300),
            st.text(alphabet="\u200f\u202e\x00\n%()s,:; 0123456789e.-", max_size=5),
        ),
        st.builds(lambda head, n: head + "9" * n, st.sampled_from(PREFIXES), st.integers(0, 5000)),
        # Every number of a real message made huge: thousands of digits, past any int or float.
        st.builds(
            lambda sample, n: re.sub(r"\d+", "9" * n, sample),
            st.sampled_from(PREFIXES),
            st.integers(1, 5000),
        ),
    ),
    st.sampled_from(["en", *LANGS, "xx"]),
)
def test_any_stored_message_is_translated_or_shown_as_stored(text: str, lang: str) -> None:
    shown = words.alert_text(translations(lang), text, lang)
    assert isinstance(shown, str)
    if words.alert_kind_of(text) is None:
        assert shown == text


def test_a_huge_message_is_shown_as_stored() -> None:
    text = f"{DEVICE} unreachable for " + "9" * 200_000 + " min, x of them in class hours"
    assert words.alert_text(translations("fr"), text, "fr") == text
    for _kind, message, *_ in SAMPLES:
        # Numbers no rule writes: past Python's int-from-text limit, past timedelta's range.
        for digits in (30, 5000):
            huge = re.sub(r"\d+", "9" * digits, message)
            shown = words.alert_text(translations("ru"), huge, "ru")
            assert isinstance(shown, str) and shown
    # The same reason on the device pages (fleet.web.words.reason_text).
    for digits in (30, 5000):
        reason = f"site agent a-1 silent for {'9' * digits} min (last heard at 2025-03-03 12:00Z)"
        assert words.reason_text(translations("ru"), reason, "ru") == reason


@pytest.fixture
def client(registered: Engine, tmp_path: Any) -> Iterator[TestClient]:
    app = create_app(
        Settings(data_dir=tmp_path, database_url=str(registered.url)), engine=registered
    )
    with TestClient(app) as c:
        yield c


def test_an_alert_page_and_list_read_in_french(
    registered: Engine, client: TestClient, tokens: Any
) -> None:
    """A technician reading in French: the alert's page and the alerts list say the message in
    French, its time in the site's zone, no UTC stamp and none of the English."""
    now = utcnow()
    heard = now - timedelta(minutes=7)
    agent = AgentFacts("upm", "upm-agent-1", "online", heard, heard)
    found = evaluate_site(agent, timedelta(minutes=3), now)
    assert found is not None
    message = _one(found, AlertKind.site_offline)
    lamp = _one(
        evaluate(device(), reading(lamp_hours=4800), PROJECTOR, TRIBHUVAN, NOON),
        AlertKind.lamp_hours,
    )
    with Session(registered) as session:
        on_site = session.exec(select(Device.id).where(Device.site_code == "upm")).first()
        assert on_site is not None
        lamp = lamp.replace(DEVICE, on_site)
        alerts = [
            Alert(
                kind=kind,
                severity="critical",
                state="open",
                subject=subject,
                site_code="upm",
                device_id=device_id,
                message=text,
                opened_at=now,
                updated_at=now,
            )
            for kind, subject, device_id, text in (
                ("site_offline", "site:upm", None, message),
                ("lamp_hours", f"device:{on_site}", on_site, lamp),
            )
        ]
        session.add_all(alerts)
        session.commit()
        ids = [a.id for a in alerts]
    headers = {"Accept-Language": "fr", **tokens.headers("technician")}
    page = client.get(f"/alerts/{ids[0]}", headers=headers)
    assert page.status_code == 200
    assert "agent du site upm-agent-1 silencieux depuis 7 minutes (dernier message à " in page.text
    assert "silent for" not in page.text and "last heard" not in page.text
    assert not re.search(r"\d\d:\d\d:\d\dZ", page.text)  # the site's time, not UTC
    listed = client.get("/alerts", headers=headers)
    assert listed.status_code == 200
    assert f"lampe de {on_site} à 4\u202f800 h, 96\u00a0% de sa durée de vie" in listed.text
    assert "order a replacement" not in listed.text and "silent for" not in listed.text
