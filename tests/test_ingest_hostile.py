"""Batches that mix good readings with what the field sends (values past any column, NaN and
Infinity, control characters, lone surrogates, clocks never set or years ahead, wrong types)
go through the ingest entry point on SQLite and PostgreSQL. Every good reading is stored, every
bad one is dead-lettered with its own reason, nothing raises, and nothing is retried."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from sqlmodel import Session, select

from fleet.ingest.pipeline import Ingest, OutcomeStatus
from fleet.models import Sample
from fleet.protocol.messages import EARLIEST_TS
from tests.fixtures_db import RECEIVED, batch, message, reading

UPM = ["upm-sc1-panel-1", "upm-sc1-panel-2", "upm-sc1-pc", "upm-sc2-panel-1", "upm-sc2-projector"]
# Each good reading gets an instant of its own, so that "stored" can be checked row by row.
_INSTANTS = itertools.count()
CASES = {"good": 0, "bad": 0}

huge_ints = st.sampled_from([2**63, -(2**63) - 1, 2**70, 10**30, -(10**30)])
non_finite = st.sampled_from([float("nan"), float("inf"), float("-inf")])
odd_floats = st.one_of(non_finite, st.sampled_from([1e308, -1e308]))
control_text = st.builds(
    lambda head, ch, tail: f"{head}{ch}{tail}",
    st.text(max_size=8),
    st.sampled_from(["\x00", "\x07", "\x1b[2J", "\x7f", "\x85", "\x9b"]),
    st.text(max_size=8),
)
surrogates = st.sampled_from(["\ud800", "ok\udfff", "\udbff\udc00\ud800"])
bad_instants = st.sampled_from(
    [
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59-12:00",
        "0001-01-01T00:00:00+14:00",
        "1970-01-01T00:00:00Z",
        (EARLIEST_TS - timedelta(seconds=1)).isoformat(),
        (RECEIVED + timedelta(days=2)).isoformat(),
        "2025-03-03T12:00:00",  # naive
        "yesterday",
        "",
    ]
)


@st.composite
def bad_readings(draw: st.DrawFn) -> Any:
    """One reading that must be refused, with exactly one thing wrong (or not a reading)."""
    base = reading(draw(st.sampled_from(UPM)), RECEIVED - timedelta(minutes=1))
    field, value = draw(
        st.one_of(
            st.tuples(st.just("ts"), bad_instants),
            st.tuples(
                st.sampled_from(["lamp_hours", "filter_hours", "uptime_s", "temperature_c"]),
                st.one_of(odd_floats, huge_ints, st.just(-1)),
            ),
            st.tuples(st.sampled_from(["input", "firmware", "error"]), control_text),
            st.tuples(st.sampled_from(["input", "firmware", "error"]), surrogates),
            st.tuples(st.just("input"), st.text(min_size=65, max_size=70).filter(str.isalnum)),
            st.tuples(
                st.just("metrics"),
                st.one_of(
                    st.fixed_dictionaries({"fan_rpm": non_finite}),
                    st.fixed_dictionaries({"fan_rpm": huge_ints.filter(lambda n: n > 10**20)}),
                    st.fixed_dictionaries({"sys_name": control_text}),
                    st.fixed_dictionaries({"note": st.text(min_size=257, max_size=300)}),
                    st.fixed_dictionaries({"x\x00": st.just(1)}),
                ),
            ),
            st.tuples(st.just("reachable"), st.sampled_from(["maybe", None, 2])),
            st.tuples(
                st.just("collectors"),
                st.sampled_from(
                    [
                        {"maxhub-lan": "yes"},
                        {"": True},
                        {"Reachability": True},
                        {"pjlink\x00": True},
                        {f"c{i}": True for i in range(9)},
                        ["reachability"],
                        "reachability",
                    ]
                ),
            ),
            st.tuples(st.just("device"), st.sampled_from(["upm-sc9-ghost", "tuit-sc1-projector"])),
            st.tuples(st.just("extra"), st.just(1)),
            st.tuples(st.just("_whole"), st.sampled_from(["text", 42, None, [], [1, 2]])),
        )
    )
    if field == "_whole":
        return value
    return {**base, field: value}


@pytest.fixture(scope="module", autouse=True)
def _report_cases() -> Iterator[None]:
    yield
    print(f"\n[hostile] good readings stored: {CASES['good']}, bad ones refused: {CASES['bad']}")


def good_reading() -> dict[str, Any]:
    ts = RECEIVED - timedelta(days=1) + timedelta(microseconds=next(_INSTANTS))
    return reading(UPM[ts.microsecond % len(UPM)], ts, lamp_hours=1234.5, input="hdmi1")


def stored(engine: Engine, device: str, ts: datetime) -> bool:
    with Session(engine) as session:
        found = session.exec(
            select(Sample.id).where(Sample.device_id == device, Sample.ts == ts)
        ).first()
    return found is not None


def dead_letters(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [
            (r, d)
            for r, d in conn.execute(text("SELECT reason, detail FROM dead_letter ORDER BY id"))
        ]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(layout=st.lists(st.one_of(st.none(), bad_readings()), min_size=1, max_size=12))
def test_each_reading_of_a_mixed_batch_is_stored_or_dead_lettered_with_its_reason(
    ingest: Ingest, registered: Engine, layout: list[Any]
) -> None:
    readings = [good_reading() if item is None else item for item in layout]
    good = [r for item, r in zip(layout, readings, strict=True) if item is None]
    payload = json.dumps({**batch("upm", []), "readings": readings}).encode()
    before = len(dead_letters(registered))

    [outcome] = ingest.handle([message("fleet/v1/upm/health", payload)])

    CASES["good"] += len(good)
    CASES["bad"] += len(readings) - len(good)
    assert outcome.status == OutcomeStatus.stored
    assert outcome.readings == len(good)
    assert len(outcome.refused_readings) == len(readings) - len(good)
    for r in good:
        assert stored(registered, r["device"], datetime.fromisoformat(r["ts"]))
    new = dead_letters(registered)[before:]
    assert [reason for reason, _ in new] == [r.value for r in outcome.refused_readings]
    assert all(detail and "reading" in detail for _, detail in new)
    assert ingest.status()["ok"]
