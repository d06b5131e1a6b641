"""The controller's MQTT edge: paho-mqtt 2 wrapped once, feeding `fleet.ingest.pipeline`.

Messages are acknowledged only after the database committed them (paho's manual ack), on a
persistent session, so the broker keeps and redelivers what the controller has not stored:
nothing is lost when the controller or the database goes away. Messages are written in
groups (one transaction per group) for throughput.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fleet.ingest.pipeline import Checked, IncomingMessage, Ingest, collect_less_often
from fleet.ingest.store import SampleCopy
from fleet.protocol.broker_url import BrokerAddress
from fleet.protocol.messages import Topics

log = logging.getLogger(__name__)

# A pause this long in the flow closes the group being gathered.
IDLE_CLOSE_S = 0.003


@dataclass
class IngestStatus:
    """The MQTT edge's own counts and connection state, for /healthz."""

    connected: bool = False
    received: int = 0
    acked: int = 0
    groups: int = 0
    db_failures: int = 0
    last_message_at: datetime | None = None
    last_error: str | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def as_dict(self) -> dict[str, object]:
        """These counts as JSON values (times as ISO 8601)."""
        return {
            "connected": self.connected,
            "received": self.received,
            "acked": self.acked,
            "groups": self.groups,
            "db_failures": self.db_failures,
            "last_message_at": self.last_message_at.isoformat() if self.last_message_at else None,
            "last_error": self.last_error,
        }


@dataclass
class _Received:
    message: IncomingMessage
    mid: int
    qos: int
    checked: Checked | None = None  # by the writer, as it gathers the message's group


class _Gathering:
    """One group's checking on the writer thread, and its `SampleCopy` once it has a
    reading to send (PostgreSQL only; opened at most once a group)."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.copy: SampleCopy | None = None
        self._opened = False

    def check(self, received: _Received) -> float:
        """Check `received` ahead of its group, and send its readings; the seconds that took."""
        started = time.monotonic()
        checked = received.checked = self.ingest.check(received.message)
        if checked is not None and self.ingest.copies_ahead and checked.sends_samples:
            if not self._opened:
                self._opened = True
                self.copy = self.ingest.open_copy()
            if self.copy is not None:
                self.copy.feed(received.message, checked.parsed)
        return time.monotonic() - started


class Subscriber:
    """The controller's MQTT client: subscribes to the agents' topics, hands messages in groups to
    `Ingest` on its writer thread and acknowledges them once stored; also publishes commands."""

    def __init__(
        self,
        address: BrokerAddress,
        ingest: Ingest,
        *,
        client_id: str = "fleet-controller",
        topic_root: str = "fleet/v1",
        session_expiry_s: int = 7 * 24 * 3600,
        batch_max: int = 500,
        batch_wait_s: float = 0.05,
        shared_group: str | None = None,
        subscribe: bool = True,
    ) -> None:
        """`session_expiry_s`: how long the broker keeps the session while the controller is away
        (seconds, MQTT v5); a group closes at `batch_max` messages or `batch_wait_s` seconds;
        `shared_group`: the MQTT v5 shared subscription group of several ingest workers; `subscribe`
        False: a process that only publishes."""
        self.address = address
        self.ingest = ingest
        self.topics = Topics(topic_root)
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_s
        self.stats = IngestStatus()
        self._queue: queue.Queue[_Received] = queue.Queue()
        self._stop = threading.Event()
        self._shared_group = shared_group
        # False for a scheduler-only process: it publishes commands and ingests nothing.
        self._subscribe = subscribe
        self._v5 = address.protocol == "5"
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            # A persistent session: the broker queues for us while we are down (v5 sets
            # clean_start and the session expiry at connect time instead).
            clean_session=None if self._v5 else False,
            manual_ack=True,
        )
        self._connect_properties: Properties | None = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry_s
            props.ReceiveMaximum = 1000
            self._connect_properties = props
        if address.username:
            self._client.username_pw_set(address.username, address.password)
        if address.tls:
            self._client.tls_set_context(address.ssl_context())
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._worker = threading.Thread(target=self._work, name="ingest-writer", daemon=True)

    def status(self) -> dict[str, Any]:
        """For /healthz: not ok while the broker is unreachable or writes fail."""
        return {
            **self.ingest.status(),
            **self.stats.as_dict(),
            "ok": self.stats.connected and self.stats.last_error is None,
            "queued": self._queue.qsize(),
        }

    def subscriptions(self) -> list[str]:
        """The topic filters the controller subscribes to, under `$share/<group>/` when a shared
        group is set on MQTT v5."""
        topics = self.topics.subscriptions()
        if self._shared_group and self._v5:
            return [f"$share/{self._shared_group}/{t}" for t in topics]
        return topics

    def start(self) -> None:
        """Start the writer thread and connect to the broker in the background; returns at once."""
        collect_less_often()  # this process ingests: large groups, see the function
        self._worker.start()
        kwargs: dict[str, Any] = {}
        if self._v5:
            kwargs["clean_start"] = False
            kwargs["properties"] = self._connect_properties
        self._client.connect_async(self.address.host, self.address.port, 30, **kwargs)
        self._client.loop_start()

    def stop(self, timeout: float = 10) -> None:
        """Stop taking messages, write what was received, then disconnect."""
        self._stop.set()
        self._worker.join(timeout)
        self.stats.connected = False
        self._client.disconnect()
        self._client.loop_stop()

    def wait_connected(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the broker connection; True once connected."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stats.connected:
                return True
            time.sleep(0.02)
        return False

    def publish(
        self, topic: str, payload: bytes, timeout: float = 10.0, retain: bool = False
    ) -> None:
        """Publish a command at QoS 1 (`retain`: kept by the broker for every later
        subscriber) and wait for the broker's PUBACK; raises ConnectionError when that does
        not happen (the caller puts the work back for its next turn)."""
        if not self.stats.connected:
            raise ConnectionError(f"not connected to the broker {self.address.display()}")
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise ConnectionError(f"the broker did not acknowledge {topic} within {timeout:.0f} s")

    # --- paho callbacks (network thread) ------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self.stats.last_error = f"broker {self.address.display()} refused: {reason}"
            log.error("%s: check the controller's MQTT credentials", self.stats.last_error)
            return
        self.stats.connected = True
        self.stats.last_error = None
        log.info("ingest connected to %s", self.address.display())
        if self._subscribe:
            client.subscribe([(t, 1) for t in self.subscriptions()])

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if self.stats.connected and not self._stop.is_set():
            log.warning("ingest lost the broker (%s); reconnecting", reason)
        self.stats.connected = False

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.stats.received += 1
        now = datetime.now(UTC)
        self.stats.last_message_at = now
        self._queue.put(_Received(IncomingMessage(msg.topic, msg.payload, now), msg.mid, msg.qos))

    # --- the writer thread --------------------------------------------------------------

    def _next_group(self) -> tuple[list[_Received], SampleCopy | None]:
        """Up to batch_max messages, each checked (`Ingest.check`) as it is taken: wait at
        most batch_wait, not counting the checking, for the group to fill, but close it as
        soon as the flow pauses. The broker sends only so many unacknowledged messages (its
        inflight window); waiting for more than that would only add latency.

        Checking while the group fills puts the wait to use: the writer checked a group only
        once it was closed, and idled while it filled. (Checking on paho's thread instead
        made the two threads contend for the interpreter while a group was stored: SQLite
        lets it go at every row, and waited up to a switch interval to have it back.) On
        PostgreSQL each checked message's readings are also COPYed at once (`SampleCopy`),
        so the server stores them while the rest of the group arrives."""
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return [], None
        group = [first]
        gathering = _Gathering(self.ingest)
        deadline = time.monotonic() + self.batch_wait_s + gathering.check(first)
        while len(group) < self.batch_max:
            try:  # what is already queued, without a timed wait for each message
                received = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    received = self._queue.get(timeout=min(remaining, IDLE_CLOSE_S))
                except queue.Empty:
                    break
            group.append(received)
            deadline += gathering.check(received)
        return group, gathering.copy

    def _work(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            group, copy = self._next_group()
            if group:
                self._store(group, copy)

    def _store(self, group: list[_Received], copy: SampleCopy | None = None) -> None:
        delay = 0.5
        while True:
            try:
                # The COPY is the first attempt's only: `handle` closes it whatever happens.
                self.ingest.handle([r.message for r in group], [r.checked for r in group], copy)
                break
            except Exception as exc:
                copy = None
                # The database failed, not the input: keep the messages unacknowledged and
                # try again; if we die meanwhile the broker redelivers them.
                self.stats.db_failures += 1
                self.stats.last_error = f"database write failed: {exc}"
                log.error(
                    "%s; retrying in %.0f s (messages kept, not acknowledged)",
                    self.stats.last_error,
                    delay,
                )
                if self._stop.wait(delay) and self._stop.is_set():
                    log.error(
                        "stopping with %d messages unstored; the broker will redeliver", len(group)
                    )
                    return
                delay = min(delay * 2, 30)
        self.stats.groups += 1
        self.stats.last_error = None
        for r in group:
            if r.qos > 0:
                self._client.ack(r.mid, r.qos)
        self.stats.acked += len(group)
