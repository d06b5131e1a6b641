"""The site agent: poll → outbox → publish, plus the retained online/offline state.

Three loops share one asyncio event loop: the poller emits readings, the writer moves them
into the on-disk outbox, the sender (agent/sender.py) drains the outbox to the broker at a
capped rate and deletes each batch only once the broker has acknowledged it with a success.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from agent import __version__
from agent.commands import CommandInbox, PollNow
from agent.device_control import DeviceControl
from agent.outbox import Outbox
from agent.poller import Poller, build_targets
from agent.publisher import RECONNECT_MAX_S, BrokerError, MqttLink, PublishRefused
from agent.sender import Backoff, OutboxSender
from agent.token_bucket import SendRate
from agent.updater import UpdateOptions, Updater
from fleet.protocol.broker_url import BrokerAddress
from fleet.protocol.messages import AgentState, AgentStateValue, CommandKind, Reading, Topics
from fleet.protocol.site_config import LoadedSite

log = logging.getLogger(__name__)
# A clean stop's whole time at most, its own steps given what is left of it: under the 20 s
# that deploy/systemd/fleet-agent@.service allows (TimeoutStopSec) before it kills the agent.
STOP_BUDGET_S = 10.0
SLOW_STOP_S = 3.0


# A week: a site's link may be down over a long weekend and a holiday.
DEFAULT_SESSION_EXPIRY_S = 7 * 24 * 3600


@dataclass
class AgentOptions:
    """How a site agent runs beyond its site config: its data directory, topic root and MQTT
    session, the send limits on the site's link, the outbox's bound, and (`address_map`) the
    simulated devices it polls instead of the config's addresses."""

    data_dir: Path
    address_map: dict[str, tuple[str, int]] | None = None
    topic_root: str = "fleet/v1"
    # Health batches, and their bytes, in any one second at most: a metered link gets no
    # more than it was promised, even while a backlog drains.
    max_batches_per_s: float = 5.0
    max_bytes_per_s: int = 256 * 1024
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
    # After a refused batch, the first wait and the longest before it is tried again.
    refusal_retry_s: tuple[float, float] = (1.0, 60.0)
    # While the broker is away, how often the backlog is logged.
    outage_log_interval_s: float = 60.0
    reconnect_max_s: int = RECONNECT_MAX_S
    extra: dict[str, object] = field(default_factory=dict)


def default_client_id(site_code: str, agent_id: str) -> str:
    """The MQTT client id `agent-<site>-<agent id>`: the same at every start, so the broker keeps
    the agent's session."""
    return f"agent-{site_code}-{agent_id}"


def outbox_path(data_dir: Path, site_code: str) -> Path:
    """The site's outbox file in `data_dir`: `outbox-<site>.sqlite`."""
    return data_dir / f"outbox-{site_code}.sqlite"


class SiteAgent:
    """One site's agent: polls its devices, keeps the readings in the outbox until the broker has
    them, keeps the retained online/offline state, and carries out the controller's commands."""

    def __init__(self, site: LoadedSite, broker: BrokerAddress, options: AgentOptions) -> None:
        """The agent of `site`, publishing to `broker`. It opens the outbox at once; nothing
        connects or polls before `run`. Raises AddressMapError for an address map that does not fit
        the site, SecretMissing for a device secret it cannot find."""
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
        # Readings a person is waiting for are in the outbox: they go without the linger.
        self._promptly = False
        self.stop = asyncio.Event()
        targets = build_targets(site, options.address_map)
        self.poller = Poller(
            targets,
            self._emit,
            concurrency=options.concurrency or site.config.agent.poll_concurrency,
            on_first_sweep=self._send_promptly,
        )
        self.link = MqttLink(
            broker,
            client_id=options.client_id or default_client_id(self.code, self.agent_id),
            will=(self.topics.agent_state(self.code), self._state(AgentStateValue.offline)),
            on_connected=self._on_connected,
            session_expiry_s=options.session_expiry_s,
            reconnect_max_s=options.reconnect_max_s,
        )
        self.sender = OutboxSender(
            self.outbox,
            self.link,
            self.topics,
            self.code,
            self.agent_id,
            batch_size=site.config.agent.batch_size,
            rate=SendRate(options.max_batches_per_s, options.max_bytes_per_s),
            wake=self._wake_sender,
            max_inflight=options.max_inflight,
            linger_s=options.linger_s,
            refusal_retry_s=options.refusal_retry_s,
            outage_log_interval_s=options.outage_log_interval_s,
        )
        # Every command from the controller goes through the inbox (agent/commands.py),
        # which hands each kind to its handler.
        self.commands = CommandInbox(
            self.code, self.agent_id, self.link.publish, self.topics, options.data_dir, {}
        )
        self.updater = Updater(
            targets,
            self.commands.report,
            UpdateOptions.from_env(options.data_dir, self.code, broker.host),
        )
        self.commands.handlers[CommandKind.firmware_update] = self.updater
        self.commands.handlers[CommandKind.poll_now] = PollNow(
            self.poller, targets, self._emit_promptly
        )
        control = DeviceControl(targets, self.poller.poll, self._emit_promptly)
        self.commands.handlers[CommandKind.power] = control
        self.commands.handlers[CommandKind.input] = control
        self.link.subscribe_current(self.topics.cmd(self.code), self.commands.on_message)

    def _on_connected(self) -> None:
        self.commands.on_connected()
        self._wake_sender.set()

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

    def _emit_promptly(self, reading: Reading) -> None:
        """A reading someone asked for (poll now, a power or input command): it goes in the
        next batch sent, part-filled or not, rather than after the linger."""
        self._emit(reading)
        self._send_promptly()

    def _send_promptly(self) -> None:
        # Set here, handed to the sender by the writer once the readings are in the outbox,
        # so that the part-filled batch it sends holds them.
        self._promptly = True
        self._wake_writer.set()

    async def run(self) -> None:
        """Run until `stop` is set; raises BrokerError if the broker refuses our login."""
        await self.updater.start()
        self.commands.load()
        await self.link.start()
        tasks = [
            asyncio.create_task(self.poller.run(self.stop), name="poller"),
            asyncio.create_task(self._writer(), name="outbox-writer"),
            asyncio.create_task(self.sender.run(), name="sender"),
            asyncio.create_task(self.sender.report_outages(), name="outage-log"),
            asyncio.create_task(self._announcer(), name="announcer"),
        ]
        try:
            await self.stop.wait()
        finally:
            await self._stop(tasks)

    async def _stop(self, tasks: list[asyncio.Task[None]]) -> None:
        """A clean stop, within STOP_BUDGET_S: what waits in the outbox is sent for a few
        seconds (the rest keeps for the next start), the retained state says offline, then
        everything closes. Each step gets what is left of the budget; one that fails or
        overruns is logged and the next goes on. Logged with the time each step took when
        the whole passed SLOW_STOP_S, so that a stop a service manager cut short says where
        it was spent."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        took: dict[str, float] = {}
        log.info("stopping: sending what waits for up to 5 s, then closing")

        def left(most: float) -> float:
            return max(0.1, min(most, STOP_BUDGET_S - (loop.time() - started)))

        async def step(name: str, work: Awaitable[object]) -> None:
            at = loop.time()
            try:
                await asyncio.wait_for(work, left(STOP_BUDGET_S))
            except TimeoutError:
                log.error("stopping: %s did not end within the stop's budget; going on", name)
            except Exception:
                log.exception("stopping: %s failed; going on", name)
            finally:
                took[name] = loop.time() - at

        for task in tasks:
            task.cancel()
        await step("tasks", asyncio.gather(*tasks, return_exceptions=True))
        # Before the outbox: a command ending now may still emit the reading it asked for.
        await step("commands", self.commands.close())
        await step("outbox", self._flush_incoming())
        await step("drain", self.sender.drain(timeout=left(5.0)))
        await step("updater", self.updater.close())
        await step("offline", self._say_offline(timeout=left(2.0)))
        await step("link", self.link.close())
        await step("poller", self.poller.close())
        self.outbox.close()
        total = loop.time() - started
        if total > SLOW_STOP_S:
            steps = ", ".join(f"{name} {s:.1f} s" for name, s in took.items() if s >= 0.1)
            log.warning("stopped in %.1f s (%s)", total, steps)
        else:
            log.info("stopped in %.1f s", total)

    async def _say_offline(self, timeout: float) -> None:
        if self.link.connected.is_set():
            with contextlib.suppress(BrokerError, TimeoutError):
                await self.link.publish(
                    self.topics.agent_state(self.code),
                    self._state(AgentStateValue.offline),
                    retain=True,
                    timeout=timeout,
                )

    async def _announcer(self) -> None:
        """(Re)publish the retained online state on every connect."""
        backoff = Backoff(*self.options.refusal_retry_s)
        while True:
            await self.link.connected.wait()
            try:
                await self.link.publish(
                    self.topics.agent_state(self.code),
                    self._state(AgentStateValue.online),
                    retain=True,
                )
            except PublishRefused as exc:
                delay = backoff.next()
                log.error("%s; the online state goes again in %g s", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.link.disconnected.wait(), delay)
                continue
            except (BrokerError, TimeoutError):
                await asyncio.sleep(1)
                continue
            backoff.reset()
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
            promptly, self._promptly = self._promptly, False
            await self._flush_incoming()
            if promptly:
                self.sender.send_part_filled()
