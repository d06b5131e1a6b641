"""Hypothesis throws topics and payloads at the ingest entry point: it never raises, and
every message is either stored (or recognised as a duplicate) or dead-lettered with a reason."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import Engine, text
from ulid import ULID

from fleet.db import make_engine, migrate
from fleet.devices.registry import sync_registry
from fleet.ingest.pipeline import IncomingMessage, Ingest
from fleet.protocol.messages import CheckedBatch, HealthBatch
from fleet.protocol.site_config import load_sites

ROOT = "fleet/v1"
SITES = ["upm", "tribhuvan", "usthb", "nowhere"]
DEVICES = ["upm-sc1-panel-1", "upm-sc2-projector", "tu-sc1-panel-1", "ghost-device", "UPPER"]
RECEIVED = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
CASES = {"n": 0}


@pytest.fixture(scope="module")
def fuzz_ingest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Ingest, Engine]]:
    path: Path = tmp_path_factory.mktemp("fuzz") / "fleet.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    sync_registry(engine, load_sites())
    yield Ingest(engine, topic_root=ROOT), engine
    print(f"\n[fuzz] {CASES['n']} generated messages went through ingest")
    engine.dispose()


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
timestamps = st.one_of(
    st.datetimes(
        min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),  # naive: must be refused
    st.text(max_size=30),
)
readings = st.fixed_dictionaries(
    {"device": st.sampled_from(DEVICES), "ts": timestamps, "reachable": st.booleans()},
    optional={
        "power": st.sampled_from(["on", "standby", "off", "warming", "exploded", ""]),
        "temperature_c": st.one_of(st.floats(allow_nan=True), st.integers(-(10**20), 10**20)),
        "lamp_hours": st.one_of(st.floats(), st.text(max_size=5)),
        "firmware": st.text(max_size=80),
        "input": st.text(max_size=80),
        "errors": st.one_of(
            st.dictionaries(
                st.sampled_from(["fan", "lamp", "cover", "bogus"]),
                st.sampled_from(["ok", "warning", "error", "boom"]),
            ),
            json_values,
        ),
        "metrics": st.dictionaries(st.text(max_size=8), json_scalars, max_size=5),
        "extra": json_values,
    },
)
batches = st.fixed_dictionaries(
    {
        "schema": st.sampled_from([1, 1, 1, 2, "1"]),
        "msg_id": st.one_of(st.builds(lambda: str(ULID())), st.text(max_size=30)),
        "site": st.sampled_from(SITES),
        "agent_id": st.text(min_size=0, max_size=70),
        "seq": st.one_of(st.integers(min_value=-5, max_value=2**70), st.text(max_size=4)),
        "sent_at": timestamps,
        "readings": st.lists(readings, max_size=6),
    }
)
agent_states = st.fixed_dictionaries(
    {
        "state": st.sampled_from(["online", "offline", "sleeping"]),
        "agent_id": st.text(max_size=70),
        "version": st.text(max_size=40),
        "boot_id": st.text(max_size=70),
        "ts": timestamps,
    }
)
topics = st.one_of(
    st.builds(lambda s: f"{ROOT}/{s}/health", st.sampled_from(SITES)),
    st.builds(lambda s: f"{ROOT}/{s}/agent/state", st.sampled_from(SITES)),
    st.builds(
        lambda s, d: f"{ROOT}/{s}/devices/{d}/health",
        st.sampled_from(SITES),
        st.sampled_from(DEVICES),
    ),
    st.builds(lambda s: f"{ROOT}/{s}/events", st.sampled_from(SITES)),
    st.text(max_size=60),
    st.builds(lambda t: f"{ROOT}/{t}", st.text(max_size=40)),
)


def encode(value: Any) -> bytes:
    return json.dumps(value, default=str).encode()


payloads = st.one_of(
    batches.map(encode),
    agent_states.map(encode),
    readings.map(encode),
    json_values.map(encode),
    st.binary(max_size=300),
    st.just(b""),
    st.just(b"\x00" * 10),
    st.just(b"{" * 3000),  # deeply nested garbage
    st.just(b" " * (256 * 1024 + 1)),  # one byte over the limit
    batches.map(encode).map(lambda b: b.replace(b'"', b"'", 1)),
)
messages = st.lists(st.tuples(topics, payloads), min_size=1, max_size=8)


def dead_letters(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT COUNT(*) FROM dead_letter")).scalar_one())


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
    derandomize=True,
)
@given(group=messages, offset=st.integers(min_value=0, max_value=10**6))
def test_ingest_never_raises_and_accounts_for_every_message(
    fuzz_ingest: tuple[Ingest, Engine], group: list[tuple[str, bytes]], offset: int
) -> None:
    ingest, engine = fuzz_ingest
    received = RECEIVED + timedelta(seconds=offset)
    incoming = [IncomingMessage(topic, payload, received) for topic, payload in group]
    before = dead_letters(engine)
    outcomes = ingest.handle(incoming)
    CASES["n"] += len(incoming)
    assert len(outcomes) == len(incoming)
    rejected = [o for o in outcomes if o.status == "rejected"]
    for outcome in outcomes:
        assert outcome.status in ("stored", "duplicate", "rejected")
        if outcome.status == "rejected":
            assert outcome.reason is not None and outcome.detail
    assert dead_letters(engine) - before == len(rejected)


metric_values = st.one_of(
    json_scalars,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, "\x1b[2J", "a\x00b", "\u0085"]),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    metrics=st.dictionaries(st.text(max_size=8), metric_values, max_size=5),
    ts=st.one_of(st.just(RECEIVED.isoformat()), timestamps),
)
@example(metrics={"big": 2**63}, ts=RECEIVED.isoformat())
@example(metrics={"nan": math.nan}, ts=RECEIVED.isoformat())
@example(metrics={"esc": "\x1b[2J"}, ts=RECEIVED.isoformat())
def test_a_batch_validated_whole_takes_and_refuses_what_reading_by_reading_does(
    metrics: dict[str, Any], ts: str
) -> None:
    """The ingest's one-call check of a batch (CheckedBatch) and the contract's Reading agree
    on every reading: the same ones taken, with the same values, the same ones refused."""
    reading = {"device": "upm-sc1-panel-1", "ts": ts, "reachable": True, "metrics": metrics}
    batch = {
        "msg_id": str(ULID()),
        "site": "upm",
        "agent_id": "agent",
        "seq": 1,
        "sent_at": RECEIVED.isoformat(),
        "readings": [reading],
    }
    payload = json.dumps(batch).encode()
    try:
        whole = CheckedBatch.model_validate_json(payload).readings[0].model_dump()
    except ValidationError:
        whole = None
    try:
        alone = HealthBatch.model_validate_json(payload).readings[0].model_dump()
    except ValidationError:
        alone = None
    assert whole == alone


zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=45)), timezone(timedelta(hours=-1))]
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    ts=st.datetimes(
        min_value=datetime(1999, 12, 31, 20), max_value=datetime(2100, 1, 1, 4), timezones=zones
    )
)
@example(ts=datetime(2000, 1, 1, tzinfo=UTC))
@example(ts=datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
@example(ts=datetime(2100, 1, 1, tzinfo=UTC))
@example(ts=datetime(2100, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))))
def test_a_batch_validated_whole_takes_a_stamp_only_as_reading_does(ts: datetime) -> None:
    """The one-call check takes stamps in UTC only, and those exactly as Reading does (the
    same instant, the same refusals); a stamp in another zone it refuses, and its batch is
    judged reading by reading, where Reading converts it."""
    reading = {"device": "upm-sc1-panel-1", "ts": ts.isoformat(), "reachable": True}
    payload = json.dumps(
        {
            "msg_id": str(ULID()),
            "site": "upm",
            "agent_id": "agent",
            "seq": 1,
            "sent_at": RECEIVED.isoformat(),
            "readings": [reading],
        }
    ).encode()
    try:
        whole: datetime | None = CheckedBatch.model_validate_json(payload).readings[0].ts
    except ValidationError:
        whole = None
    try:
        alone: datetime | None = HealthBatch.model_validate_json(payload).readings[0].ts
    except ValidationError:
        alone = None
    if ts.utcoffset() == timedelta(0):
        assert whole == alone
    else:
        assert whole is None
    if alone is not None:
        assert alone == ts and alone.tzinfo is UTC
