"""What a device says is cleaned on the agent, in one place for every collector, before the
outbox: the agent never queues a reading the controller would refuse, and says what it cleaned."""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlmodel import Session, select
from ulid import ULID

from agent.collectors import target_for, unreachable
from agent.collectors.cleaning import CLEANED, clean_text, make_reading
from agent.collectors.snmp import SnmpCollector
from agent.poller import Poller
from agent.simulator import start_site
from fleet.ingest.pipeline import IncomingMessage, Ingest, OutcomeStatus
from fleet.models import Device, Sample
from fleet.protocol.messages import CONTROL_RE, HealthBatch, Reading
from fleet.protocol.site_config import LoadedSite, load_site

NOW = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)
hostile_text = st.one_of(
    st.text(max_size=600),
    st.text(alphabet=st.characters(codec="utf-8", categories=["Cc", "Cs", "Co", "Zl"])),
    st.sampled_from(["name\x00", "\x1b[31mred", "\ud800half", "bad \ufffd bytes", "x" * 5000]),
)
hostile_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.none(),
)


def test_clean_text_says_what_it_removed() -> None:
    assert clean_text("panel-1\x00", 64) == ("panel-1", ["1 control character removed"])
    assert clean_text("\x1b[2Jok\x85", 64) == ("[2Jok", ["2 control characters removed"])
    assert clean_text("caf\ufffd", 64) == ("caf\ufffd", ["bytes that are not UTF-8 replaced"])
    assert clean_text("a\ud800b", 64) == ("ab", ["lone surrogates removed"])
    assert clean_text("x" * 70, 64) == ("x" * 64, ["cut to 64 characters"])
    assert clean_text("Projector\tA\r\n", 64) == ("Projector\tA\r\n", [])


@settings(max_examples=300, deadline=None)
@given(
    text=hostile_text,
    name=hostile_text,
    number=hostile_numbers,
    metric=st.one_of(hostile_text, hostile_numbers, st.booleans()),
)
def test_make_reading_never_raises_and_the_controller_takes_what_it_makes(
    text: str, name: str, number: float | int | None, metric: object
) -> None:
    reading = make_reading(
        "upm-sc1-panel-1",
        NOW,
        True,
        input=text,
        firmware=text,
        error=text,
        lamp_hours=number,
        temperature_c=number,
        metrics={name: metric, "sys_name": text},
    )
    # What the controller does with a published reading: JSON in, the same model out.
    again = Reading.model_validate_json(reading.model_dump_json())
    assert again == reading
    for value in (again.input, again.firmware, again.error, *again.metrics.values()):
        if isinstance(value, str):
            assert not CONTROL_RE.search(value)
        if isinstance(value, float):
            assert math.isfinite(value)
    if CONTROL_RE.search(text):
        assert "control character" in str(again.metrics[CLEANED])


def test_sys_name_ending_in_nul_is_cleaned_and_the_whole_site_is_stored(
    registered: Engine,
) -> None:
    """A technician at Tribhuvan finds one panel's sysName ending in a NUL: every device of
    the site is read over real SNMP, and every reading is stored."""
    site: LoadedSite = load_site("site_configs/tribhuvan.yaml")
    odd = "tu-sc1-panel-1"

    async def poll_site() -> list[Reading]:
        simulated = await start_site(site, seed=3)
        collector = SnmpCollector()
        try:
            behaviour = simulated.device(odd).behaviour
            behaviour.device = behaviour.device.model_copy(update={"name": f"{odd}\x00"})
            readings = []
            for _, device in site.config.devices():
                if site.profile_of(device).protocol not in ("snmp", "simulated"):
                    continue
                address = simulated.address_map[device.id]
                readings.append(
                    await collector.poll(target_for(device, site.profile_of(device), address))
                )
            return readings
        finally:
            await collector.close()
            await simulated.close()

    readings = asyncio.run(asyncio.wait_for(poll_site(), 60))
    cleaned = next(r for r in readings if r.device == odd)
    assert cleaned.reachable, cleaned.error
    assert cleaned.metrics["sys_name"] == odd
    assert "sys_name: 1 control character removed" in str(cleaned.metrics[CLEANED])
    assert all(CLEANED not in r.metrics for r in readings if r.device != odd)

    batch = HealthBatch(
        msg_id=str(ULID()),
        site="tribhuvan",
        agent_id="tribhuvan-agent",
        seq=1,
        sent_at=max(r.ts for r in readings),
        readings=readings,
    )
    received = max(r.ts for r in readings)
    [outcome] = Ingest(registered).handle(
        [IncomingMessage("fleet/v1/tribhuvan/health", batch.to_json(), received)]
    )
    assert outcome.status == OutcomeStatus.stored, outcome.detail
    assert outcome.readings == len(readings) and outcome.refused_readings == ()
    with Session(registered) as session:
        stored = session.exec(select(Sample.device_id)).all()
        states = {d.id: d.state for d in session.exec(select(Device)).all()}
    assert sorted(stored) == sorted(r.device for r in readings)
    assert all(states[r.device] != "unknown" for r in readings)


def test_a_host_clock_before_2000_is_said_and_polling_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A board without a battery-backed clock, before NTP: no reading can be stamped. The
    agent says why at each poll instead of failing its poll tasks, and emits nothing."""
    site = load_site("site_configs/tribhuvan.yaml")
    _, device = site.config.devices()[0]
    target = target_for(device, site.profile_of(device), ("127.0.0.1", 9))
    monkeypatch.setattr("agent.collectors.utcnow", lambda: datetime(1970, 1, 1, tzinfo=UTC))

    class Unanswered:
        async def poll(self, target: object) -> Reading:
            return unreachable(target, "no answer")  # type: ignore[arg-type]

        async def close(self) -> None:
            return None

    emitted: list[Reading] = []
    poller = Poller([target], emitted.append)
    poller._collectors[site.profile_of(device).protocol] = Unanswered()
    with caplog.at_level(logging.ERROR, logger="agent.poller"):
        asyncio.run(poller._poll_and_emit(target))
    assert emitted == []
    assert "check this host's clock and NTP" in caplog.text
    assert "1970-01-01" in caplog.text
