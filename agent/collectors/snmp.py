"""SNMP v1/v2c/v3 collector: one GET per poll with every object of the profile.

One SnmpEngine (and so one UDP socket) per collector, shared by every target: an engine per
target costs megabytes and event-loop time. What can be computed once is computed once: the
request's var-binds per profile (no MIB lookups per poll), the transport target per address.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pysnmp.error import PySnmpError
from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    get_cmd,
)
from pysnmp.proto import errind
from pysnmp.proto.rfc1902 import OctetString
from pysnmp.proto.rfc1905 import EndOfMibView, NoSuchInstance, NoSuchObject

from agent.collectors import Target, register, unreachable
from agent.collectors.cleaning import make_reading
from agent.snmpv3 import usm_user_data
from fleet.protocol.messages import ErrorFlags, Flag, Power, Reading, utcnow
from fleet.protocol.profiles import PollSettings, Profile, SnmpObject
from fleet.protocol.snmpv3 import KEY_MIN

_ABSENT = (NoSuchObject, NoSuchInstance, EndOfMibView)
_NO_SUCH_NAME = 2  # SNMPv1 error-status: the agent has no such object


@dataclass(frozen=True)
class _Plan:
    """A profile's request, built once: the var-binds and what each answer means."""

    objects: tuple[SnmpObject, ...]
    var_binds: tuple[ObjectType, ...]
    mp_model: int  # 0 = SNMPv1, 1 = SNMPv2c


@register("snmp")
class SnmpCollector:
    def __init__(self) -> None:
        self._engine: SnmpEngine | None = None
        self._context = ContextData()
        self._plans: dict[int, tuple[Profile, _Plan]] = {}
        self._auth: dict[tuple[str, int], CommunityData] = {}
        self._v3_auth: dict[tuple[str, ...], Any] = {}
        self._transports: dict[tuple[str, int, float, int], UdpTransportTarget] = {}

    async def poll(self, target: Target) -> Reading:
        ts = utcnow()
        settings = target.profile.snmp
        if settings is None:
            return unreachable(
                target,
                f"profile {target.profile.id!r} has no snmp section",
                ts,
                fix="give the device a profile whose protocol is snmp",
            )
        poll = target.profile.poll
        tries = poll.retries + 1
        try:
            plan = self._plan(target.profile)
            transport = await self._transport(target.host, target.port, poll)
            auth = self._auth_for(target, plan.mp_model)
            if isinstance(auth, str):
                return unreachable(target, auth, ts, fix=_V3_FIX)
            objects, var_binds = plan.objects, plan.var_binds
            # SNMPv1 agents answer noSuchName for the whole request when one object is
            # missing: drop that object and ask again, as v2c would have dropped just it.
            for _ in range(len(objects)):
                error_indication, error_status, error_index, answers = await get_cmd(
                    self._engine_or_new(),
                    auth,
                    transport,
                    self._context,
                    *var_binds,
                    lookupMib=False,
                )
                if error_indication or int(error_status) != _NO_SUCH_NAME:
                    break
                drop = int(error_index) - 1
                if not 0 <= drop < len(objects) or len(objects) == 1:
                    break
                objects = objects[:drop] + objects[drop + 1 :]
                var_binds = var_binds[:drop] + var_binds[drop + 1 :]
        except PySnmpError as exc:
            if "transport address" in str(exc):
                return unreachable(target, "the host name does not resolve", ts)
            return unreachable(target, f"SNMP request failed: {exc}", ts)
        except Exception as exc:  # a poll never raises for device trouble
            return unreachable(target, f"SNMP request failed: {type(exc).__name__}: {exc}", ts)
        if error_indication:
            if isinstance(error_indication, errind.RequestTimedOut):
                problem = f"SNMP timeout after {tries} {'try' if tries == 1 else 'tries'}"
            elif isinstance(error_indication, _V3_REFUSALS):
                # The device answered but refused our SNMPv3 credentials: say which part.
                problem = f"SNMPv3 refused: {_v3_problem(error_indication)}"
                return unreachable(target, problem, ts, fix=_V3_FIX)
            else:
                problem = f"SNMP error: {error_indication}"
            return unreachable(target, problem, ts)
        if int(error_status):
            where = ""
            if 0 < int(error_index) <= len(objects):
                where = f" at {objects[int(error_index) - 1].oid}"
            status = getattr(error_status, "prettyPrint", error_status.__str__)()
            text = (
                f"{target.where} answered SNMP error {status}{where}: check the OIDs of "
                f"firmware profile {target.profile.id!r} against the device's MIB"
            )
            return make_reading(target.device.id, ts, True, error=text)
        values = {}
        for obj, (_, value) in zip(objects, answers, strict=False):
            if isinstance(value, _ABSENT):
                continue  # the device lacks this object: leave the field out
            try:
                values[obj.field] = convert(obj, value)
            except Exception:  # noqa: S112  one garbled value costs its field, not the reading
                continue
        return reading_from_values(target, values, ts)

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        self._transports.clear()
        self._auth.clear()
        self._v3_auth.clear()
        if engine is not None:
            engine.close_dispatcher()

    def _engine_or_new(self) -> SnmpEngine:
        # Made inside the running loop: pysnmp's dispatcher binds to the loop it is made in.
        if self._engine is None:
            self._engine = SnmpEngine()
        return self._engine

    def _plan(self, profile: Profile) -> _Plan:
        cached = self._plans.get(id(profile))
        if cached is not None and cached[0] is profile:
            return cached[1]
        assert profile.snmp is not None
        objects = tuple(profile.snmp.objects)
        # Resolved once here; pysnmp skips resolution for an already resolved ObjectType.
        mib_view = _mib_view(self._engine_or_new())
        var_binds = tuple(
            ObjectType(ObjectIdentity(obj.oid)).resolve_with_mib(mib_view) for obj in objects
        )
        plan = _Plan(objects, var_binds, 0 if profile.snmp.version == "1" else 1)
        self._plans[id(profile)] = (profile, plan)
        return plan

    def _community(self, community: str, mp_model: int) -> CommunityData:
        key = (community, mp_model)
        auth = self._auth.get(key)
        if auth is None:
            auth = self._auth[key] = CommunityData(community, mpModel=mp_model)
        return auth

    def _auth_for(self, target: Target, mp_model: int) -> Any:
        """CommunityData for v1/v2c, UsmUserData for v3, or a problem (str) to report."""
        v3 = target.snmp_v3
        if v3 is None:
            return self._community(target.community, mp_model)
        if not v3.auth_key or not v3.priv_key:
            return f"SNMPv3 user {v3.user!r} has no auth_key or priv_key (authPriv needs both)"
        if len(v3.auth_key) < KEY_MIN or len(v3.priv_key) < KEY_MIN:
            return f"an SNMPv3 key of user {v3.user!r} is shorter than {KEY_MIN} characters"
        key = (v3.user, v3.auth_protocol, v3.priv_protocol, v3.auth_key, v3.priv_key)
        auth = self._v3_auth.get(key)
        if auth is None:
            auth = self._v3_auth[key] = usm_user_data(v3, v3.auth_key, v3.priv_key)
        return auth

    async def _transport(self, host: str, port: int, poll: PollSettings) -> UdpTransportTarget:
        # Cached: create() resolves the address through the default executor each time.
        key = (host, port, poll.timeout_s, poll.retries)
        transport = self._transports.get(key)
        if transport is None:
            transport = await UdpTransportTarget.create(
                (host, port), timeout=poll.timeout_s, retries=poll.retries
            )
            self._transports[key] = transport
        return transport


_V3_REFUSALS = (
    errind.WrongDigest,
    errind.AuthenticationFailure,
    errind.DecryptionError,
    errind.UnknownUserName,
    errind.UnknownSecurityName,
    errind.UnsupportedSecurityLevel,
)
_V3_FIX = (
    "check the SNMPv3 user, protocols (SHA/AES) and keys: the keys come from the "
    "secrets file or environment named by secret:NAME in the site config"
)


def _v3_problem(indication: object) -> str:
    # Names the part that is wrong, never the key itself.
    if isinstance(indication, (errind.WrongDigest, errind.AuthenticationFailure)):
        return "wrong authentication key or protocol (the message digest did not match)"
    if isinstance(indication, errind.DecryptionError):
        return "wrong privacy key or protocol (the device could not decrypt)"
    if isinstance(indication, (errind.UnknownUserName, errind.UnknownSecurityName)):
        return "the device does not know this SNMPv3 user"
    return "the device does not accept authPriv for this user"


def _mib_view(engine: SnmpEngine) -> Any:
    from pysnmp.hlapi.varbinds import MibViewControllerManager

    return MibViewControllerManager.get_mib_view_controller(engine.cache)


def convert(obj: SnmpObject, value: Any) -> Any:
    """An SNMP value as the profile says to read it: map, then type and scale."""
    if isinstance(value, OctetString):
        text = value.asOctets().decode("utf-8", "replace")
    else:
        text = value.prettyPrint()
    if obj.map is not None:
        return obj.map.get(text)
    try:
        if obj.type == "string":
            return text
        if obj.type == "timeticks":
            return round(int(value) / 100 * obj.scale, 9)
        number = int(value) if obj.type == "int" else float(text)
    except (TypeError, ValueError):
        return None  # garbage for this object: leave the field out rather than fail the poll
    if obj.scale == 1.0:
        return number
    return round(number * obj.scale, 9)  # 271 * 0.1 is 27.1, not 27.100000000000001


def reading_from_values(target: Target, values: dict[str, Any], ts: datetime) -> Reading:
    """A Reading from profile fields (`power`, `errors.fan`, `metrics.x`, ...) and their values."""
    settings = target.profile.snmp
    fields: dict[str, Any] = {}
    flags: dict[str, Flag] = {}
    metrics: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        if name.startswith("errors."):
            if value in Flag.__members__:
                flags[name.split(".", 1)[1]] = Flag(value)
        elif name.startswith("metrics."):
            metrics[name.split(".", 1)[1]] = value
        elif name == "power":
            fields["power"] = Power(value) if value in Power.__members__ else Power.unknown
        elif name in ("input", "firmware"):
            fields[name] = str(value)
        else:
            fields[name] = value
    if "power" not in fields and settings is not None:
        fields["power"] = Power(settings.power_when_reachable)
    return make_reading(
        target.device.id,
        ts,
        True,
        errors=ErrorFlags(**flags) if flags else None,
        metrics=metrics,
        source=target.where,
        out_of_range_fix=(f"check the scale and type in firmware profile {target.profile.id!r}"),
        **fields,
    )
