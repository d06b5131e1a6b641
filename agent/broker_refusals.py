"""What a broker's refusals mean, and what a technician does about each.

MQTT 5.0 lets a broker answer a CONNECT (CONNACK, spec section 3.2.2.2) and a QoS 1 PUBLISH
(PUBACK, section 3.4.2.1) with a reason code; a code below 0x80 (128) is a success, 0x80 or
more a refusal. MQTT 3.1.1 has CONNACK return codes (section 3.2.2.3) but no way to refuse a
publish: Mosquitto acknowledges and drops what its ACL or its size limit would refuse, which
is why the agent caps its batches in bytes and why `?protocol=5` is worth having.
"""

from __future__ import annotations

from dataclasses import dataclass

from paho.mqtt.reasoncodes import ReasonCode

from fleet.protocol.broker_url import BrokerAddress

# MQTT 5.0 spec section 3.4.2.1, PUBACK Reason Codes: every code a PUBACK may carry.
PUBACK_REASONS = {
    0: "Success",
    16: "No matching subscribers",
    128: "Unspecified error",
    131: "Implementation specific error",
    135: "Not authorized",
    144: "Topic Name invalid",
    145: "Packet Identifier in use",
    151: "Quota exceeded",
    153: "Payload format invalid",
}
# Not a PUBACK code, but what this agent reports when a batch is too large for the broker:
# the broker's CONNACK Maximum Packet Size (section 3.2.2.3.6) is below it, or the broker
# closed the connection on it (Mosquitto 2.0 answers a message over `message_size_limit` with
# a PUBACK of 149, which the spec does not allow and paho takes for a protocol error).
PACKET_TOO_LARGE = 149


def code_value(code: ReasonCode | int) -> int:
    """The numeric reason code, whether paho gave a ReasonCode or a plain int."""
    return code.value if isinstance(code, ReasonCode) else int(code)


def is_success(code: ReasonCode | int) -> bool:
    """MQTT 5.0 spec section 2.4: reason codes below 0x80 indicate success."""
    return code_value(code) < 0x80


@dataclass(frozen=True)
class Refusal:
    """A broker's no to one publish: the PUBACK reason code, the spec's name for it, and
    what to do, in a technician's words."""

    reason_code: int
    reason: str
    fix: str

    def __str__(self) -> str:
        return f"{self.reason} (reason code {self.reason_code}). Fix: {self.fix}"


def puback_refusal(code: ReasonCode | int, address: BrokerAddress, topic: str) -> Refusal:
    """The Refusal for a PUBACK reason code of 128 or more (MQTT 5.0 spec section 3.4.2.1)."""
    value = code_value(code)
    reason = PUBACK_REASONS.get(value) or (str(code) if isinstance(code, ReasonCode) else "")
    reason = reason or f"reason code {value}"
    return Refusal(value, reason, _fix(value, address, topic))


def packet_too_large(size: int, limit: int, address: BrokerAddress, why: str) -> Refusal:
    """A batch of `size` bytes that the broker at `address` will not take; `limit` is the most
    it takes (as announced, or as learned), `why` how that is known."""
    return Refusal(
        PACKET_TOO_LARGE,
        "Packet too large",
        f"{why}; the agent sends batches of at most {limit:,} bytes from now on. To send "
        f"whole batches, set `max_packet_size` on the broker {address.display()} above "
        "MAX_BATCH_BYTES (deploy/mosquitto/fleet-queues.conf has 300000) and remove any "
        "`message_size_limit`",
    )


def _fix(value: int, address: BrokerAddress, topic: str) -> str:
    broker = address.display()
    if value == 135:
        if address.username:
            return (
                f"check the ACL for user {address.username!r} on topic {topic!r} in the acl "
                f"file of the broker {broker} (`fleet mqtt-auth export --format mosquitto` "
                "writes one that grants it), then reload the broker (Mosquitto: SIGHUP)"
            )
        return (
            f"the broker {broker} does not let an anonymous client publish on {topic!r}: put "
            "the site's broker user in the URL (mqtt://site-<code>@host, password in "
            "FLEET_MQTT_PASSWORD), or grant the topic in the broker's acl file"
        )
    if value == 151:
        return (
            f"the broker {broker} holds as much as it may for this client or for the "
            "controller's session (Mosquitto: max_queued_messages and max_queued_bytes in "
            "deploy/mosquitto/fleet-queues.conf; EMQX: mqtt.max_mqueue_len): check that the "
            "controller is running and taking its messages, or raise those limits"
        )
    if value == 153:
        return (
            f"the broker {broker} judged the payload's format invalid on {topic!r}; the agent "
            "sends UTF-8 JSON: check the broker's plugins or rules for that topic"
        )
    if value == 144:
        return (
            f"the broker {broker} does not accept the topic {topic!r}: check --topic-root "
            "(FLEET_TOPIC_ROOT) against the broker's topic rules"
        )
    if value == 145:
        return "the broker still holds another message with this packet id; it goes again"
    return (
        f"look in the log of the broker {broker} at this time for why (a plugin, a bridge or "
        "a rule refused it)"
    )


def connack_refusal(code: ReasonCode | int, address: BrokerAddress) -> str:
    """What a refused CONNECT means (MQTT 5.0 spec section 3.2.2.2; 3.1.1 section 3.2.2.3)."""
    text = str(code)
    value = code_value(code)
    if value in (4, 5, 134, 135):
        return (
            f"broker {address.display()} refused the login ({text}): check the MQTT user "
            "and password (FLEET_MQTT_PASSWORD or the URL), or re-enrol the agent"
        )
    return f"broker {address.display()} refused the connection ({text})"
