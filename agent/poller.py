"""The poll schedule: one object owns when each device is polled, the concurrency bound and
the per-poll deadline. Collectors only know how to read one device once."""

from __future__ import annotations

import asyncio
import heapq
import ipaddress
import logging
import time
from collections.abc import Callable

from pydantic import ValidationError

from agent import metrics
from agent.collectors import (
    DEFAULT_PORTS,
    Collector,
    Target,
    make_collector,
    target_for,
    unreachable,
)
from agent.collectors.chain import poll_chain, step_deadline
from fleet.protocol.messages import Reading, describe_validation_error
from fleet.protocol.site_config import LoadedSite

log = logging.getLogger(__name__)


class AddressMapError(ValueError):
    """An address map that does not fit the site config: a device missing from it, or one sent off
    loopback."""


def build_targets(
    site: LoadedSite, address_map: dict[str, tuple[str, int]] | None = None
) -> list[Target]:
    """Where each device is polled. With an address map (simulated devices), every device
    must be in it and on loopback: the config's own addresses are never used then."""
    targets = []
    for _room, device in site.config.devices():
        profile = site.profile_of(device)
        if profile.protocol not in DEFAULT_PORTS:
            continue  # MQTT-native devices publish by themselves
        address = None
        if address_map is not None:
            if device.id not in address_map:
                raise AddressMapError(
                    f"device {device.id} is not in the address map: start `fleet-agent simulate` "
                    "with the same site config, or run without --address-map"
                )
            address = address_map[device.id]
            if not ipaddress.ip_address(address[0]).is_loopback:
                raise AddressMapError(
                    f"address map sends {device.id} to {address[0]}: only loopback is allowed"
                )
        enabled = frozenset(site.config.agent.enable_collectors)
        targets.append(target_for(device, profile, address, enabled))
    return targets


def deadline_of(
    target: Target,
    collector: Collector | None = None,
    collector_for: Callable[[str], Collector] | None = None,
) -> float:
    """How long one poll of `target` may take, in seconds. A collector whose polls make
    several requests in turn says how long its poll may take (`deadline_s`); otherwise one
    request with its retries. A chain's collectors run together, each under its own
    deadline (agent.collectors.chain.step_deadline): the poll waits for the slowest. Two
    seconds on top so that the collector answers first."""
    if target.steps and collector_for is not None:
        return (
            max(
                step_deadline(target.at(step), collector_for(step.collector))
                for step in target.steps
            )
            + 2.0
        )
    own = getattr(collector, "deadline_s", None)
    if own is not None:
        return float(own(target)) + 2.0
    poll = target.profile.poll
    return poll.timeout_s * (poll.retries + 1) + 2.0


class Poller:
    """Polls each target on its profile's interval, the first sweep spread over
    `initial_spread_s` seconds, and hands each reading to `emit`; `on_first_sweep` is called
    once, right after the reading that completes the first sweep of every target."""

    def __init__(
        self,
        targets: list[Target],
        emit: Callable[[Reading], None],
        *,
        concurrency: int = 64,
        initial_spread_s: float = 2.0,
        on_first_sweep: Callable[[], None] | None = None,
    ) -> None:
        """Poll `targets`, at most `concurrency` at once, handing each reading to `emit`."""
        self.targets = targets
        self.emit = emit
        self.on_first_sweep = on_first_sweep
        self._semaphore = asyncio.Semaphore(concurrency)
        self._collectors: dict[str, Collector] = {}
        self._spread = initial_spread_s
        self._tasks: set[asyncio.Task[None]] = set()
        self.polls = 0
        self.poll_errors = 0
        # Each device's last reachability, so the log says when one changes, not every poll.
        self._reachable: dict[str, bool] = {}

    def collector_for(self, protocol: str) -> Collector:
        """The collector of `protocol`, made on first use and shared by every target; raises
        UnknownProtocolError when there is none."""
        if protocol not in self._collectors:
            self._collectors[protocol] = make_collector(protocol)
        return self._collectors[protocol]

    async def poll(self, target: Target) -> Reading:
        """One poll under the concurrency bound and a hard deadline; never raises."""
        async with self._semaphore:
            collector = (
                None if target.steps is not None else self.collector_for(target.profile.protocol)
            )
            deadline = deadline_of(target, collector, self.collector_for)
            try:
                reading = await asyncio.wait_for(self._read(target), deadline)
            except TimeoutError:
                reading = unreachable(
                    target,
                    f"no answer within {deadline:.0f} s",
                    fix="check that the device is powered and on the network",
                )
            except Exception as exc:  # a collector bug must not stop the site's polling
                log.exception("collector failed on %s", target.device.id)
                reading = unreachable(
                    target, f"agent error while polling ({exc})", fix="report this agent bug"
                )
        self.polls += 1
        metrics.POLLS.labels(target.profile.protocol).inc()
        if not reading.reachable:
            self.poll_errors += 1
            metrics.POLL_ERRORS.labels(target.device.id).inc()
        return reading

    async def _read(self, target: Target) -> Reading:
        if target.steps is None:
            return await self.collector_for(target.profile.protocol).poll(target)
        if not target.steps:
            # E.g. a panel whose only ways are simulated SNMP and a PJLink the site has not
            # enabled: nothing is sent rather than the illustrative objects to a real device.
            return unreachable(
                target,
                f"none of profile {target.profile.id}'s collectors runs at this site",
                fix="enable one in the site config's agent.enable_collectors (see "
                "`fleet-agent discover --chains`), or give the profile a reachability step",
            )
        return await poll_chain(target, self.collector_for)

    async def poll_all_once(self) -> list[Reading]:
        """Poll every target once, all together under the concurrency bound: the readings in target
        order, not emitted."""
        return list(await asyncio.gather(*(self.poll(t) for t in self.targets)))

    async def run(self, stop: asyncio.Event) -> None:
        """Poll each target on its profile's interval until `stop` is set, then cancel the polls
        still running."""
        now = time.monotonic()
        n = max(len(self.targets), 1)
        queue = [(now + self._spread * i / n, i) for i in range(len(self.targets))]
        heapq.heapify(queue)
        while queue and not stop.is_set():
            due, i = queue[0]
            wait = due - time.monotonic()
            if wait > 0:
                try:
                    await asyncio.wait_for(stop.wait(), wait)
                    break
                except TimeoutError:
                    continue
            heapq.heappop(queue)
            target = self.targets[i]
            # Schedule from the due time, not from now, so the cycle does not drift.
            heapq.heappush(queue, (due + target.profile.poll.interval_s, i))
            task = asyncio.create_task(self._poll_and_emit(target))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        for task in list(self._tasks):
            task.cancel()

    async def _poll_and_emit(self, target: Target) -> None:
        try:
            reading = await self.poll(target)
        except ValidationError as exc:
            # Not the device: a reading is stamped by this host's clock, and one outside the
            # contract's years (a board without a battery-backed clock, before NTP) cannot be
            # made. Said at each poll until the clock is set; the next poll tries again.
            log.error(
                "cannot make a reading of %s (%s): check this host's clock and NTP",
                target.device.id,
                describe_validation_error(exc),
            )
            return
        first_sweep_done = self._log_change(target, reading)
        self.emit(reading)
        if first_sweep_done and self.on_first_sweep is not None:
            self.on_first_sweep()

    def _log_change(self, target: Target, reading: Reading) -> bool:
        """Log a device going unreachable (with why) or coming back, once per change, and a
        summary once every device has been polled once; True for the reading that completed
        that first sweep."""
        device = target.device.id
        before = self._reachable.get(device)
        self._reachable[device] = reading.reachable
        if not reading.reachable and before is not False:
            log.warning(
                "device %s at %s:%s unreachable: %s",
                device,
                target.host,
                target.port,
                reading.error or "no answer",
            )
        elif before is False and reading.reachable:
            log.info("device %s at %s:%s answers again", device, target.host, target.port)
        if before is None and len(self._reachable) == len(self.targets):
            down = sorted(d for d, up in self._reachable.items() if not up)
            log.info(
                "every device polled once: %d of %d answered%s",
                len(self.targets) - len(down),
                len(self.targets),
                f"; unreachable: {', '.join(down)}" if down else "",
            )
            return True
        return False

    async def close(self) -> None:
        """Close the collectors this poller made."""
        for collector in self._collectors.values():
            await collector.close()
