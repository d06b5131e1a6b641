"""The outbox's drain to the broker: what leaves, how fast, and what happens when it cannot.

- A batch is cut by bytes to fit the smallest limit on its way: MAX_BATCH_BYTES (the
  contract's, under the controller's and the shipped broker's), the Maximum Packet Size the
  broker announced in its MQTT 5.0 CONNACK, a whole second's byte cap, and a size the broker
  was seen to choke on.
- Batches go at most `--max-batches-per-s` and `--max-bytes-per-s` in any one second
  (agent/token_bucket.py).
- A batch is deleted only on a PUBACK whose reason code is a success. A refusal keeps it, is
  logged with its reason and fix, counted (`fleet-agent status`, the agent's metrics), and
  tried again with a backoff that doubles up to a bound.
- A batch the broker closed the connection on twice, larger than anything it took, is taken
  to be over an unannounced size limit (MQTT 3.1.1, or Mosquitto 2.0's `message_size_limit`
  over 5.0): it is split, and smaller batches go from then on, instead of reconnecting and
  sending it again for ever.
- While the broker is away, the backlog's size and age are logged at intervals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from enum import Enum

from agent import metrics
from agent.broker_refusals import PACKET_TOO_LARGE, Refusal, packet_too_large
from agent.outbox import Outbox, PendingBatch, batch_payload
from agent.publisher import BrokerError, LostInFlight, MqttLink, PublishRefused
from agent.token_bucket import SendRate
from fleet.protocol.messages import MAX_BATCH_BYTES, AgentEvent, EventKind, Topics

log = logging.getLogger(__name__)

# A connection lost this many times in a row while one batch waited for its PUBACK, when the
# broker never took one so large: the batch is over a limit the broker did not announce.
LOSSES_BEFORE_SPLIT = 2


class Outcome(Enum):
    """How sending one batch ended, when the link itself did not fail."""

    sent = "sent"  # acknowledged with a success, and deleted
    split = "split"  # too large for the broker: its readings go again in smaller batches
    refused = "refused"  # kept, to be tried again after the backoff


class Backoff:
    """Seconds to wait before the next try: `first`, doubling, at most `most`."""

    def __init__(self, first: float, most: float) -> None:
        """Start at `first` seconds; doubling stops at `most`."""
        self.first = first
        self.most = most
        self._next = first

    def peek(self) -> float:
        """The wait the next call to `next` gives, without moving on."""
        return self._next

    def next(self) -> float:
        """The wait before this try, in seconds; the next one is doubled, up to `most`."""
        delay, self._next = self._next, min(self._next * 2, self.most)
        return delay

    def reset(self) -> None:
        """Start again from `first`, after a success."""
        self._next = self.first


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    return f"{int(minutes // 60)} h {int(minutes % 60)} min"


class OutboxSender:
    """Sends the outbox of `site`'s agent `agent_id` through `link`: `run()` until cancelled,
    `drain(timeout)` on a clean stop, `report_outages()` alongside. `wake` is set when new
    readings are in the outbox. Times in seconds."""

    def __init__(
        self,
        outbox: Outbox,
        link: MqttLink,
        topics: Topics,
        site: str,
        agent_id: str,
        *,
        batch_size: int,
        rate: SendRate,
        wake: asyncio.Event,
        max_inflight: int = 4,
        linger_s: float = 5.0,
        refusal_retry_s: tuple[float, float] = (1.0, 60.0),
        outage_log_interval_s: float = 60.0,
    ) -> None:
        """`batch_size`: readings per batch at most; `rate`: batches and bytes per second at most;
        `max_inflight`: batches awaiting a PUBACK at once; `linger_s`: how long a part-filled batch
        waits for more readings; `refusal_retry_s`: the first and the longest wait after a
        refusal."""
        self.outbox = outbox
        self.link = link
        self.topics = topics
        self.topic = topics.health(site)
        self.site = site
        self.agent_id = agent_id
        self.batch_size = batch_size
        self.rate = rate
        self.wake = wake
        self.max_inflight = max_inflight
        self.linger_s = linger_s
        self.outage_log_interval_s = outage_log_interval_s
        self._backoff = Backoff(*refusal_retry_s)
        # What the broker was seen to take, and not to take, when it announced no limit.
        self._largest_acked = 0
        self._learned_cap: int | None = None
        self._losses: dict[str, int] = {}
        self._part_filled_due = False

    def batch_cap(self) -> int:
        """The most one batch's payload may be now, in bytes."""
        caps = [MAX_BATCH_BYTES, self.rate.bytes_per_s]
        announced = self.link.max_payload_bytes(self.topic)
        if announced is not None:
            caps.append(announced)
        if self._learned_cap is not None:
            caps.append(self._learned_cap)
        return max(1, min(caps))

    async def _take(self, partial_before: datetime | None) -> list[PendingBatch]:
        return await asyncio.to_thread(
            self.outbox.pending_batches,
            self.max_inflight,
            self.batch_size,
            partial_before,
            self.batch_cap(),
        )

    def send_part_filled(self) -> None:
        """Send what the outbox holds now, part-filled batches too, without waiting out the
        linger (the first sweep's readings, or those a command asked for): at the next turn,
        and the turns after it while each takes as many batches as may be in flight."""
        self._part_filled_due = True
        self.wake.set()

    async def run(self) -> None:
        """Send the outbox's batches while connected, until cancelled: at most `max_inflight` at a
        time, within `rate`; after a refusal, the next take waits out the backoff or a lost
        connection."""
        while True:
            await self.link.connected.wait()
            await self.report_drops()
            # Both cleared before the take, so that a wake or a request made while it runs
            # is still there after it: the wait below then ends at once.
            self.wake.clear()
            due, self._part_filled_due = self._part_filled_due, False
            linger = None if due else datetime.now(UTC) - timedelta(seconds=self.linger_s)
            batches = await self._take(linger)
            if due and len(batches) >= self.max_inflight:
                # A backlog filled the take: the readings asked for are in a later batch.
                self._part_filled_due = True
            if not batches:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), min(5.0, max(self.linger_s, 0.2)))
                continue
            results = await asyncio.gather(
                *(self._send(b) for b in batches), return_exceptions=True
            )
            if Outcome.refused in results:
                # Not a hot loop: the same refusal would come back at once. A lost
                # connection ends the wait, since a broker that restarts may have changed.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.link.disconnected.wait(), self._backoff.next())
            elif any(isinstance(r, BaseException) for r in results):
                await asyncio.sleep(1)
            else:
                self._backoff.reset()

    async def drain(self, timeout: float) -> None:
        """On a clean stop, send what is waiting (part-filled batches too), briefly: what
        does not make it stays in the outbox for the next start."""
        if not self.link.connected.is_set():
            return
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            batches = await self._take(None)
            if not batches:
                return
            try:
                remaining = deadline - asyncio.get_running_loop().time()
                await asyncio.wait_for(
                    asyncio.gather(*(self._send(b) for b in batches)), max(remaining, 0.1)
                )
            except (BrokerError, TimeoutError):
                return

    async def _send(self, batch: PendingBatch) -> Outcome:
        """Send one batch; raises NotConnected or TimeoutError when the link failed."""
        payload = batch_payload(self.site, self.agent_id, batch)
        size = len(payload)
        await self.rate.acquire(size)
        try:
            with metrics.PUBLISH_SECONDS.time():
                await self.link.publish(self.topic, payload)
        except PublishRefused as exc:
            return await self._refused(batch, exc)
        except LostInFlight:
            await self._lost(batch, size)
            raise
        self._losses.pop(batch.msg_id, None)
        self._largest_acked = max(self._largest_acked, size)
        await asyncio.to_thread(self.outbox.ack, batch.msg_id)
        return Outcome.sent

    async def _refused(self, batch: PendingBatch, exc: PublishRefused) -> Outcome:
        # A batch too large for what the broker announced goes again in smaller ones.
        if exc.refusal.reason_code == PACKET_TOO_LARGE and await self._split(batch):
            await self._count(exc.refusal, batch, exc.size, "it goes again in smaller batches")
            return Outcome.split
        then = f"next try in {self._backoff.peek():g} s"
        await self._count(exc.refusal, batch, exc.size, then)
        return Outcome.refused

    async def _lost(self, batch: PendingBatch, size: int) -> None:
        if size <= self._largest_acked:
            return  # the broker took one as large: this was the link, not the size
        losses = self._losses[batch.msg_id] = self._losses.get(batch.msg_id, 0) + 1
        if losses < LOSSES_BEFORE_SPLIT:
            return
        del self._losses[batch.msg_id]
        # A quarter of what failed (or the most it took): few reconnects to find a size
        # that passes, and batches still large. Only ever lower.
        cap = max(self._largest_acked, size // 4, 1)
        self._learned_cap = min(cap, self._learned_cap or cap)
        why = (
            f"the broker closed the connection {losses} times while this batch waited for "
            "its PUBACK, and never took one as large: it is probably over the broker's "
            "message size limit, which it did not announce"
        )
        refusal = packet_too_large(size, self._learned_cap, self.link.address, why)
        await self._split(batch)
        await self._count(refusal, batch, size, "it goes again in smaller batches")

    async def _split(self, batch: PendingBatch) -> bool:
        if await asyncio.to_thread(self.outbox.split, batch.msg_id) > 1:
            metrics.BATCHES_SPLIT.inc()
            return True
        return False

    async def _count(self, refusal: Refusal, batch: PendingBatch, size: int, then: str) -> None:
        metrics.PUBLISH_REFUSED.labels(str(refusal.reason_code), refusal.reason).inc()
        await asyncio.to_thread(
            self.outbox.record_refusal,
            refusal.reason_code,
            refusal.reason,
            self.topic,
            refusal.fix,
        )
        log.error(
            "health batch %s (%d readings, %s bytes) on %s refused: %s. The batch stays in "
            "the outbox; %s",
            batch.msg_id,
            len(batch.readings),
            f"{size:,}",
            self.topic,
            refusal,
            then,
        )

    async def report_drops(self) -> None:
        """Refresh the outbox gauges, and tell the controller of readings the outbox's bound
        dropped (an `outbox_dropped` event; the count stays in the outbox if it cannot)."""
        metrics.OUTBOX_DEPTH.set(await asyncio.to_thread(self.outbox.depth))
        metrics.OUTBOX_FILE_BYTES.set(self.outbox.file_bytes())
        metrics.CONNECTED.set(1 if self.link.connected.is_set() else 0)
        dropped = self.outbox.take_dropped_report()
        if not dropped:
            return
        metrics.OUTBOX_DROPPED.inc(dropped)
        event = AgentEvent(
            kind=EventKind.outbox_dropped,
            site=self.site,
            agent_id=self.agent_id,
            ts=datetime.now(UTC),
            message=f"outbox full: dropped the {dropped} oldest readings",
            data={"dropped": dropped},
        )
        log.warning("%s", event.message)
        try:
            await self.link.publish(self.topics.events(self.site), event.to_json())
        except (BrokerError, TimeoutError) as exc:
            log.warning(
                "could not report dropped readings yet (%s); the count is kept in the outbox",
                exc or "no PUBACK in time",
            )

    async def report_outages(self) -> None:
        """While the broker is away, log every `outage_log_interval_s` how long, and what
        waits in the outbox (readings, bytes on disk, the oldest's age); and when it is back."""
        loop = asyncio.get_running_loop()
        while True:
            if self.link.connected.is_set():
                await self.link.disconnected.wait()
            began = loop.time()
            while not self.link.connected.is_set():
                try:
                    await asyncio.wait_for(self.link.connected.wait(), self.outage_log_interval_s)
                except TimeoutError:
                    await self._log_outage(loop.time() - began)
            status = await asyncio.to_thread(self.outbox.status)
            log.info(
                "broker %s is back after %s; %d readings to send",
                self.link.address.display(),
                _duration(loop.time() - began),
                status.outbox_depth,
            )

    async def _log_outage(self, away_s: float) -> None:
        status = await asyncio.to_thread(self.outbox.status)
        oldest = None
        if status.oldest_pending:
            age = datetime.now(UTC) - datetime.fromisoformat(status.oldest_pending)
            oldest = _duration(age.total_seconds())
        log.warning(
            "broker %s unreachable for %s%s: %d readings wait in the outbox (%.1f MB on "
            "disk)%s; they go when it is back, at most %g batches and %s bytes a second",
            self.link.address.display(),
            _duration(away_s),
            f" ({self.link.last_error})" if self.link.last_error else "",
            status.outbox_depth,
            status.file_bytes / 1e6,
            f", the oldest taken {oldest} ago" if oldest else "",
            self.rate.batches.capacity / self.rate.batches.period,
            f"{self.rate.bytes_per_s:,}",
        )
