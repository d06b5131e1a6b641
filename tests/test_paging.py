"""Lists read a page at a time while rows arrive and change between the requests (issue 15,
kind 8), through the API and the pages, on SQLite and PostgreSQL: no row is repeated and none
that was there throughout is skipped.

Each test reads a list by its cursor (the Link header's rel="next", and `next` in the page
objects), and between two pages inserts rows or changes one, as ingest, the alert rules and
operators do while someone reads.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from fleet.alerts.models import Alert, AlertState
from fleet.api.app import create_app
from fleet.auth.audit import record
from fleet.ingest.pipeline import Ingest
from fleet.models import AgentMessage, Device
from fleet.paging import Order, SortKey
from fleet.reports.models import StoredReport
from fleet.rollouts.models import Rollout
from fleet.settings import Settings
from tests.fixtures_auth import Tokens
from tests.fixtures_db import RECEIVED, health, reading

T0 = RECEIVED - timedelta(days=1)
Between = Callable[[int], None]  # called with the number of pages read so far


@pytest.fixture
def client(registered: Engine, tokens: Tokens, tmp_path: Any) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path, database_url=str(registered.url))
    app = create_app(settings, engine=registered)
    with TestClient(app, headers=tokens.headers("ops")) as c:
        yield c


def read_pages(
    client: TestClient, path: str, between: Between | None = None, **params: Any
) -> list[list[dict[str, Any]]]:
    """Every page of a list, following the Link header; `between` runs after each page that
    has a next one."""
    pages: list[list[dict[str, Any]]] = []
    query = dict(params)
    while True:
        response = client.get(path, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        items = body["items"] if isinstance(body, dict) else body
        pages.append(items)
        link = response.headers.get("Link")
        if isinstance(body, dict) and "next" in body:
            assert (link is None) == (body["next"] is None), (link, body["next"])
        if link is None:
            return pages
        url = re.fullmatch(r'<([^>]+)>; rel="next"', link)
        assert url is not None, link
        assert urlsplit(url.group(1)).path == path
        query = {k: v[0] for k, v in parse_qs(urlsplit(url.group(1)).query).items()}
        assert len(pages) < 100, "the cursor does not move"
        if between is not None:
            between(len(pages))


def seen(pages: list[list[dict[str, Any]]], key: str = "id") -> list[Any]:
    return [item[key] for page in pages for item in page]


def repeated(values: list[Any]) -> list[Any]:
    return [v for v, n in Counter(values).items() if n > 1]


def open_alert(session: Session, device_id: str, opened_at: datetime, kind: str) -> Alert:
    device = session.get(Device, device_id)
    assert device is not None
    alert = Alert(
        kind=kind,
        severity="warning",
        state=AlertState.open.value,
        subject=f"device:{device_id}",
        site_code=device.site_code,
        device_id=device_id,
        message=f"{kind} on {device_id}",
        opened_at=opened_at,
        updated_at=opened_at,
    )
    session.add(alert)
    return alert


def device_ids(engine: Engine) -> list[str]:
    with Session(engine) as session:
        return list(session.exec(select(Device.id).order_by(col(Device.id))))


def test_alerts_that_open_between_pages_repeat_no_row_and_hide_none(
    registered: Engine, client: TestClient
) -> None:
    """The issue's example: with offset, two alerts opening after page 1 made alerts 4 and 5
    appear twice."""
    devices = device_ids(registered)
    with Session(registered) as session:
        # Seven alerts a minute apart, and two opened in the same instant (the id decides).
        first = [
            open_alert(session, d, T0 + timedelta(minutes=i), "device_error")
            for i, d in enumerate(devices[:7])
        ]
        first += [
            open_alert(session, d, T0 + timedelta(minutes=3), "firmware") for d in devices[:2]
        ]
        session.commit()
        before = {a.id for a in first}
    newer = iter(devices[7:])

    def alerts_open(pages_read: int) -> None:
        with Session(registered) as session:
            # Newer than everything read so far, and one at the very instant of the cursor.
            open_alert(session, next(newer), RECEIVED, "device_error")
            open_alert(session, next(newer), T0 + timedelta(minutes=3), "device_error")
            session.commit()

    pages = read_pages(client, "/api/v1/alerts", alerts_open, limit=3)
    ids = seen(pages)
    assert not repeated(ids)
    assert before <= set(ids), f"skipped: {before - set(ids)}"
    # Newest first, ties by id, across the pages.
    keys = [(a["opened_at"], a["id"]) for page in pages for a in page]
    assert keys == sorted(keys, reverse=True)


def test_a_device_leaving_a_filtered_list_between_pages_hides_no_other(
    registered: Engine, client: TestClient
) -> None:
    """The issue's example: a device that changed state between pages hid another device that
    was online throughout."""
    devices = device_ids(registered)
    online = devices[:9]
    with Session(registered) as session:
        session.execute(update(Device).where(col(Device.id).in_(online)).values(state="online"))
        session.commit()
    changed: list[str] = []

    def one_goes_off(pages_read: int) -> None:
        # A device already shown leaves the list: with offset, every row behind it moved up
        # one place and the first of the next page was never shown.
        gone = online[pages_read - 1]
        with Session(registered) as session:
            session.execute(
                update(Device).where(col(Device.id) == gone).values(state="unreachable")
            )
            session.commit()
        changed.append(gone)

    pages = read_pages(client, "/api/v1/devices", one_goes_off, state="online", limit=2)
    ids = seen(pages)
    assert not repeated(ids)
    throughout = [d for d in online if d not in changed]
    assert set(throughout) <= set(ids), f"hidden: {set(throughout) - set(ids)}"
    assert ids == sorted(ids)


def test_devices_joining_a_filtered_list_between_pages_are_seen_once(
    registered: Engine, client: TestClient
) -> None:
    devices = device_ids(registered)
    with Session(registered) as session:
        session.execute(
            update(Device).where(col(Device.id).in_(devices[:6])).values(state="online")
        )
        session.commit()
    joined: list[str] = []

    def one_joins(pages_read: int) -> None:
        # Further on in the order than the cursor, always: it is seen when its place comes.
        late = devices[12 + pages_read]
        with Session(registered) as session:
            session.execute(update(Device).where(col(Device.id) == late).values(state="online"))
            session.commit()
        joined.append(late)

    ids = seen(read_pages(client, "/api/v1/devices", one_joins, state="online", limit=2))
    assert not repeated(ids)
    assert set(devices[:6]) | set(joined) == set(ids)


def test_audit_entries_written_between_pages_repeat_none(
    registered: Engine, client: TestClient
) -> None:
    for i in range(7):
        record(registered, actor="ops-centre", action=f"test.{i}", at=T0 + timedelta(minutes=i))
    for _ in range(2):  # two in one instant: the id decides
        record(registered, actor="ops-centre", action="test.same", at=T0 + timedelta(minutes=3))

    def more(pages_read: int) -> None:
        record(registered, actor="ops-centre", action="test.later")
        record(registered, actor="ops-centre", action="test.then", at=T0 + timedelta(minutes=3))

    pages = read_pages(client, "/api/v1/audit", more, limit=3, actor="ops-centre")
    assert not repeated(seen(pages))
    listed = [e["action"] for page in pages for e in page]
    assert {f"test.{i}" for i in range(7)} <= set(listed)
    assert listed.count("test.same") == 2


def test_a_sites_events_arriving_between_pages_repeat_none(
    registered: Engine, client: TestClient
) -> None:
    def event(kind: str, n: int) -> AgentMessage:
        body = {"kind": kind, "agent_id": "upm-agent-1", "message": f"{kind} {n}", "data": {}}
        return AgentMessage(site_code="upm", kind="event", ts=T0, received_at=T0, body=body)

    with Session(registered) as session:
        for n in range(8):
            session.add(event("discovery" if n % 2 else "agent_error", n))
        session.commit()

    def more(pages_read: int) -> None:
        with Session(registered) as session:
            session.add(event("discovery", 100 + pages_read))
            session.commit()

    pages = read_pages(client, "/api/v1/sites/upm/events", more, limit=2, kind="discovery")
    messages = [e["message"] for page in pages for e in page]
    assert not repeated(seen(pages))
    assert messages == ["discovery 7", "discovery 5", "discovery 3", "discovery 1"]


def test_stored_reports_arriving_between_pages_are_seen_once_where_they_belong(
    registered: Engine, client: TestClient
) -> None:
    """Newest period first, then by vendor: a report stored between pages for an older period
    shows on a later page, one for a newer period is not shown, none repeats."""

    def report(vendor: str, month: int) -> StoredReport:
        content = f"{vendor} {month}".encode()
        return StoredReport(
            vendor=vendor,
            period="monthly",
            period_start=date(2024, month, 1),
            period_end=date(2024, month, 28),
            format="csv",
            media_type="text/csv",
            filename=f"usage-{vendor}-{month}.csv",
            sha256=hashlib.sha256(content).hexdigest(),
            size=len(content),
            content=content,
            created_at=T0,
        )

    with Session(registered) as session:
        for month in (5, 6, 7):
            for vendor in ("MAXHUB", "Seewo", "Dazzleview"):
                session.add(report(vendor, month))
        session.commit()
    added: list[tuple[str, int]] = []

    def more(pages_read: int) -> None:
        with Session(registered) as session:
            session.add(report(f"Late{pages_read:02d}", 1))  # older: ahead of the cursor
            session.add(report(f"Early{pages_read:02d}", 12))  # newer: behind it
            session.commit()
        added.append((f"Late{pages_read:02d}", 1))

    pages = read_pages(client, "/api/v1/reports", more, limit=2)
    rows = [(r["vendor"], r["period_start"]) for page in pages for r in page]
    assert not repeated(seen(pages))
    for month in (5, 6, 7):
        for vendor in ("MAXHUB", "Seewo", "Dazzleview"):
            assert rows.count((vendor, f"2024-{month:02d}-01")) == 1
    assert [(v, f"2024-{m:02d}-01") for v, m in added] == [
        r for r in rows if r[0].startswith("Late")
    ]
    assert not [r for r in rows if r[0].startswith("Early")]


def test_rollouts_created_between_pages_repeat_none(registered: Engine, client: TestClient) -> None:
    def rollout(name: str) -> Rollout:
        return Rollout(
            name=name,
            profile="seewo-panel",
            release_version="3.3.0",
            release_sha256="0" * 64,
            created_at=T0,
            updated_at=T0,
        )

    with Session(registered) as session:
        for n in range(5):
            session.add(rollout(f"r{n}"))
        session.commit()

    def more(pages_read: int) -> None:
        with Session(registered) as session:
            session.add(rollout(f"new{pages_read}"))
            session.commit()

    names = [
        r["name"] for page in read_pages(client, "/api/v1/rollouts", more, limit=2) for r in page
    ]
    assert names == ["r4", "r3", "r2", "r1", "r0"]


def test_device_samples_arriving_between_pages_repeat_none(
    registered: Engine, client: TestClient
) -> None:
    """The health list pages by `to=` the last sample's time, unique per device."""
    panel = "upm-sc1-panel-1"
    ingest = Ingest(registered)
    ingest.handle([health("upm", [reading(panel, T0 + timedelta(minutes=i)) for i in range(7)])])
    later = iter(range(100, 110))

    def more(pages_read: int) -> None:
        minute = next(later)
        ingest.handle([health("upm", [reading(panel, T0 + timedelta(minutes=minute))])])

    pages = read_pages(client, f"/api/v1/devices/{panel}/health", more, limit=3)
    times = [s["ts"] for page in pages for s in page]
    assert not repeated(times)
    assert len(times) == 7 and times == sorted(times, reverse=True)


def test_the_alerts_page_follows_the_cursor_to_older_alerts(
    registered: Engine, client: TestClient
) -> None:
    """The page showed the newest 200 and nothing older; it pages by the API's cursor now."""
    devices = device_ids(registered)
    with Session(registered) as session:
        for i in range(205):  # resolved: history, any number per device
            alert = open_alert(
                session, devices[i % len(devices)], T0 + timedelta(seconds=i), "device_error"
            )
            alert.state = AlertState.resolved.value
        session.commit()

    def shown(html: str) -> list[int]:
        return [int(a) for a in re.findall(r'data-alert="(\d+)"', html)]

    first = client.get("/alerts", params={"state": "resolved"})
    assert first.status_code == 200
    assert len(shown(first.text)) == 200 and "205 alerts: the newest 200 here" in first.text
    older = re.search(r'href="(/alerts\?[^"]+)" data-testid="older"', first.text)
    assert older is not None
    with Session(registered) as session:  # more history while the page is read
        newer = open_alert(session, devices[0], RECEIVED, "firmware")
        newer.state = AlertState.resolved.value
        session.commit()
    second = client.get(older.group(1).replace("&amp;", "&"))
    assert second.status_code == 200
    assert len(shown(second.text)) == 5
    assert not set(shown(first.text)) & set(shown(second.text))
    assert 'data-testid="older"' not in second.text


def test_a_cursor_of_another_list_or_forged_and_offset_are_refused_with_the_fix(
    client: TestClient,
) -> None:
    devices = Order("devices", SortKey(col(Device.id), "str"))
    alerts_cursor = client.get("/api/v1/alerts", params={"limit": 1}).json()["next"]
    for path, cursor in (
        ("/api/v1/alerts", devices.cursor(["upm-sc1-panel-1"])),
        ("/api/v1/devices", "Zm9yZ2Vk"),
        ("/api/v1/rollouts", Order("rollouts", SortKey(col(Rollout.id), "int32")).cursor([2**40])),
        ("/api/v1/audit", alerts_cursor or devices.cursor(["x"])),
    ):
        response = client.get(path, params={"after": cursor})
        assert response.status_code == 422, (path, response.text)
        [error] = response.json()["detail"]
        assert error["loc"] == ["query", "after"] and "leave 'after' out" in error["msg"]
    for path in ("/api/v1/alerts", "/api/v1/devices", "/api/v1/audit"):
        response = client.get(path, params={"offset": 3})
        assert response.status_code == 422
        assert "pass 'after' the 'next' cursor" in response.text


def test_the_reports_and_rollouts_pages_follow_the_cursor_to_older_rows(
    registered: Engine, client: TestClient
) -> None:
    with Session(registered) as session:
        for n in range(103):  # one stored report a week, newest last
            start = date(2023, 1, 2) + timedelta(weeks=n)
            session.add(
                StoredReport(
                    vendor="Seewo",
                    period="weekly",
                    period_start=start,
                    period_end=start + timedelta(days=6),
                    format="csv",
                    media_type="text/csv",
                    filename=f"usage-seewo-{start}.csv",
                    sha256="0" * 64,
                    size=1,
                    content=b"x",
                    created_at=T0,
                )
            )
        for n in range(53):
            session.add(
                Rollout(
                    name=f"r{n}",
                    profile="seewo-panel",
                    release_version="3.3.0",
                    release_sha256="0" * 64,
                    state="cancelled",
                    created_at=T0,
                    updated_at=T0,
                )
            )
        session.commit()
    for path, marker, per_page, total in (
        ("/reports", r'data-report="(\d+)"', 100, 103),
        ("/rollouts", r'data-rollout="(\d+)"', 50, 53),
    ):
        first = client.get(path)
        assert first.status_code == 200
        shown = re.findall(marker, first.text)
        assert len(shown) == per_page, path
        older = re.search(rf'href="({path}\?after=[^"]+)" data-testid="older"', first.text)
        assert older is not None, path
        rest = re.findall(marker, client.get(older.group(1)).text)
        assert len(rest) == total - per_page and not set(rest) & set(shown), path
