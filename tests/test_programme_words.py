"""The programme's milestones and phases as the pages say them: readable words in the page's
language on the programme page, the overview and the timeline image; the API keeps its codes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape
from xml.etree import ElementTree

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from fleet.api.app import create_app
from fleet.programme.timeline import label_width
from fleet.settings import Settings
from fleet.web.i18n import translations
from fleet.web.words import MILESTONES, milestone_text
from tests.fixtures_auth import Tokens

SVG = "{http://www.w3.org/2000/svg}"
CODES = re.compile(r"\b(agreement_signed|equipment_delivered|training_done|in_use)\b")


@pytest.fixture
def client(registered: Engine, tokens: Tokens) -> Iterator[TestClient]:
    app = create_app(Settings(database_url=str(registered.url)), engine=registered)
    with TestClient(app, headers=tokens.headers("ops")) as client:
        yield client


@pytest.mark.parametrize("lang", ["en", "fr", "ar", "ru"])
def test_the_programme_page_names_milestones_in_the_language(client: TestClient, lang: str) -> None:
    html = unescape(client.get("/programme", headers={"Accept-Language": lang}).text)
    assert not CODES.search(html), CODES.search(html)
    t = translations(lang)
    # tuit has reached installed in phase 1 (tests/test_programme.py's timeline).
    assert milestone_text(t, "installed", 1) in html
    if lang != "en":  # French says "phase" too, its milestones its own
        assert "installed (" not in html and "training done" not in html
    if lang in ("ar", "ru"):
        assert "(phase " not in html


@pytest.mark.parametrize("lang", ["ar", "ru"])
def test_the_overview_names_the_latest_milestone_in_the_language(
    client: TestClient, lang: str
) -> None:
    html = unescape(client.get("/", headers={"Accept-Language": lang}).text)
    t = translations(lang)
    shown = {milestone_text(t, code, phase) for code in MILESTONES for phase in (1, 2, 3)}
    assert any(text in html for text in shown)
    assert "(phase " not in html and not CODES.search(html)


@pytest.mark.parametrize("lang", ["en", "fr", "ar", "ru"])
def test_the_timeline_image_speaks_the_language_and_its_labels_stay_apart(
    client: TestClient, lang: str
) -> None:
    answer = client.get("/programme/tuit/timeline.svg", headers={"Accept-Language": lang})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("image/svg")
    root = ElementTree.fromstring(answer.text)
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    t = translations(lang)
    assert t.gettext("phase %(phase)s") % {"phase": 1} in texts
    assert t.gettext("today") in texts
    assert t.gettext("installed") in texts
    assert not CODES.search(answer.text)
    if lang != "en":
        assert "today" not in texts and "installed" not in texts
    labels = [
        (float(e.get("x", 0)), float(e.get("y", 0)), e.text or "")
        for e in root.iter(f"{SVG}text")
        if e.get("font-size") == "9" and float(e.get("x", 0)) >= 190
    ]
    for n, (x1, y1, a) in enumerate(labels):
        for x2, y2, b in labels[n + 1 :]:
            if abs(y1 - y2) < 9:
                assert x1 + label_width(a) <= x2 or x2 + label_width(b) <= x1, (a, b)


def test_the_api_keeps_its_codes(client: TestClient, tokens: Tokens) -> None:
    api = client.get("/api/v1/sites/tuit/timeline", headers={"Accept-Language": "ru"}).json()
    assert api["rows"][0]["subject"] == "phase 1"
    assert api["rows"][0]["milestones"][0]["milestone"] in MILESTONES
    svg = client.get("/api/v1/sites/tuit/timeline.svg", headers={"Accept-Language": "ru"}).text
    assert "phase 1" in svg and "этап" not in svg  # the API's picture stays English
    vendor = client.get("/programme/tuit/timeline.svg", headers=tokens.headers("vendor"))
    assert vendor.status_code == 403
    assert client.get("/programme/nowhere/timeline.svg").status_code == 404
