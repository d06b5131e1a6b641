"""The overview's site rows, written in Python by SiteRow.html rather than by Jinja: whatever a
site config or an agent puts in a site's name, country, code or agent state, and whatever a
milestone or a problem says, reads back as that text, in every language and for every role,
and makes no element of its own."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import Markup
from sqlalchemy import Engine
from sqlmodel import Session

from fleet.alerts.queries import OpenAlerts
from fleet.api.app import create_app
from fleet.models import AgentStatus, Site
from fleet.settings import Settings
from fleet.sites.schemas import AgentStatusOut, SiteSummary
from fleet.web import overview
from fleet.web.i18n import LANGUAGES, translations
from fleet.web.overview import LEVELS, SiteRow
from fleet.web.templating import STATE_ORDER
from fleet.web.viewer import Viewer
from fleet.web.words import AGENT_STATES, word
from tests.fixtures_auth import Tokens

# Quotes of both kinds, markup, an entity already escaped once, control characters, a line
# separator and text outside the BMP.
HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>\'&amp;& \x01\x7f\t\u2028 é 👍'
LABELS = ("Site", "Status", "Devices", "Open alerts", "Programme", "Agent", "Last reported")
ALLOWED_TAGS = {"tr", "td", "a", "span", "time"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None]) -> None:
        self.tag, self.attrs = tag, attrs
        self.children: list[Node | str] = []

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def find(self, tag: str, **attrs: str) -> list[Node]:
        """Every element below of `tag` whose attributes hold `attrs` (class_: one of its
        classes)."""
        found = []
        for child in self.children:
            if isinstance(child, str):
                continue
            wanted_class = attrs.get("class_")
            if (
                child.tag == tag
                and all(child.attrs.get(k) == v for k, v in attrs.items() if k != "class_")
                and (
                    wanted_class is None or wanted_class in (child.attrs.get("class") or "").split()
                )
            ):
                found.append(child)
            found.extend(child.find(tag, **attrs))
        return found


class Tree(HTMLParser):
    """The HTML as a tree, entities and attribute values unescaped as a browser does."""

    VOID = frozenset({"img", "br", "meta", "link", "input", "hr", "source"})

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]
        self.tags: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs))
        self.tags.append(tag)
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        # As a browser: an end tag closes the innermost open element of its name (a page
        # leaves some, such as <p>, to be closed by what follows).
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def _site(code: str, name: str, country: str, agent_state: str | None) -> SiteSummary:
    at = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
    agent = (
        AgentStatusOut(
            agent_id="a",
            state=agent_state,
            version="",
            boot_id="",
            ts=at,
            received_at=at,
            last_message_at=at,
        )
        if agent_state is not None
        else None
    )
    return SiteSummary(
        code=code,
        name=name,
        institution="",
        country=country,
        timezone="UTC",
        vendor="",
        devices=7,
        devices_by_state={"faulty": 2, "online": 5},
        agent=agent,
        last_reported_at=at,
        open_alerts=3,
    )


def _check_row(
    html: str,
    site: SiteSummary,
    row: SiteRow,
    lang: str,
    viewer: Viewer,
) -> None:
    t = translations(lang)
    tree = Tree(html)
    assert set(tree.tags) <= ALLOWED_TAGS, html
    (tr,) = tree.root.find("tr")
    assert tr.attrs["data-site"] == site.code
    assert tr.attrs["data-level"] == row.level
    cells = tr.find("td")
    assert len(cells) == len(LABELS) + len(STATE_ORDER)
    labelled = [c for c in cells if "data-label" in c.attrs]
    # Our own catalogs' words are written as they are: they must read back as they are.
    assert [c.attrs["data-label"] for c in labelled] == [t.gettext(w) for w in LABELS]
    site_cell, status, _, alerts, programme, agent, _ = labelled
    assert site_cell.attrs["data-value"] == site.name
    links = site_cell.find("a")
    if viewer.may("sites:read"):
        assert [a.text for a in links] == [site.name]
    else:
        assert links == []
    assert [s.text for s in site_cell.find("span", class_="code")] == [site.code]
    assert [s.text for s in site_cell.find("span", class_="country")] == [site.country]
    assert site_cell.text == f"{site.name} {site.code} {site.country}"
    shown = [s.text for s in status.find("span", class_="problem-text")]
    assert shown == ([", ".join(row.problems)] if row.problems else [])
    assert programme.text.startswith(row.milestone)
    if site.agent is not None:
        assert agent.attrs["data-value"] == site.agent.state
        (said,) = agent.find("span", class_="agent")
        assert said.text == word(t, AGENT_STATES, site.agent.state)
        assert said.attrs["class"] == f"agent agent-{site.agent.state}"
    else:
        assert agent.attrs["data-value"] == "none"
    if row.open_alerts.total:
        (link,) = alerts.find("a")
        assert link.text == str(row.open_alerts.total)
        n = row.open_alerts.critical
        assert link.attrs["title"] == t.ngettext("%(num)d critical", "%(num)d critical", n) % {
            "num": n
        }


TEXT = st.one_of(
    st.just(HOSTILE),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00\r")),
    st.text(alphabet="<>&\"';=/ ampltg#x0123", max_size=30),
)
VIEWERS = (
    Viewer(name="o", role="ops"),
    Viewer(name="t", role="technician", sites=frozenset({"upm"})),
    Viewer(name="v", role="vendor", vendor="Seewo"),
)


@settings(max_examples=300, deadline=None)
@given(
    code=TEXT,
    name=TEXT,
    country=TEXT,
    agent_state=st.one_of(st.none(), st.sampled_from(["online", "offline"]), TEXT),
    milestone=TEXT,
    problems=st.lists(TEXT, max_size=3),
    late=st.booleans(),
    critical=st.integers(0, 3),
    warning=st.integers(0, 3),
    level=st.sampled_from(LEVELS),
    lang=st.sampled_from(sorted(LANGUAGES)),
    viewer=st.sampled_from(VIEWERS),
)
def test_a_row_reads_back_as_its_values_whatever_they_hold(
    code: str,
    name: str,
    country: str,
    agent_state: str | None,
    milestone: str,
    problems: list[str],
    late: bool,
    critical: int,
    warning: int,
    level: str,
    lang: str,
    viewer: Viewer,
) -> None:
    site = _site(code, name, country, agent_state)
    alerts = (
        OpenAlerts()
        .plus("critical", "device_error", critical)
        .plus("warning", "lamp_hours", warning)
    )
    row = SiteRow(
        site=site,
        problems=problems,
        open_alerts=alerts,
        milestone=milestone,
        programme_late=late,
        level=level,
    )
    html = row.html(1, Markup('<time datetime="x">now</time>'), translations(lang), viewer)
    _check_row(str(html), site, row, lang, viewer)


# --- the whole page, from a database ----------------------------------------------------------

HOSTILE_MILESTONE = f"{HOSTILE} (phase 1)"


@pytest.fixture
def hostile(registered: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """upm named, placed and its agent's state written with markup, quotes and control
    characters, as a site config or an agent could; its milestone's words too (a milestone is
    one of a few codes in the database, so its words are what the catalogs hold)."""
    at = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
    with Session(registered) as session:
        site = session.get(Site, "upm")
        assert site is not None
        site.name, site.country = HOSTILE, f"{HOSTILE} C"
        session.add(site)
        session.add(
            AgentStatus(
                site_code="upm",
                agent_id="a",
                state=HOSTILE,
                ts=at,
                received_at=at,
                last_message_at=at,
            )
        )
        session.commit()
    real = overview.milestones_by_site

    def milestones(session: Session, t: Any = None) -> dict[str, tuple[str, bool]]:
        return {**real(session, t), "upm": (HOSTILE_MILESTONE, True)}

    monkeypatch.setattr(overview, "milestones_by_site", milestones)
    return registered


@pytest.fixture
def client(hostile: Engine, tokens: Tokens, tmp_path: Any) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=tmp_path, database_url=str(hostile.url)), engine=hostile)
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("role", ["ops", "technician"])
@pytest.mark.parametrize("lang", sorted(LANGUAGES))
def test_the_overview_shows_a_hostile_site_as_text(
    client: TestClient, tokens: Tokens, role: str, lang: str
) -> None:
    client.cookies.set("fleet_lang", lang)
    for path in ("/", "/?partial=true"):
        response = client.get(path, headers=tokens.headers(role))
        assert response.status_code == 200
        raw = response.text
        assert "<script>alert" not in raw and "<img src=x" not in raw
        assert "&lt;script&gt;alert" in raw
        tree = Tree(raw)
        assert "img" not in tree.tags
        # Scripts the page loads, never one written inline by a value.
        assert all(s.attrs.get("src") for s in tree.root.find("script")), path
        (tr,) = tree.root.find("tr", **{"data-site": "upm"})
        t = translations(lang)
        site_cell = tr.find("td", **{"data-label": t.gettext("Site")})[0]
        assert site_cell.attrs["data-value"] == HOSTILE
        assert [a.text for a in site_cell.find("a")] == [HOSTILE]
        assert [s.text for s in site_cell.find("span", class_="country")] == [f"{HOSTILE} C"]
        programme = tr.find("td", **{"data-label": t.gettext("Programme")})[0]
        assert programme.text == f"{HOSTILE_MILESTONE} {t.gettext('late')}"
        agent = tr.find("td", **{"data-label": t.gettext("Agent")})[0]
        assert agent.attrs["data-value"] == HOSTILE
        (said,) = agent.find("span", class_="agent")
        assert said.text == word(t, AGENT_STATES, HOSTILE)
        problems = tr.find("span", class_="problem-text")[0].text
        assert word(t, AGENT_STATES, HOSTILE) in problems


def test_a_vendor_sees_its_hostile_site_as_text(client: TestClient, tokens: Tokens) -> None:
    """A vendor's overview lists the sites where it has devices (upm has Seewo panels), with
    neither the site's agent nor its programme."""
    raw = client.get("/", headers=tokens.headers("vendor")).text
    assert "<script>alert" not in raw and "&lt;script&gt;alert" in raw
    tree = Tree(raw)
    assert "img" not in tree.tags
    (tr,) = tree.root.find("tr", **{"data-site": "upm"})
    site_cell = tr.find("td", **{"data-label": "Site"})[0]
    assert site_cell.attrs["data-value"] == HOSTILE
    assert site_cell.find("a") == []  # a vendor opens no site page
    assert [s.text for s in site_cell.find("span", class_="country")] == [f"{HOSTILE} C"]
    assert HOSTILE not in tr.find("td", **{"data-label": "Programme"})[0].text
