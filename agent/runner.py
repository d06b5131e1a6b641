"""The site agent: poll → outbox → publish, plus the retained online/offline state.

Three loops share one asyncio event loop: the poller emits readings, the writer moves them
into the on-disk outbox, the sender drains the outbox to the broker at a bounded rate and
deletes each batch only once the broker has acknowledged it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent import __version__, metrics
from agent.outbox import Outbox, PendingBatch, batch_payload
from agent.poller import Poller, build_targets
from agent.publisher import BrokerError, MqttLink
from agent.updater import UpdateOptions, Updater
from fleet.protocol.broker_url import BrokerAddress
from fleet.protocol.messages import (
    AgentEvent,
    AgentState,
    AgentStateValue,
    EventKind,
    Reading,
    Topics,
)
from fleet.protocol.site_config import LoadedSite

log = logging.getLogger(__name__)


# A week: a site's link may be down over a long weekend and a holiday.
DEFAULT_SESSION_EXPIRY_S = 7 * 24 * 3600


@dataclass
class AgentOptions:
    data_dir: Path
    address_map: dict[str, tuple[str, int]] | None = None
    topic_root: str = "fleet/v1"
    # Batches a second at most when draining a backlog: a metered link is not flooded.
    max_batches_per_s: float = 5.0
    max_inflight: int = 4
    # How long a part-filled batch waits for more readings before it goes anyway.
    linger_s: float = 5.0
    outbox_max_readings: int = 500_000
    concurrency: int | None = None
    # The MQTT client id; stable per site agent, so the broker keeps its session (commands
    # sent while the agent is away). None: agent-<site>-<agent id>.
    client_id: str | None = None
    # How long the broker keeps that session after a disconnect; 0 for a clean session.
    session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S
    extra: dict[str, object] = field(default_factory=dict)


def default_client_id(site_code: str, agent_id: str) -> str:
    return f"agent-{site_code}-{agent_id}"


def outbox_path(data_dir: Path, site_code: str) -> Path:
    return data_dir / f"outbox-{site_code}.sqlite"


class SiteAgent:
    def __init__(self, site: LoadedSite, broker: BrokerAddress, options: AgentOptions) -> None:
        self.site = site
        self.code = site.config.code
        self.agent_id = site.config.agent_id
        self.options = options
        self.topics = Topics(options.topic_root)
        self.boot_id = uuid.uuid4().hex
        self.outbox = Outbox(
            outbox_path(options.data_dir, self.code), max_readings=options.outbox_max_readings
        )
        self._incoming: list[Reading] = []
        self._wake_writer = asyncio.Event()
        self._wake_sender = asyncio.Event()
        self.stop = asyncio.Event()
        targets = build_targets(site, options.address_map)
        self.poller = Poller(
            targets,
            self._emit,
            concurrency=options.concurrency or site.config.agent.poll_concurrency,
        )
        self.link = MqttLink(
            broker,
            client_id=options.client_id or default_client_id(self.code, self.agent_id),
            will=(self.topics.agent_state(self.code), self._state(AgentStateValue.offline)),
            on_connected=self._wake_sender.set,
            session_expiry_s=options.session_expiry_s,
        )
        # Firmware commands from the controller, carried out by the updater.
        self.updater = Updater(
            self.code,
            self.agent_id,
            targets,
            self.link.publish,
            self.topics,
            UpdateOptions.from_env(options.data_dir),
        )
        self.link.subscribe(self.topics.cmd(self.code), self.updater.on_command)

    def _state(self, value: AgentStateValue) -> bytes:
        return AgentState(
            state=value,
            agent_id=self.agent_id,
            version=__version__,
            boot_id=self.boot_id,
            ts=datetime.now(UTC),
        ).to_json()

    def _emit(self, reading: Reading) -> None:
        self._incoming.append(reading)
        self._wake_writer.set()

    async def run(self) -> None:
        """Run until `stop` is set; raises BrokerError if the broker refuses our login."""
        await self.updater.start()
        await self.link.start()
        tasks = [
            asyncio.create_task(self.poller.run(self.stop), name="poller"),
            asyncio.create_task(self._writer(), name="outbox-writer"),
            asyncio.create_task(self._sender(), name="sender"),
            asyncio.create_task(self._announcer(), name="announcer"),
        ]
        try:
            await self.stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._flush_incoming()
            await self._drain_before_exit(timeout=5.0)
            await self.updater.close()
            await self._say_offline()
            await self.link.close()
            await self.poller.close()
            self.outbox.close()

    async def _say_offline(self) -> None:
        if self.link.connected.is_set():
            with contextlib.suppress(BrokerError, TimeoutError):
                await self.link.publish(
                    self.topics.agent_state(self.code),
                    self._state(AgentStateValue.offline),
                    retain=True,
                    timeout=5,
                )

    async def _announcer(self) -> None:
        """(Re)publish the retained online state on every connect."""
        while True:
            await self.link.connected.wait()
            try:
                await self.link.publish(
                    self.topics.agent_state(self.code),
                    self._state(AgentStateValue.online),
                    retain=True,
                )
            except (BrokerError, TimeoutError):
                await asyncio.sleep(1)
                continue
            await self.link.disconnected.wait()

    async def _flush_incoming(self) -> None:
        readings, self._incoming = self._incoming, []
        if readings:
            await asyncio.to_thread(self.outbox.add, readings)
            self._wake_sender.set()

    async def _writer(self) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            # Gather what arrives in the next moment into one transaction (one fsync).
            await asyncio.sleep(0.2)
            await self._flush_incoming()

    async def _sender(self) -> None:
        interval = 1.0 / self.options.max_batches_per_s
        batch_size = self.site.config.agent.batch_size
        while True:
            await self.link.connected.wait()
            await self._report_drops()
            linger = datetime.now(UTC) - timedelta(seconds=self.options.linger_s)
            batches = await asyncio.to_thread(
                self.outbox.pending_batches, self.options.max_inflight, batch_size, linger
            )
            if not batches:
                self._wake_sender.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._wake_sender.wait(), min(5.0, max(self.options.linger_s, 0.2))
                    )
                continue
            started = asyncio.get_running_loop().time()
            results = await asyncio.gather(
                *(self._send(b) for b in batches), return_exceptions=True
            )
            if any(isinstance(r, BaseException) for r in results):
                await asyncio.sleep(1)
                continue
            # Rate limit: at most max_batches_per_s on average.
            spent = asyncio.get_running_loop().time() - started
            await asyncio.sleep(max(0.0, interval * len(batches) - spent))

    async def _drain_before_exit(self, timeout: float) -> None:
        """On a clean stop, send what is waiting (part-filled batches too), briefly: what
        does not make it stays in the outbox for the next start."""
        if not self.link.connected.is_set():
            return
        batch_size = self.site.config.agent.batch_size
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            batches = await asyncio.to_thread(
                self.outbox.pending_batches, self.options.max_inflight, batch_size
            )
            if not batches:
                return
            try:
                remaining = deadline - asyncio.get_running_loop().time()
                await asyncio.wait_for(
                    asyncio.gather(*(self._send(b) for b in batches)), max(remaining, 0.1)
                )
            except (BrokerError, TimeoutError):
                return

    async def _send(self, batch: PendingBatch) -> None:
        payload = batch_payload(self.code, self.agent_id, batch)
        with metrics.PUBLISH_SECONDS.time():
            await self.link.publish(self.topics.health(self.code), payload)
        await asyncio.to_thread(self.outbox.ack, batch.msg_id)

    async def _report_drops(self) -> None:
        metrics.OUTBOX_DEPTH.set(await asyncio.to_thread(self.outbox.depth))
        metrics.CONNECTED.set(1 if self.link.connected.is_set() else 0)
        dropped = self.outbox.take_dropped_report()
        if not dropped:
            return
        metrics.OUTBOX_DROPPED.inc(dropped)
        event = AgentEvent(
            kind=EventKind.outbox_dropped,
            site=self.code,
            agent_id=self.agent_id,
            ts=datetime.now(UTC),
            message=f"outbox full: dropped the {dropped} oldest readings",
            data={"dropped": dropped},
        )
        log.warning("%s", event.message)
        try:
            await self.link.publish(self.topics.events(self.code), event.to_json())
        except (BrokerError, TimeoutError):
            log.warning("could not report dropped readings yet; the count is kept in the outbox")
