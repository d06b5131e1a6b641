"""Readings someone is waiting for go without the linger. A technician who starts the agent
sees every device in the controller once each has been polled, not a linger later; the
reading a `poll_now` (or a power command) asked for goes in the next batch. Other readings
still wait for a full batch or the linger, as a metered link needs.

Real parts: the simulated devices of a site on loopback, the agent's own outbox and link,
and the system Mosquitto, read by a client on the controller's side."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.runner import SiteAgent
from agent.simulator import start_site
from bench.brokers import port_open
from fleet.protocol.broker_url import parse_mqtt_url
from fleet.protocol.messages import Command, CommandKind, Topics
from fleet.protocol.site_config import load_sites
from tests.conftest import need
from tests.fixtures_broker import MOSQUITTO
from tests.fixtures_link import (
    HealthSink,
    agent_options,
    fill_outbox,
    panel_backlog,
    running_agent,
    site_file,
)

# Far longer than the test may take: a reading that came, came without waiting it out.
LINGER_S = 600.0


@pytest.mark.timeout(120)
def test_the_first_sweep_and_a_poll_now_go_without_the_linger(tmp_path: Path) -> None:
    if not port_open(*MOSQUITTO):
        need("Mosquitto at 127.0.0.1:1883", "started by .ci/run")
    site = next(s for s in load_sites() if s.config.code == "upm")
    devices = {d.id for _, d in site.config.devices()}
    assert 1 < len(devices) < site.config.agent.batch_size  # a part-filled batch, not a full one
    root = f"t{uuid.uuid4().hex[:10]}/fleet/v1"
    address = parse_mqtt_url("mqtt://127.0.0.1:1883?protocol=5")
    sink = HealthSink(address, Topics(root).health("upm"))
    controller = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    controller.connect(*MOSQUITTO)
    controller.loop_start()

    def seen() -> set[str]:
        return {r.device for r in sink.readings()}

    async def scenario() -> float:
        simulated = await start_site(site)
        options = agent_options(
            tmp_path / "agent", root, linger_s=LINGER_S, address_map=simulated.address_map
        )
        try:
            async with running_agent(site, address, options):
                started = time.monotonic()
                assert await asyncio.to_thread(sink.wait_for, lambda s: seen() == devices, 60)
                first_sweep_s = time.monotonic() - started
                before = len(sink.readings())
                device = sorted(devices)[0]
                command = Command(
                    cmd_id=f"poll-{uuid.uuid4().hex[:8]}",
                    kind=CommandKind.poll_now,
                    site="upm",
                    issued_at=datetime.now(UTC),
                    devices=[device],
                )
                controller.publish(
                    Topics(root).cmd("upm"), command.to_json(), qos=1
                ).wait_for_publish(10)
                polled = await asyncio.to_thread(
                    sink.wait_for,
                    lambda s: any(r.device == device for r in s.readings()[before:]),
                    30,
                )
                assert polled, "the poll_now's reading waited for the linger"
                return first_sweep_s
        finally:
            await simulated.close()

    try:
        first_sweep_s = asyncio.run(scenario())
    finally:
        controller.loop_stop()
        controller.disconnect()
        sink.close()
    print(f"\n[agent] every device's first reading at the broker {first_sweep_s:.1f} s in")


@pytest.mark.timeout(90)
def test_readings_asked_for_behind_a_backlog_still_go_without_the_linger(tmp_path: Path) -> None:
    """A backlog fills the first take (as many batches as may be in flight): the part-filled
    batch after it, where the readings asked for are, still goes at the next turn."""
    if not port_open(*MOSQUITTO):
        need("Mosquitto at 127.0.0.1:1883", "started by .ci/run")
    site = site_file(tmp_path)  # no devices: no first sweep, only the request below
    options = agent_options(tmp_path / "agent", f"t{uuid.uuid4().hex[:10]}/fleet/v1")
    options.linger_s = LINGER_S
    backlog = panel_backlog(site.config.agent.batch_size * options.max_inflight + 7)
    fill_outbox(options.data_dir, backlog)
    address = parse_mqtt_url("mqtt://127.0.0.1:1883?protocol=5")
    sink = HealthSink(address, Topics(options.topic_root).health(site.config.code))

    def received() -> list[str]:
        # Each batch once: one sent again at the stop, its PUBACK not yet recorded, is the
        # same batch (the controller keeps it once, by its msg_id).
        batches = {batch.msg_id: batch for _, batch in sink.batches}
        return sorted(r.device for b in batches.values() for r in b.readings)

    async def scenario() -> None:
        agent = SiteAgent(site, address, options)
        # Asked before the first take, which the backlog then fills.
        agent.sender.send_part_filled()
        task = asyncio.create_task(agent.run())
        try:
            everything = await asyncio.to_thread(
                sink.wait_for, lambda s: len(received()) >= len(backlog), 30
            )
            assert everything, f"{len(received())} of {len(backlog)} went"
        finally:
            agent.stop.set()
            await asyncio.wait_for(task, 30)

    try:
        asyncio.run(scenario())
    finally:
        sink.close()
    assert received() == sorted(r.device for r in backlog)
