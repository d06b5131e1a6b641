"""The device list as `GET /api/v1/devices` serves it: statements built once per shape of
request (fleet.devices.queries.device_rows) and rows written out as JSON without a model
(fleet.api.schemas.DEVICE_PAGE_BODY). Every shape keeps the caller's scope and every filter,
pages by cursor to the end, leaks nothing between requests running at once, and writes the
same bytes as DevicePage of DeviceOut models, whatever the values."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from fleet.api.app import create_app
from fleet.api.schemas import DEVICE_PAGE_BODY, DevicePage
from fleet.auth.permissions import Caller
from fleet.devices.queries import DEVICE_FIELDS, device_rows, find_devices
from fleet.devices.schemas import DeviceOut
from fleet.devices.state import DeviceState
from fleet.models import Device
from fleet.settings import Settings
from tests.fixtures_auth import Tokens

# --- the JSON, without a database ---------------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8"))
ZONES = st.sampled_from(
    [None, UTC, timezone(timedelta(hours=5, minutes=45)), timezone(-timedelta(hours=11))]
)
WHEN = st.one_of(st.none(), st.builds(lambda d, z: d.replace(tzinfo=z), st.datetimes(), ZONES))
ROW = st.fixed_dictionaries(
    {
        "id": TEXT,
        "site_code": TEXT,
        "room_id": TEXT,
        "name": TEXT,
        "vendor": TEXT,
        "model": TEXT,
        "kind": TEXT,
        "profile": TEXT,
        "protocol": TEXT,
        "address": TEXT,
        "port": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
        "retired_at": WHEN,
        "state": TEXT,
        "state_reason": TEXT,
        "state_since": WHEN,
        "last_seen_at": WHEN,
        "firmware": st.one_of(st.none(), TEXT),
        "power": st.one_of(st.none(), TEXT),
        "reachable": st.one_of(st.none(), st.booleans()),
    }
)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(ROW, max_size=4),
    total=st.integers(0, 2**31),
    limit=st.integers(1, 500),
    next_=st.one_of(st.none(), TEXT),
)
def test_rows_are_written_as_devicepage_writes_its_models(
    rows: list[dict[str, Any]], total: int, limit: int, next_: str | None
) -> None:
    """Naive and aware times in any zone, None, any text, the widest ports: the same bytes.
    (A serializer, alias or exclusion added to DeviceOut would not reach DEVICE_ROW, which
    copies only its fields' types: this fails then.)"""
    rows = [{name: r[name] for name in DEVICE_FIELDS} for r in rows]
    body = {"items": rows, "total": total, "limit": limit, "next": next_}
    model = DevicePage(
        items=[DeviceOut.model_validate(r) for r in rows], total=total, limit=limit, next=next_
    )
    assert DEVICE_PAGE_BODY.dump_json(body) == model.model_dump_json().encode()


# --- every shape of request, against the database ------------------------------------------------

CALLERS = {
    "anyone": None,
    "ops": Caller(name="o", role="ops"),
    "tech-upm": Caller(name="t1", role="technician", sites=frozenset({"upm"})),
    "tech-two": Caller(name="t2", role="technician", sites=frozenset({"upm", "tribhuvan"})),
    "tech-none": Caller(name="t0", role="technician", sites=frozenset()),
    "vendor": Caller(name="v", role="vendor", vendor="Seewo"),
    "vendor-lower": Caller(name="v2", role="vendor", vendor="sEEWO"),
}
SHAPES = list(
    itertools.product(
        [None, "upm", "tribhuvan"],  # site
        [None, "SEEWO"],  # vendor
        [None, "panel"],  # kind
        [None, DeviceState.online],  # state
        [False, True],  # include_retired
    )
)
LIMIT = 2


@pytest.fixture
def fleet(registered: Engine) -> Engine:
    """Devices in every state, round the fleet; one Seewo panel at upm and one projector
    retired; odd text and times."""
    states = list(DeviceState)
    with Session(registered) as session:
        devices = session.exec(select(Device).order_by(col(Device.id))).all()
        for i, device in enumerate(devices):
            device.state = states[i % len(states)].value
            device.last_seen_at = (
                datetime(2025, 3, 3, 12, 0, i, i * 1001, tzinfo=UTC) if i % 3 else None
            )
            device.reachable = (None, True, False)[i % 3]
            device.port = None if i % 2 else 65535
            device.name = f'{device.name} ✓ "{i}" <b>&amp; \u2028'
            session.add(device)
        upm_seewo = [d for d in devices if d.site_code == "upm" and d.vendor == "Seewo"]
        upm_seewo[0].retired_at = datetime(2025, 1, 1, tzinfo=UTC)
        session.add(upm_seewo[0])
        projector = next(d for d in devices if d.kind == "projector" and d.site_code != "upm")
        projector.retired_at = datetime(2025, 1, 2, tzinfo=UTC)
        session.add(projector)
        session.commit()
    return registered


def _expected(
    devices: list[Device],
    caller: Caller | None,
    site: str | None,
    vendor: str | None,
    kind: str | None,
    state: DeviceState | None,
    include_retired: bool,
) -> list[str]:
    return [
        d.id
        for d in devices  # in the database's own order of ids
        if (caller is None or caller.sites is None or d.site_code in caller.sites)
        and (caller is None or caller.vendor is None or d.vendor.lower() == caller.vendor.lower())
        and (site is None or d.site_code == site)
        and (vendor is None or d.vendor.lower() == vendor.lower())
        and (kind is None or d.kind == kind)
        and (state is None or d.state == state.value)
        and (include_retired or d.retired_at is None)
    ]


def _walk(engine: Engine, caller: Caller | None, shape: tuple[Any, ...]) -> list[Any]:
    """Every page of one shape, from the first by each page's cursor: (ids, total, next)."""
    site, vendor, kind, state, include_retired = shape
    pages: list[Any] = []
    after = None
    with Session(engine) as session:
        while True:
            page = device_rows(
                session,
                caller,
                site=site,
                vendor=vendor,
                kind=kind,
                state=state,
                include_retired=include_retired,
                limit=LIMIT,
                after=after,
            )
            pages.append(([d["id"] for d in page.items], page.total, page.next))
            if page.next is None:
                return pages
            assert len(pages) < 50, "the cursor does not move on"
            after = page.next


def test_every_shape_keeps_the_scope_and_filters_and_pages_to_the_end(fleet: Engine) -> None:
    with Session(fleet) as session:
        devices = list(session.exec(select(Device).order_by(col(Device.id))).all())
    for (who, caller), shape in itertools.product(CALLERS.items(), SHAPES):
        expected = _expected(devices, caller, *shape)
        pages = _walk(fleet, caller, shape)
        seen = [i for ids, _, _ in pages for i in ids]
        assert seen == expected, (who, shape)
        assert {total for _, total, _ in pages} == {len(expected)}, (who, shape)
        # Full pages but the last, which ends the list even when it is full: no empty page
        # after it, and one empty page for an empty list.
        n = max(1, -(-len(expected) // LIMIT))
        sizes = [len(ids) for ids, _, _ in pages]
        assert sizes == [LIMIT] * (n - 1) + [len(expected) - LIMIT * (n - 1)], (who, shape)


def test_requests_running_at_once_get_their_own_rows(fleet: Engine) -> None:
    """The statements are shared by every request of a shape: threads running different
    callers and filters through them at once each get what they get alone."""
    work = [(c, s) for c, s in itertools.product(CALLERS.values(), SHAPES)]
    alone = [_walk(fleet, c, s) for c, s in work]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda w: _walk(fleet, *w), work * 2))
    assert together == alone * 2


def test_find_devices_gives_the_same_devices_as_models(fleet: Engine) -> None:
    caller = CALLERS["tech-two"]
    with Session(fleet) as session:
        models = find_devices(session, caller, include_retired=True, limit=3)
        rows = device_rows(session, caller, include_retired=True, limit=3)
        orm = [session.get(Device, d["id"]) for d in rows.items]
    assert [m.model_dump() for m in models.items] == rows.items
    assert models.items == [DeviceOut.model_validate(d) for d in orm]
    assert (models.next, models.total) == (rows.next, rows.total)


# --- through the API ----------------------------------------------------------------------------


@pytest.fixture
def client(fleet: Engine, tokens: Tokens, tmp_path: Any) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=tmp_path, database_url=str(fleet.url)), engine=fleet)
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("role", ["ops", "technician", "vendor"])
def test_the_api_writes_each_page_as_devicepage_of_the_stored_devices(
    client: TestClient, fleet: Engine, tokens: Tokens, role: str
) -> None:
    """Byte for byte what DevicePage wrote of DeviceOut models read through the ORM, with
    the odd names and times the fixture stored, on SQLite and PostgreSQL alike."""
    query = "/api/v1/devices?include_retired=true&limit=4"
    url, pages = query, 0
    with Session(fleet) as session:
        while True:
            response = client.get(url, headers=tokens.headers(role))
            assert response.status_code == 200, response.text
            got = response.json()
            models = [DeviceOut.model_validate(session.get(Device, d["id"])) for d in got["items"]]
            want = DevicePage(items=models, total=got["total"], limit=4, next=got["next"])
            assert response.content == want.model_dump_json().encode()
            pages += 1
            if got["next"] is None:
                break
            assert response.headers["link"].endswith('rel="next"')
            url = f"{query}&after={got['next']}"
    assert pages > 1
