"""A small SNMP v1/v2c agent for simulated devices: GET and GETNEXT (enough for snmpwalk),
and SET of the one object that starts a firmware update.

One UDP socket per simulated device, all in one asyncio loop and without an SnmpEngine, so a
thousand devices cost a thousand sockets and little else. Messages are decoded and encoded with
pysnmp's protocol modules. Like a real agent it ignores a wrong community (no answer), and it
can be switched dead and back for fault tests. `quirks` (SnmpQuirks) make it answer as some
agents in the field do: one OID per request, only the first, tooBig, genErr, odd types.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import api
from pysnmp.proto.api import verdec

from agent.simulator.behaviour import DeviceBehaviour
from agent.simulator.firmware_update import take_update
from fleet.protocol.profiles import Profile, SnmpObject

log = logging.getLogger(__name__)


@dataclass
class SnmpQuirks:
    """Ways real agents answer that a test or the demo can switch on, one per field."""

    # Silent (no answer at all) on a GET of more OIDs than this.
    max_oids: int | None = None
    # Answers only the first OID of a GET, whatever it was asked.
    first_only: bool = False
    # tooBig on a GET of more OIDs than this.
    too_big_over: int | None = None
    # SNMPv1: genErr, not noSuchName, for an object it does not have.
    gen_err_for_missing: bool = False
    # Var-binds answered in reverse order.
    reversed_order: bool = False
    # Values served as given instead of the device's, by OID (Opaque floats, odd types).
    raw_values: dict[str, Any] = field(default_factory=dict)


OidTuple = tuple[int, ...]
_TOO_BIG = 1  # error-status
_NO_SUCH_NAME = 2  # SNMPv1 error-status
_GEN_ERR = 5  # error-status
_NOT_WRITABLE = 17  # SNMPv2 error-status
_INT32 = (-(2**31), 2**31 - 1)

# MIB-II's system group, served by every simulated device whether or not its profile reads
# it, as real agents do (snmpwalk shows it).
SYS_OBJECT_ID = "1.3.6.1.2.1.1.2.0"  # an OBJECT IDENTIFIER on the wire, not a string
SYSTEM_GROUP = (
    SnmpObject(field="metrics.sys_descr", oid="1.3.6.1.2.1.1.1.0", type="string"),
    SnmpObject(field="metrics.sys_object_id", oid=SYS_OBJECT_ID, type="string"),
    SnmpObject(field="uptime_s", oid="1.3.6.1.2.1.1.3.0", type="timeticks"),
    SnmpObject(field="metrics.sys_name", oid="1.3.6.1.2.1.1.5.0", type="string"),
    SnmpObject(field="metrics.sys_location", oid="1.3.6.1.2.1.1.6.0", type="string"),
)


def _oid(text: str) -> OidTuple:
    return tuple(int(part) for part in text.split("."))


@dataclass(frozen=True)
class ObjectTable:
    """A profile's objects in OID order, built once per profile and shared by its devices."""

    oids: tuple[OidTuple, ...]
    objects: tuple[SnmpObject, ...]
    by_oid: dict[OidTuple, SnmpObject]

    @classmethod
    def for_profile(cls, profile: Profile) -> ObjectTable:
        objects = {_oid(o.oid): o for o in SYSTEM_GROUP}
        objects.update({_oid(o.oid): o for o in (profile.snmp.objects if profile.snmp else [])})
        ordered = sorted(objects.items())
        return cls(
            oids=tuple(k for k, _ in ordered),
            objects=tuple(v for _, v in ordered),
            by_oid=dict(ordered),
        )


class DeviceResponder(asyncio.DatagramProtocol):
    """One simulated device's SNMP agent. Set `alive = False` to make it stop answering."""

    def __init__(self, behaviour: DeviceBehaviour, table: ObjectTable, community: str) -> None:
        self.behaviour = behaviour
        self.table = table
        self.community = community.encode()
        self.alive = True
        # OIDs this device does not have (noSuchObject), for tests of partial answers.
        self.missing: set[str] = set()
        self.quirks = SnmpQuirks()
        self.requests = 0
        self.unanswered = 0  # datagrams that came while it was not answering
        self.update_task: asyncio.Task[None] | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.address: tuple[str, int] = ("", 0)

    @property
    def device_id(self) -> str:
        return self.behaviour.device.id

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # CPython's UDP transport does not subclass asyncio.DatagramTransport: cast, not check.
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.address = transport.get_extra_info("sockname")[:2]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if not self.alive or self.transport is None:
            self.unanswered += 1
            return
        self.requests += 1
        try:
            answer = self.answer(data)
        except Exception:  # a bad request must never take the simulator down
            log.debug("%s: cannot answer a request", self.device_id, exc_info=True)
            return
        if answer is not None:
            self.transport.sendto(answer, addr)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def answer(self, data: bytes) -> bytes | None:
        """The encoded response to one request, or None when a real agent would stay silent."""
        try:
            version = int(verdec.decode_message_version(data))
            p_mod = api.PROTOCOL_MODULES[version]
            request, _ = decoder.decode(data, asn1Spec=p_mod.Message())
        except Exception:
            return None  # not SNMP v1/v2c: real agents drop it
        if bytes(p_mod.apiMessage.get_community(request)) != self.community:
            return None
        pdu = p_mod.apiMessage.get_pdu(request)
        if pdu.isSameTypeWith(p_mod.SetRequestPDU()):
            return self._set(p_mod, version, request, pdu)
        if pdu.isSameTypeWith(p_mod.GetRequestPDU()):
            next_ = False
        elif pdu.isSameTypeWith(p_mod.GetNextRequestPDU()):
            next_ = True
        else:
            return None  # SET, BULK, traps: not simulated
        response = p_mod.apiMessage.get_response(request)
        response_pdu = p_mod.apiMessage.get_pdu(response)
        now = self.behaviour.clock()
        var_binds = []
        asked = list(p_mod.apiPDU.get_varbinds(pdu))
        q = self.quirks
        if q.max_oids is not None and len(asked) > q.max_oids:
            return None
        if q.too_big_over is not None and len(asked) > q.too_big_over:
            p_mod.apiPDU.set_error_status(response_pdu, _TOO_BIG)
            p_mod.apiPDU.set_varbinds(response_pdu, asked)
            return bytes(encoder.encode(response))
        if q.first_only:
            asked = asked[:1]
        for index, (oid, _) in enumerate(asked, start=1):
            key = tuple(oid)
            if next_:
                key, value = self._next(p_mod, key, now)
            else:
                value = self._value(p_mod, key, now)
            if value is None:
                if version == api.SNMP_VERSION_1:
                    status = _GEN_ERR if q.gen_err_for_missing else _NO_SUCH_NAME
                    p_mod.apiPDU.set_error_status(response_pdu, status)
                    p_mod.apiPDU.set_error_index(response_pdu, index)
                    var_binds = list(p_mod.apiPDU.get_varbinds(pdu))
                    break
                if next_:
                    value = p_mod.EndOfMibView()
                elif key in self.table.by_oid and self.table.by_oid[key].oid not in self.missing:
                    value = p_mod.NoSuchInstance()  # known object, nothing to report now
                else:
                    value = p_mod.NoSuchObject()
            var_binds.append((p_mod.ObjectIdentifier(key), value))
        if q.reversed_order:
            var_binds.reverse()
        p_mod.apiPDU.set_varbinds(response_pdu, var_binds)
        return bytes(encoder.encode(response))

    def _set(self, p_mod: Any, version: int, request: Any, pdu: Any) -> bytes:
        """SET: only the profile's firmware-URL object is writable; taking it starts an update
        (download, check, reboot), as a device's own updater would."""
        response = p_mod.apiMessage.get_response(request)
        response_pdu = p_mod.apiMessage.get_pdu(response)
        var_binds = list(p_mod.apiPDU.get_varbinds(pdu))
        url_oid = self.behaviour.profile.update.snmp_url_oid
        for index, (oid, _value) in enumerate(var_binds, start=1):
            if url_oid is None or tuple(oid) != _oid(url_oid):
                # notWritable (v2c), noSuchName (v1)
                status = _NO_SUCH_NAME if version == api.SNMP_VERSION_1 else _NOT_WRITABLE
                p_mod.apiPDU.set_error_status(response_pdu, status)
                p_mod.apiPDU.set_error_index(response_pdu, index)
                break
        else:
            url = bytes(var_binds[0][1]).decode(errors="replace")
            self.update_task = asyncio.get_running_loop().create_task(take_update(self, url))
        p_mod.apiPDU.set_varbinds(response_pdu, var_binds)
        return bytes(encoder.encode(response))

    def _value(self, p_mod: Any, key: OidTuple, now: Any) -> Any:
        obj = self.table.by_oid.get(key)
        if obj is None or obj.oid in self.missing:
            return None
        if obj.oid in self.quirks.raw_values:
            return self.quirks.raw_values[obj.oid]
        raw = self.behaviour.value_for(obj, now)
        if raw is None:
            return None
        if obj.oid == SYS_OBJECT_ID:
            return p_mod.ObjectIdentifier(_oid(str(raw)))
        if obj.type == "timeticks" and isinstance(raw, int):
            return p_mod.TimeTicks(raw % 2**32)
        if isinstance(raw, int):
            return p_mod.Integer(min(max(raw, _INT32[0]), _INT32[1]))
        return p_mod.OctetString(str(raw).encode())

    def _next(self, p_mod: Any, key: OidTuple, now: Any) -> tuple[OidTuple, Any]:
        position = bisect.bisect_right(self.table.oids, key)
        for candidate in self.table.oids[position:]:
            value = self._value(p_mod, candidate, now)
            if value is not None:
                return candidate, value
        return key, None


async def serve_device(
    responder: DeviceResponder, host: str = "127.0.0.1", port: int = 0
) -> DeviceResponder:
    """Bind `responder` to a UDP socket (port 0: one the OS picks) and return it."""
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: responder, local_addr=(host, port))
    return responder


def close_all(responders: Iterable[DeviceResponder]) -> None:
    for responder in responders:
        responder.close()
