"""The agent's link, measured: where every capacity figure of the README and of
deploy/mosquitto/fleet-queues.conf comes from.

    python -m bench.link [--quick] [--fleet 5000] [--site-devices 500] [--outage-minutes 60]

1. A reading: the simulated devices of every shipped site config, each polled once by the
   agent's own collectors, as the outbox stores it (JSON). Printed per profile: mean and
   largest bytes; the limit is TYPICAL_READING_BYTES, what the site config's batch_size
   check counts a reading as (the largest profile mean must stay under it).
2. A batch: the health batch of 50 readings (the default batch_size) drawn from those, as the
   agent sends it; the limit is MAX_BATCH_BYTES.
3. The broker's queue: a Mosquitto of our own with deploy/mosquitto/fleet-queues.conf, its
   max_queued_bytes scaled down 1:256, queues such batches for an offline persistent session
   until it drops them; counted are the bytes it hands over when the session comes back,
   against the max_queued_bytes it was given. From those bytes: the hours the shipped queue
   holds for a fleet of --fleet devices polled every minute, one batch of 50 a site cycle.
4. The outbox: the backlog of --site-devices devices over an outage of --outage-minutes
   (one reading a device a minute) in a fresh outbox, then drained as the agent does (batches
   taken and acknowledged): its files at peak, after the drain, and empty (the limit).
5. The send rate: that backlog sent by the agent's own sender through the Mosquitto at
   --max-batches-per-s 5 and --max-bytes-per-s 256 KiB: the most batches and bytes that any
   one-second window carried (times of the publish calls), against those caps.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.outbox import ENVELOPE_BYTES, Outbox, PendingBatch, batch_payload
from bench.brokers import DEPLOY, OwnMosquitto
from fleet.protocol.broker_url import parse_mqtt_url
from fleet.protocol.messages import MAX_BATCH_BYTES, Reading, Topics
from fleet.protocol.site_config import (
    TYPICAL_READING_BYTES,
    AgentSection,
    LoadedSite,
    SiteConfig,
    load_sites,
)

BATCH = 50
SHIPPED_QUEUE_BYTES = 2 * 1024**3  # max_queued_bytes in fleet-queues.conf
SHIPPED_QUEUE_MESSAGES = 1_000_000  # max_queued_messages
OUTBOX_MAX_READINGS = 500_000  # the outbox's bound by count (agent/runner.py)
WINDOW_SLACK_S = 0.02


# --- 1. readings -------------------------------------------------------------------------


async def shipped_readings() -> dict[str, list[Reading]]:
    """One reading of every simulated device of every shipped site, by profile."""
    from agent.collectors import make_collector, target_for, unreachable
    from agent.simulator import start_site

    out: dict[str, list[Reading]] = {}
    for site in load_sites():
        simulated = await start_site(site)
        collectors: dict[str, Any] = {}
        try:
            for _, device in site.config.devices():
                if device.id not in simulated.address_map:
                    continue
                profile = site.profile_of(device)
                if profile.protocol not in collectors:
                    collectors[profile.protocol] = make_collector(profile.protocol)
                target = target_for(device, profile, simulated.address_map[device.id])
                reading = await collectors[profile.protocol].poll(target)
                out.setdefault(profile.id, []).append(reading)
                # The same device not answering: its reading carries the error instead.
                timeout = f"no answer within {profile.poll.timeout_s:g} s"
                out.setdefault("(not answering)", []).append(unreachable(target, timeout))
        finally:
            for collector in collectors.values():
                await collector.close()
            await simulated.close()
    return out


def reading_bytes(reading: Reading) -> int:
    """What the outbox stores and the batch carries for one reading."""
    return len(reading.model_dump_json(exclude_none=True).encode())


def backlog(templates: list[Reading], count: int, start: datetime) -> list[Reading]:
    """`count` readings shaped like `templates` (in turn), of devices sim-0000..., one a
    second from `start`."""
    return [
        templates[i % len(templates)].model_copy(
            update={"device": f"sim-{i % 10_000:04d}", "ts": start + timedelta(seconds=i)}
        )
        for i in range(count)
    ]


# --- 3. the broker's queue ---------------------------------------------------------------


class Sink:
    """A paho client on a persistent session that counts what it receives."""

    def __init__(self, url: str, client_id: str, topic: str) -> None:
        address = parse_mqtt_url(url)
        self.v5 = address.protocol == "5"
        self.topic = topic
        self.received = 0
        self.bytes = 0
        self.last_at = time.monotonic()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            clean_session=None if self.v5 else False,
        )
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        kwargs: dict[str, Any] = {}
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            kwargs = {"clean_start": False, "properties": props}
        self.client.connect(address.host, address.port, **kwargs)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("the queue's session did not subscribe")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.received += 1
        self.bytes += len(msg.payload)
        self.last_at = time.monotonic()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_batches(url: str, topic: str, payloads: list[bytes]) -> None:
    """Publish at QoS 1, each waiting for its PUBACK."""
    address = parse_mqtt_url(url)
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        protocol=mqtt.MQTTv5 if address.protocol == "5" else mqtt.MQTTv311,
    )
    client.connect(address.host, address.port)
    client.loop_start()
    try:
        for payload in payloads:
            info = client.publish(topic, payload, qos=1)
            info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


@dataclass
class QueueFigure:
    configured_bytes: int
    held_bytes: int
    held_batches: int
    published: int


def queue_held(tmp: Path, payloads: list[bytes], scale: int) -> QueueFigure:
    """How many bytes of `payloads` a Mosquitto with the shipped queue limits, its
    max_queued_bytes divided by `scale`, keeps for an offline persistent session."""
    configured = SHIPPED_QUEUE_BYTES // scale
    shipped = (DEPLOY / "fleet-queues.conf").read_text()
    scaled = shipped.replace(
        f"max_queued_bytes {SHIPPED_QUEUE_BYTES}", f"max_queued_bytes {configured}"
    )
    if scaled == shipped:
        raise RuntimeError("fleet-queues.conf no longer says max_queued_bytes 2147483648")
    broker = OwnMosquitto(tmp / "queue-broker")
    broker.configure(
        "allow_anonymous true", f"persistence_location {broker.workdir}/", before=[scaled]
    )
    broker.start()
    topic = f"bench{uuid.uuid4().hex[:6]}/fleet/v1/site/health"
    try:
        sink = Sink(broker.url, "bench-queue", topic)
        sink.close()  # away: the broker queues for it
        publish_batches(broker.url, topic, payloads)
        sink = Sink(broker.url, "bench-queue", topic)
        try:
            # Delivered as fast as loopback goes: a second without one means the end.
            deadline = time.monotonic() + 60
            while time.monotonic() - sink.last_at < 1.0 and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            sink.close()
    finally:
        broker.stop()
    return QueueFigure(configured, sink.bytes, sink.received, len(payloads))


# --- 4. the outbox -----------------------------------------------------------------------


@dataclass
class OutboxFigure:
    readings: int
    empty_bytes: int
    peak_bytes: int
    drained_bytes: int
    drain_s: float


def outbox_through_outage(tmp: Path, readings: list[Reading], per_cycle: int) -> OutboxFigure:
    """Fill a fresh outbox as the agent does during an outage (one transaction a poll
    cycle of `per_cycle` readings), then drain it as the sender does."""
    box = Outbox(tmp / "outbox.sqlite", max_age=timedelta(days=3650))
    try:
        empty = box.file_bytes()
        for first in range(0, len(readings), per_cycle):
            box.add(readings[first : first + per_cycle])
        peak = box.file_bytes()
        started = time.perf_counter()
        while batches := box.pending_batches(4, BATCH):
            for batch in batches:
                box.ack(batch.msg_id)
        drain_s = time.perf_counter() - started
        return OutboxFigure(len(readings), empty, peak, box.file_bytes(), drain_s)
    finally:
        box.close()


# --- 5. the send rate --------------------------------------------------------------------


@dataclass
class SendFigure:
    sends: list[tuple[float, int]]  # (publish call's time, payload bytes) of each batch
    delivered: int  # readings acknowledged
    seconds: float

    def most_in_a_second(self, slack: float = WINDOW_SLACK_S) -> tuple[int, int]:
        """The most batches, and the most bytes, of any half-open window of one second less
        `slack` that starts at a send (the window with the most starts at one). The slack
        is for the publish call's time, taken a moment after the token bucket's grant (up
        to Python's 5 ms GIL switch interval, when paho's thread has it)."""
        most_batches = most_bytes = 0
        for i, (start, _) in enumerate(self.sends):
            inside = [n for t, n in self.sends[i:] if t < start + 1.0 - slack]
            most_batches = max(most_batches, len(inside))
            most_bytes = max(most_bytes, sum(inside))
        return most_batches, most_bytes


def empty_site(batch_size: int) -> LoadedSite:
    """A site without devices: the agent only drains what its outbox holds."""
    config = SiteConfig.model_validate(
        {
            "site": {"code": "bench", "name": "Bench", "country": "Nowhere", "timezone": "UTC"},
            "agent": {"id": "bench-agent"},
        }
    )
    # Past the check (model_construct): a batch_size it would refuse can be tried too.
    agent = AgentSection.model_construct(**{**config.agent.model_dump(), "batch_size": batch_size})
    return LoadedSite(Path("bench.yaml"), config.model_copy(update={"agent": agent}), {})


async def send_backlog(
    url: str,
    data_dir: Path,
    readings: list[Reading],
    *,
    batch_size: int = BATCH,
    max_batches_per_s: float = 5.0,
    max_bytes_per_s: int = 256 * 1024,
    timeout: float = 120.0,
) -> SendFigure:
    """`readings` put in an agent's outbox, then sent by its own sender (SiteAgent) until
    the outbox is empty or `timeout` seconds pass; each publish call of a health batch is
    timed on the event loop's clock."""
    from agent.runner import AgentOptions, SiteAgent, outbox_path

    site = empty_site(batch_size)
    box = Outbox(outbox_path(data_dir, site.config.code), max_age=timedelta(days=3650))
    box.add(readings)
    box.close()
    options = AgentOptions(
        data_dir=data_dir,
        topic_root=f"bench{uuid.uuid4().hex[:6]}/fleet/v1",
        max_batches_per_s=max_batches_per_s,
        max_bytes_per_s=max_bytes_per_s,
        linger_s=0.0,
        client_id=f"bench-agent-{uuid.uuid4().hex[:6]}",
        session_expiry_s=0,
    )
    agent = SiteAgent(site, parse_mqtt_url(url), options)
    health = Topics(options.topic_root).health(site.config.code)
    sends: list[tuple[float, int]] = []
    publish = agent.link.publish
    loop = asyncio.get_running_loop()

    async def timed(topic: str, payload: bytes, **kwargs: Any) -> None:
        if topic == health:
            sends.append((loop.time(), len(payload)))
        await publish(topic, payload, **kwargs)

    agent.link.publish = timed  # type: ignore[method-assign]
    running = asyncio.create_task(agent.run())
    started = loop.time()
    try:
        while loop.time() - started < timeout:
            if running.done():
                running.result()
            if agent.outbox.depth() == 0:
                break
            await asyncio.sleep(0.05)
        seconds = loop.time() - started
        delivered = agent.outbox.status().readings_acked
    finally:
        agent.stop.set()
        await running
    return SendFigure(sends, delivered, seconds)


# --- the run -----------------------------------------------------------------------------


def _kb(n: float) -> str:
    return f"{n / 1000:,.1f} KB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.link", description=__doc__)
    parser.add_argument("--fleet", type=int, default=5000, help="devices, for the queue hours")
    parser.add_argument("--site-devices", type=int, default=500)
    parser.add_argument("--outage-minutes", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="a tiny run, to keep it working")
    args = parser.parse_args(argv)
    scale = 4096 if args.quick else 256
    if args.quick:
        args.site_devices, args.outage_minutes = 50, 4

    by_profile = asyncio.run(shipped_readings())
    print("1. bytes per reading (JSON, as the outbox stores it), by profile:")
    means = {}
    for profile, readings in sorted(by_profile.items()):
        sizes = [reading_bytes(r) for r in readings]
        means[profile] = statistics.mean(sizes)
        print(
            f"   {profile:20} {len(sizes):3} readings: mean {means[profile]:5.0f}, "
            f"largest {max(sizes):5}"
        )
    answering = [r for p, rs in by_profile.items() if p != "(not answering)" for r in rs]
    overall = statistics.mean(reading_bytes(r) for r in answering)
    largest_mean = max(v for p, v in means.items() if p != "(not answering)")
    print(
        f"   every answering device: mean {overall:.0f} bytes; largest profile mean "
        f"{largest_mean:.0f}; limit TYPICAL_READING_BYTES {TYPICAL_READING_BYTES}; ratio "
        f"{largest_mean / TYPICAL_READING_BYTES:.2f}: "
        f"{'met' if largest_mean <= TYPICAL_READING_BYTES else 'MISSED'}"
    )

    start = datetime.now(UTC) - timedelta(hours=1)
    batch = PendingBatch("0" * 26, 1, backlog(answering, BATCH, start))
    batch_bytes = len(batch_payload("upm", "upm-agent-1", batch))
    print(
        f"2. a batch of {BATCH} readings: {batch_bytes:,} bytes ({_kb(batch_bytes)}; envelope at "
        f"most {ENVELOPE_BYTES} bytes); limit MAX_BATCH_BYTES {MAX_BATCH_BYTES:,}; ratio "
        f"{batch_bytes / MAX_BATCH_BYTES:.3f}"
    )

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        configured = SHIPPED_QUEUE_BYTES // scale
        count = int(configured / batch_bytes * 1.5) + 10
        payloads = [
            batch_payload(
                "upm",
                "upm-agent-1",
                PendingBatch(f"{i:026d}", i, backlog(answering, BATCH, start)),
            )
            for i in range(count)
        ]
        queue = queue_held(tmp, payloads, scale)
        held_shipped = queue.held_bytes * scale
        batches_an_hour = args.fleet / BATCH * 60
        bytes_an_hour = batches_an_hour * batch_bytes
        hours = min(held_shipped / bytes_an_hour, SHIPPED_QUEUE_MESSAGES / batches_an_hour)
        hours_1000 = min(
            held_shipped / (bytes_an_hour * 1000 / args.fleet),
            SHIPPED_QUEUE_MESSAGES / (batches_an_hour * 1000 / args.fleet),
        )
        print(
            f"3. broker queue (max_queued_bytes scaled 1:{scale}): held {queue.held_batches} of "
            f"{queue.published} batches, {queue.held_bytes:,} bytes; limit max_queued_bytes "
            f"{queue.configured_bytes:,}; ratio {queue.held_bytes / queue.configured_bytes:.3f}"
        )
        print(
            f"   at the shipped 2 GiB: {args.fleet:,} devices a minute send "
            f"{bytes_an_hour / 1e6:,.1f} MB of health an hour ({batches_an_hour:,.0f} batches): "
            f"the queue holds {hours:.1f} hours of it; 1,000 devices: {hours_1000 / 24:.1f} days"
        )

        readings = backlog(answering, args.site_devices * args.outage_minutes, start)
        box = outbox_through_outage(tmp, readings, args.site_devices)
        per_reading = (box.peak_bytes - box.empty_bytes) / box.readings
        bound_hours = OUTBOX_MAX_READINGS / (args.site_devices * 60)
        print(
            f"4. outbox, {args.site_devices} devices x {args.outage_minutes} min outage = "
            f"{box.readings:,} readings: {box.peak_bytes / 1e6:.2f} MB at peak "
            f"({per_reading:.0f} bytes a reading on disk), {box.drained_bytes / 1e6:.2f} MB "
            f"after the drain ({box.drain_s:.1f} s); limit: an empty outbox, "
            f"{box.empty_bytes / 1e6:.2f} MB; ratio {box.drained_bytes / box.empty_bytes:.2f}"
        )
        print(
            f"   its bound of {OUTBOX_MAX_READINGS:,} readings holds {bound_hours:.1f} hours of "
            f"{args.site_devices} devices, about "
            f"{OUTBOX_MAX_READINGS * per_reading / 1e6:,.0f} MB on disk"
        )

        with broker_for_sends(tmp) as url:
            sent = asyncio.run(send_backlog(url, tmp / "agent", readings[: args.site_devices * 4]))
        batches, nbytes = sent.most_in_a_second()
        rate = sent.delivered / sent.seconds if sent.seconds else 0.0
        print(
            f"5. send rate: {len(sent.sends)} batches, {sent.delivered:,} readings in "
            f"{sent.seconds:.1f} s ({rate:,.0f} readings/s); most in any one second (less "
            f"{WINDOW_SLACK_S * 1000:.0f} ms): "
            f"{batches} batches, {nbytes:,} bytes; limit 5 batches, {256 * 1024:,} bytes; "
            f"ratio {max(batches / 5, nbytes / (256 * 1024)):.2f}: "
            f"{'met' if batches <= 5 and nbytes <= 256 * 1024 else 'MISSED'}"
        )
    return 0


@contextmanager
def broker_for_sends(tmp: Path) -> Iterator[str]:
    """A Mosquitto with the shipped limits (OwnMosquitto), MQTT 5.0."""
    broker = OwnMosquitto(tmp / "send-broker")
    broker.start()
    try:
        yield broker.url
    finally:
        broker.stop()


if __name__ == "__main__":
    raise SystemExit(main())
