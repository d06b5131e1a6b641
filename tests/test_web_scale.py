"""A site with 1,000 devices renders in the browser, seeded straight into the database and
served by uvicorn in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import uvicorn
from sqlalchemy import Engine
from sqlmodel import Session

from fleet.api.app import create_app
from fleet.db import make_engine, migrate
from fleet.devices.state import DeviceState
from fleet.embedded_broker import free_port
from fleet.models import Device, Room, Site
from fleet.settings import Settings
from tests.fixtures_auth import sign_in, user_token

DEVICES = 1000
STATES = list(DeviceState)
NOW = datetime.now(UTC)


def seed(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(
            Site(
                code="big",
                name="Big campus",
                country="Kenya",
                timezone="Africa/Nairobi",
                timetable={"weekly": {"mon": ["08:00-10:00"]}, "closed": []},
                synced_at=NOW,
            )
        )
        session.flush()  # rooms refer to the site
        for r in range(20):
            session.add(Room(id=f"big-room-{r}", site_code="big", name=f"Room {r}"))
        session.flush()
        for i in range(DEVICES):
            state = STATES[i % len(STATES)]
            session.add(
                Device(
                    id=f"big-dev-{i:04d}",
                    site_code="big",
                    room_id=f"big-room-{i % 20}",
                    name=f"Panel {i}",
                    vendor="Seewo",
                    model="flat panel",
                    kind="panel",
                    profile="seewo-panel",
                    protocol="snmp",
                    address=f"192.0.2.{i % 250 + 1}",
                    state=state.value,
                    state_reason=f"seeded as {state.value}",
                    state_since=NOW - timedelta(minutes=i % 90),
                    last_seen_at=NOW,
                    last_reading={"ts": NOW.isoformat(), "power": "on", "temperature_c": 40.5},
                    firmware="3.2.1",
                )
            )
        session.commit()


_TOKENS: dict[str, str] = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("scale")
    engine = make_engine(f"sqlite:///{tmp / 'fleet.db'}")
    migrate(engine)
    seed(engine)
    app = create_app(Settings(database_url=str(engine.url), data_dir=tmp), engine)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    _TOKENS["ops"] = user_token(engine, "scale-ops", "ops")
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(10)
    engine.dispose()


@pytest.fixture
def page(page: Any, server: str) -> Any:
    sign_in(page, server, _TOKENS["ops"])
    return page


def test_site_with_1000_devices_renders(server: str, page: Any) -> None:
    started = time.monotonic()
    response = page.goto(server + "/sites/big")
    assert response.status == 200
    assert page.locator("tr.device").count() == DEVICES
    assert page.locator("section.room").count() == 20
    faulty = page.locator("[data-testid=site-faulty]").inner_text()
    assert int(faulty) == sum(1 for i in range(DEVICES) if STATES[i % len(STATES)] == "faulty")
    assert time.monotonic() - started < 30


def test_overview_with_1000_devices_counts_them_all(server: str, page: Any) -> None:
    page.goto(server + "/")
    row = page.locator("tr[data-site=big]")
    assert row.locator("td").nth(2).inner_text() == str(DEVICES)
    assert "problem" in (row.get_attribute("class") or "")
