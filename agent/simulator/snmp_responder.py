"""A small SNMP v1/v2c agent for simulated devices: GET and GETNEXT (enough for snmpwalk),
and SET of the objects a profile names: the firmware-URL object that starts an update, and
`snmp.power_set` / `snmp.input_set`, which switch the device as its buttons would.

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
from pyasn1.type import univ
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
_BAD_VALUE = 3  # SNMPv1 error-status
_GEN_ERR = 5  # error-status
# SNMPv2 error-status (RFC 3416 section 3); an SNMPv1 agent says noSuchName or badValue
# instead (the RFC 3584 section 4.3 mapping).
_NO_ACCESS = 6
_WRONG_TYPE = 7
_WRONG_VALUE = 10
_INCONSISTENT_VALUE = 12
_NOT_WRITABLE = 17
_V1_STATUS = {
    _NO_ACCESS: _NO_SUCH_NAME,
    _NOT_WRITABLE: _NO_SUCH_NAME,
    _WRONG_TYPE: _BAD_VALUE,
    _WRONG_VALUE: _BAD_VALUE,
    _INCONSISTENT_VALUE: _BAD_VALUE,
}
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


def _is(value: Any, kind: type[univ.Integer] | type[univ.OctetString]) -> bool:
    """The var-bind's value is exactly of that ASN.1 type (its tag): a Counter32 or an
    IpAddress is not an INTEGER or an OCTET STRING for a SET, though pyasn1 subclasses them."""
    return bool(getattr(value, "tagSet", None) == kind.tagSet)


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
        """The table of `profile`'s SNMP objects, with MIB-II's system group that every simulated
        device serves."""
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
        """The agent of `behaviour`'s device, serving `table`'s objects to `community` (read and
        write); it has no socket until serve_device binds one."""
        self.behaviour = behaviour
        self.table = table
        self.community = community.encode()
        # Communities that read but may not write (a `rocommunity`): a SET is refused noAccess.
        self.read_only_communities: set[bytes] = set()
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
        """The simulated device's id, as in the site config."""
        return self.behaviour.device.id

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """asyncio's callback once the socket is bound: keep the transport and note the address."""
        # CPython's UDP transport does not subclass asyncio.DatagramTransport: cast, not check.
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.address = transport.get_extra_info("sockname")[:2]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        """asyncio's callback for each datagram: answer it unless the device is dead (`alive`
        False), counting it either way; a request that cannot be answered is dropped, as a real
        agent would."""
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
        """Close the device's socket: it answers nothing more."""
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
        community = bytes(p_mod.apiMessage.get_community(request))
        if community != self.community and community not in self.read_only_communities:
            return None
        pdu = p_mod.apiMessage.get_pdu(request)
        if pdu.isSameTypeWith(p_mod.SetRequestPDU()):
            writable = community == self.community
            return self._set(p_mod, version, request, pdu, writable)
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

    def _set(self, p_mod: Any, version: int, request: Any, pdu: Any, writable: bool) -> bytes:
        """SET, all or nothing as RFC 3416 4.2.5 asks: every var-bind is checked before any is
        applied. Writable are the profile's firmware-URL object (taking it starts an update:
        download, check, reboot, as a device's own updater would), and its `power_set` and
        `input_set` objects. A refusal carries the error a real agent gives: noAccess for a
        read-only community, notWritable for another object, wrongType, wrongValue for a value
        the object does not take, inconsistentValue for a power switch while warming or
        cooling (PJLink's ERR3)."""
        response = p_mod.apiMessage.get_response(request)
        response_pdu = p_mod.apiMessage.get_pdu(response)
        var_binds = list(p_mod.apiPDU.get_varbinds(pdu))
        actions: list[tuple[str, Any]] = []
        for index, (oid, value) in enumerate(var_binds, start=1):
            status, action = (
                (_NO_ACCESS, None) if not writable else self._set_action(tuple(oid), value)
            )
            if status:
                if version == api.SNMP_VERSION_1:
                    status = _V1_STATUS.get(status, status)
                p_mod.apiPDU.set_error_status(response_pdu, status)
                p_mod.apiPDU.set_error_index(response_pdu, index)
                break
            actions.append(cast(tuple[str, Any], action))
        else:
            self._apply(actions)
        p_mod.apiPDU.set_varbinds(response_pdu, var_binds)
        return bytes(encoder.encode(response))

    def _set_action(self, key: OidTuple, value: Any) -> tuple[int, tuple[str, Any] | None]:
        """(error-status, what to do): error-status 0 when the var-bind may be applied."""
        profile = self.behaviour.profile
        url_oid = profile.update.snmp_url_oid
        if url_oid is not None and key == _oid(url_oid):
            if not _is(value, univ.OctetString):
                return _WRONG_TYPE, None
            return 0, ("firmware", bytes(value).decode(errors="replace"))
        settings = profile.snmp
        for kind, obj in (
            ("power", settings.power_set if settings else None),
            ("input", settings.input_set if settings else None),
        ):
            if obj is None or key != _oid(obj.oid):
                continue
            if obj.type == "int":
                if not _is(value, univ.Integer):
                    return _WRONG_TYPE, None
                written = str(int(value))
            else:
                if not _is(value, univ.OctetString):
                    return _WRONG_TYPE, None
                written = bytes(value).decode(errors="replace")
            # What was asked: the name the written value stands for (no map: the name itself).
            names = {v: k for k, v in (obj.values or {}).items()}
            wanted = names.get(written) if obj.values is not None else written
            if kind == "power":
                if wanted not in ("on", "off"):
                    return _WRONG_VALUE, None
                if self.behaviour.power().value in ("warming", "cooling"):
                    return _INCONSISTENT_VALUE, None
                return 0, ("power", wanted == "on")
            if wanted is None or wanted not in profile.simulation.inputs:
                return _WRONG_VALUE, None
            if not self.behaviour.on:
                return _INCONSISTENT_VALUE, None  # an input is chosen only with the display on
            return 0, ("input", wanted)
        return _NOT_WRITABLE, None

    def _apply(self, actions: list[tuple[str, Any]]) -> None:
        for kind, argument in actions:
            if kind == "firmware":
                self.update_task = asyncio.get_running_loop().create_task(
                    take_update(self, argument)
                )
            elif kind == "power":
                self.behaviour.switch(argument)
            else:
                self.behaviour.select_input(argument)

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
    """Close every responder's socket."""
    for responder in responders:
        responder.close()
