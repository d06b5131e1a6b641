"""paho-mqtt 2, wrapped once: the rest of the agent sees plain async calls.

paho runs its network loop in its own thread; its callbacks hand results back to the
asyncio loop. `publish` returns only when the broker has acknowledged the message with a
PUBACK whose reason code is a success (MQTT 5.0 spec section 3.4.2.1), which is what lets the
outbox delete a batch; a PUBACK that refuses it raises PublishRefused.

What was not acknowledged when the connection went is failed back to its caller, who sends
it again (the outbox, from disk): paho's own replay of it on the next connect is dropped, so
a message the broker closes the connection on (one over its size limit) is not sent again
and again on every reconnect.

With a session expiry the session is persistent (MQTT v5 clean_start=False with a session
expiry interval, v3.1.1 clean_session=False): the broker keeps the subscriptions and queues
QoS 1 messages (the controller's commands) while the agent is away, and hands them over on
its next connect. A received message is acknowledged (PUBACK) only after its callback has
run on the event loop, so a command the agent dies holding is delivered again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent import metrics
from agent.broker_refusals import (
    Refusal,
    connack_refusal,
    is_success,
    packet_too_large,
    puback_refusal,
)
from fleet.protocol.broker_url import BrokerAddress

log = logging.getLogger(__name__)

# The longest wait between two connect attempts while the broker is away: a broker that is
# back is found within this many seconds (paho doubles the wait from 1 s up to it).
RECONNECT_MAX_S = 5


class BrokerError(Exception):
    """The broker cannot be used: what happened and what to do."""


class NotConnected(BrokerError):
    """Not connected when asked to publish; the message was not sent."""


class LostInFlight(NotConnected):
    """The connection went while the message waited for its PUBACK: it may or may not have
    reached the broker, so it is sent again (the controller recognises a batch's msg_id)."""


class PublishRefused(BrokerError):
    """The broker did not take a QoS 1 message: its PUBACK carried a reason code of 128 or
    more (MQTT 5.0 spec section 3.4.2.1), or the message is larger than the Maximum Packet
    Size the broker announced (section 3.2.2.3.6), so it was never sent.

    `refusal` holds the reason code, the spec's name and the fix; `topic` and `size` (bytes
    of payload) say which message."""

    def __init__(self, refusal: Refusal, topic: str, size: int) -> None:
        """Keep what was refused and why; the message names the size, the topic and the refusal."""
        self.refusal = refusal
        self.topic = topic
        self.size = size
        super().__init__(f"the broker refused {size:,} bytes on {topic}: {refusal}")


def publish_overhead_bytes(topic: str) -> int:
    """The bytes a QoS 1 PUBLISH adds around its payload, at most: fixed header (1 + up to 4
    of remaining length), topic (2 + its UTF-8), packet id (2), and MQTT 5.0's property
    length (1, no properties). MQTT 5.0 spec section 3.3; Maximum Packet Size counts them."""
    return 1 + 4 + 2 + len(topic.encode()) + 2 + 1


class MqttLink:
    """The agent's connection to one broker, paho behind plain async calls: it reconnects by itself,
    subscribes again on every connect, and sets `will` (QoS 1, retained) for the broker to publish
    if the connection is lost."""

    def __init__(
        self,
        address: BrokerAddress,
        client_id: str,
        *,
        will: tuple[str, bytes] | None = None,
        on_connected: Callable[[], None] | None = None,
        keepalive: int = 30,
        session_expiry_s: int | None = None,
        reconnect_max_s: int = RECONNECT_MAX_S,
        log_unreachable: bool = True,
    ) -> None:
        """`session_expiry_s`: keep the session (subscriptions, queued QoS 1 messages) on
        the broker for this long after a disconnect; None or 0 for a clean session.
        `reconnect_max_s`: the longest wait between connect attempts. `log_unreachable`:
        log that readings wait in the outbox while the broker is away (the running agent's
        words; `fleet-agent check`, which has no outbox, says its own)."""
        self.address = address
        self._log_unreachable = log_unreachable
        self.client_id = client_id
        self._on_connected_hook = on_connected
        self._loop: asyncio.AbstractEventLoop | None = None
        # mid -> the publish waiting for its PUBACK, its topic and payload size. Touched only
        # on the event loop: paho calls on_publish holding its own message lock, so a lock of
        # ours taken there and also held around client.publish() (which takes paho's lock)
        # would deadlock.
        self._pending: dict[int, tuple[asyncio.Future[None], str, int]] = {}
        # The Maximum Packet Size of the broker's last CONNACK (MQTT 5.0 only), in bytes.
        self.max_packet_bytes: int | None = None
        self.connected = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.last_error: str | None = None
        self._closing = False
        self._first_result: asyncio.Future[str | None] | None = None
        self._diagnosis: asyncio.Task[None] | None = None
        v5 = address.protocol == "5"
        self.persistent = bool(session_expiry_s)
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            # MQTT v5 takes clean_start at connect time instead.
            clean_session=None if v5 else not self.persistent,
            manual_ack=True,
        )
        self._connect_args: dict[str, Any] = {}
        if v5 and self.persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry_s
            self._connect_args = {"clean_start": False, "properties": props}
        self._keepalive = keepalive
        if address.username:
            self._client.username_pw_set(address.username, address.password)
        if address.tls:
            self._client.tls_set_context(address.ssl_context())
        if will:
            self._client.will_set(will[0], will[1], qos=1, retain=True)
        self._client.reconnect_delay_set(min_delay=1, max_delay=reconnect_max_s)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        # topic -> callback, (re)subscribed on every connect: a clean session forgets them,
        # and a persistent one may have expired while the agent was away.
        self._subscriptions: dict[str, Callable[[bytes], None]] = {}
        # Topics whose callback also takes `current` (see subscribe_current).
        self._current_callbacks: dict[str, Callable[[bytes, bool], None]] = {}
        # Network thread only: subscribe mid -> topic, and the topics the broker has
        # acknowledged (SUBACK) on this connection.
        self._sub_mids: dict[int, str] = {}
        self._subacked: set[str] = set()

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self, first_connect_timeout: float = 10.0) -> None:
        """Connect, keep reconnecting in the background. Raises BrokerError only when the
        broker answered and refused (bad credentials); an unreachable broker is retried."""
        self._loop = asyncio.get_running_loop()
        self._first_result = self._loop.create_future()
        self._client.connect_async(
            self.address.host, self.address.port, self._keepalive, **self._connect_args
        )
        self._client.loop_start()
        try:
            refusal = await asyncio.wait_for(
                asyncio.shield(self._first_result), first_connect_timeout
            )
        except TimeoutError:
            if not self._log_unreachable:
                return
            log.warning(
                "broker %s not reachable yet; readings wait in the outbox, retrying",
                self.address.display(),
            )
            # paho keeps the cause to itself: find it out by hand, without holding up the start.
            self._diagnosis = asyncio.create_task(self._diagnose())
            return
        if refusal:
            await self.close()
            raise BrokerError(refusal)

    async def _diagnose(self) -> None:
        from agent.reach import diagnose

        why = await asyncio.to_thread(diagnose, self.address)
        if why is not None and not self.connected.is_set():
            self.last_error = f"cannot reach {self.address.display()}: {why}"
            log.error("%s; readings wait in the outbox, retrying", self.last_error)

    async def close(self) -> None:
        """Disconnect and stop paho's network thread; publishes still waiting for a PUBACK fail with
        NotConnected."""
        self._closing = True
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        self._fail_pending(NotConnected("link closed"))

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds (None: without limit) for a connection: True once connected,
        False on timeout."""
        try:
            await asyncio.wait_for(self.connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # --- publishing ---------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 30.0,
    ) -> None:
        """Publish and wait for the broker's acknowledgement (QoS 1: a PUBACK whose reason
        code is a success). Raises NotConnected (LostInFlight if the connection went while
        waiting), PublishRefused, or TimeoutError after `timeout` seconds."""
        if not self.connected.is_set():
            raise NotConnected(f"not connected to {self.address.display()}")
        assert self._loop is not None
        limit = self.max_payload_bytes(topic)
        if limit is not None and len(payload) > limit:
            # Sent anyway, the broker would close the connection (spec section 3.2.2.3.6).
            why = (
                f"the broker announced a Maximum Packet Size of {self.max_packet_bytes:,} "
                f"bytes, which leaves {limit:,} for a message on {topic}"
            )
            refusal = packet_too_large(len(payload), limit, self.address, why)
            raise PublishRefused(refusal, topic, len(payload))
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise NotConnected(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        if qos == 0:
            return
        # No await since publish(): a PUBACK, however fast, reaches _acked on this loop
        # only after the future below is in place.
        future: asyncio.Future[None] = self._loop.create_future()
        self._pending[info.mid] = (future, topic, len(payload))
        try:
            await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(info.mid, None)

    def max_payload_bytes(self, topic: str) -> int | None:
        """The largest payload the broker takes on `topic`, in bytes, as its MQTT 5.0
        CONNACK announced it; None when it announced none (or spoke 3.1.1)."""
        if self.max_packet_bytes is None:
            return None
        return self.max_packet_bytes - publish_overhead_bytes(topic)

    def subscribe(self, topic: str, on_message: Callable[[bytes], None]) -> None:
        """Call `on_message(payload)` on the event loop for each message on `topic` (QoS 1),
        from the next connect on (and now, if connected)."""
        self._subscriptions[topic] = on_message
        if self.connected.is_set():
            self._subscribe(self._client, topic)

    def subscribe_current(self, topic: str, on_message: Callable[[bytes, bool], None]) -> None:
        """As `subscribe`, with `on_message(payload, current)`: `current` is true for a
        message that came after the broker acknowledged this connection's subscription
        (the retained message the broker hands over then, or a later one), false for one the
        broker had queued for this persistent session while the agent was away."""
        self._current_callbacks[topic] = on_message
        self.subscribe(topic, lambda payload: on_message(payload, False))

    def _subscribe(self, client: mqtt.Client, topic: str) -> None:
        _rc, mid = client.subscribe(topic, qos=1)
        if mid is not None:
            self._sub_mids[mid] = topic

    # --- paho callbacks (network thread) ------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        refused = reason.is_failure if isinstance(reason, ReasonCode) else bool(reason)
        message = connack_refusal(reason, self.address) if refused else None
        # Whatever paho still holds from before is replayed by it on this connect, before
        # any of ours: its callers have been told it failed and send it again themselves,
        # and a message the broker closed the connection on would be replayed forever.
        client.drop_out_messages()
        if message:
            self.last_error = message
            log.error("%s", message)
        else:
            self.last_error = None
            announced = getattr(props, "MaximumPacketSize", None) if props else None
            self.max_packet_bytes = int(announced) if announced else None
            metrics.BROKER_CONNECTS.inc()
            log.info(
                "connected to %s%s",
                self.address.display(),
                f" (Maximum Packet Size {announced:,} bytes)" if announced else "",
            )
            self._subacked.clear()
            for topic in self._subscriptions:
                self._subscribe(client, topic)
        self._call(self._connected_result, message)

    def _connected_result(self, refusal: str | None) -> None:
        if self._first_result is not None and not self._first_result.done():
            self._first_result.set_result(refusal)
        if refusal is None:
            self.disconnected.clear()
            self.connected.set()
            if self._on_connected_hook:
                self._on_connected_hook()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if self.connected.is_set() and not self._closing:
            log.warning("lost the broker %s (%s); will reconnect", self.address.display(), reason)
        self._call(self._disconnected)

    def _disconnected(self) -> None:
        self.connected.clear()
        self.disconnected.set()
        # Whatever was in flight is not known to be stored: the outbox will send it again.
        self._fail_pending(LostInFlight("connection lost before the broker acknowledged"))

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        # MQTT 3.1.1 PUBACKs carry no reason code: paho gives them Success.
        self._call(self._acked, mid, reason)

    def _acked(self, mid: int, reason: ReasonCode) -> None:
        entry = self._pending.pop(mid, None)
        if entry is None:
            return
        future, topic, size = entry
        if future.done():
            return
        if is_success(reason):
            future.set_result(None)
        else:
            future.set_exception(
                PublishRefused(puback_refusal(reason, self.address, topic), topic, size)
            )

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        topic = self._sub_mids.pop(mid, None)
        if topic is not None:
            self._subacked.add(topic)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        callback: Callable[[bytes], None] | None
        current = self._current_callbacks.get(msg.topic)
        if current is not None:
            # Judged here, on the network thread, in the order the broker sent the packets.
            flag = msg.topic in self._subacked
            callback = functools.partial(_with_flag, current, flag)
        else:
            callback = self._subscriptions.get(msg.topic)
        self._call(self._deliver, callback, bytes(msg.payload), msg.mid, msg.qos)

    def _deliver(
        self, callback: Callable[[bytes], None] | None, payload: bytes, mid: int, qos: int
    ) -> None:
        """On the event loop: hand the message over, then acknowledge it. Unacknowledged (the
        agent died first), the broker delivers it again on the next connect."""
        try:
            if callback is not None:
                callback(payload)
        except Exception:  # a bad message must not stop the link; it is not redelivered
            log.exception("handling a message failed")
        if qos > 0:
            self._client.ack(mid, qos)

    def _fail_pending(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        for future, _, _ in pending.values():
            if not future.done():
                future.set_exception(exc)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)


def _with_flag(callback: Callable[[bytes, bool], None], flag: bool, payload: bytes) -> None:
    callback(payload, flag)
