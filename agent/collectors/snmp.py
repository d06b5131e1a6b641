"""SNMP v1/v2c/v3 collector: one GET per poll with every object of the profile, or as many
as the agent takes per request.

Agents in the field take fewer objects per GET than asked (one only, and time out on more;
or answer the first and leave out the rest), answer tooBig, or fail a whole request for one
object (SNMPv1's noSuchName and genErr). So requests hold at most the profile's
`max_oids_per_request`, and at most what the agent was found to take (learned per address,
from a timeout on a request larger than any it answered, a tooBig, or a short answer); an
object the agent reports an error for is left out and the others asked again. Answers are
matched to objects by OID, never by position, and every object not read is named in the
reading's error. Values become fields in agent/collectors/snmp_values.py.

One SnmpEngine (and so one UDP socket) per collector, shared by every target: an engine per
target costs megabytes and event-loop time. What can be computed once is computed once: the
request's var-binds per profile (no MIB lookups per poll), the transport target per address.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
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
from pysnmp.proto.rfc1905 import EndOfMibView, NoSuchInstance, NoSuchObject

from agent.collectors import Target, register, unreachable
from agent.collectors.cleaning import make_reading
from agent.collectors.snmp_values import ValueProblem, convert, describe
from agent.snmpv3 import usm_user_data
from fleet.protocol.messages import ErrorFlags, Flag, Power, Reading, utcnow
from fleet.protocol.profiles import PollSettings, Profile, SnmpObject
from fleet.protocol.snmpv3 import KEY_MIN

_ABSENT = (NoSuchObject, NoSuchInstance, EndOfMibView)
_TOO_BIG = 1  # error-status: the answer would not fit in one message
_NO_SUCH_NAME = 2  # SNMPv1 error-status: the agent has no such object
# Requests a poll may spend finding one the agent takes, on top of its own (deadline_s).
SPLIT_PROBES = 2


@dataclass
class _Answers:
    """What the requests of one poll got: values by OID, problems said per object."""

    values: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    answered: bool = False  # the agent answered at least one request
    indication: Any = None  # why nothing was answered, if so
    limit: int | None = None  # a limit on OIDs per request learned in this poll
    probing: bool = False  # asking one OID at a time after a larger request timed out


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _fields(oids: list[str], objects: dict[str, SnmpObject]) -> str:
    return ", ".join(describe(objects[oid]) for oid in oids)


@dataclass(frozen=True)
class _Plan:
    """A profile's request, built once: the var-binds and what each answer means."""

    objects: tuple[SnmpObject, ...]
    var_binds: tuple[ObjectType, ...]
    mp_model: int  # 0 = SNMPv1, 1 = SNMPv2c


@register("snmp")
class SnmpCollector:
    """Reads devices over SNMP v1/v2c/v3 with one engine shared by every target, learning per
    address how many OIDs a request may hold."""

    def __init__(self) -> None:
        """Start with empty caches; the engine is made on first use, inside the running loop."""
        self._engine: SnmpEngine | None = None
        self._context = ContextData()
        self._plans: dict[int, tuple[Profile, _Plan]] = {}
        self._auth: dict[tuple[str, int], CommunityData] = {}
        self._v3_auth: dict[tuple[str, ...], Any] = {}
        self._transports: dict[tuple[str, int, float, int], UdpTransportTarget] = {}
        # Per agent address: the most OIDs per request it is known to take (learned from a
        # timeout, a tooBig or a short answer), and the most it has answered.
        self._learned: dict[tuple[str, int], int] = {}
        self._accepted: dict[tuple[str, int], int] = {}

    def deadline_s(self, target: Target) -> float:
        """How long a poll of `target` may take, in seconds: each of its requests one timeout
        with its retries, and two more for finding a smaller request that the agent takes."""
        poll = target.profile.poll
        settings = target.profile.snmp
        count = len(settings.objects) if settings is not None else 1
        per_request = self._limit(target, count)
        requests = -(-count // per_request)
        return poll.timeout_s * (poll.retries + 1) * (requests + SPLIT_PROBES)

    async def poll(self, target: Target) -> Reading:
        """One Reading of `target` from its profile's SNMP objects. A timeout, refused SNMPv3
        credentials or any SNMP failure gives an unreachable Reading; objects not read are named in
        the reading's error."""
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
            got = await self._read(target, plan, auth, transport)
        except PySnmpError as exc:
            if "transport address" in str(exc):
                return unreachable(target, "the host name does not resolve", ts)
            return unreachable(target, f"SNMP request failed: {exc}", ts)
        except Exception as exc:  # a poll never raises for device trouble
            return unreachable(target, f"SNMP request failed: {type(exc).__name__}: {exc}", ts)
        if not got.answered and got.indication is not None:
            error_indication = got.indication
            if isinstance(error_indication, errind.RequestTimedOut):
                problem = f"SNMP timeout after {tries} {'try' if tries == 1 else 'tries'}"
            elif isinstance(error_indication, _V3_REFUSALS):
                # The device answered but refused our SNMPv3 credentials: say which part.
                problem = f"SNMPv3 refused: {_v3_problem(error_indication)}"
                return unreachable(target, problem, ts, fix=_V3_FIX)
            else:
                problem = f"SNMP error: {error_indication}"
            return unreachable(target, problem, ts)
        values: dict[str, Any] = {}
        problems = list(got.problems)
        notes = []
        for obj in plan.objects:
            if obj.oid not in got.values:
                continue
            value = got.values[obj.oid]
            if isinstance(value, _ABSENT):
                continue  # the device lacks this object: leave the field out
            try:
                values[obj.field], note = convert(obj, value)
            except ValueProblem as exc:  # one garbled value costs its field, said so
                problems.append(str(exc))
                continue
            if note:
                notes.append(f"{obj.field}: {note}")
        if got.limit is not None:
            notes.append(f"agent takes {got.limit} OIDs per request")
        error = None
        if problems:
            error = (
                f"{target.where}: {'; '.join(problems)}: check the OIDs and types of firmware "
                f"profile {target.profile.id!r} against the device's MIB"
            )
        return reading_from_values(target, values, ts, error=error, notes=notes)

    async def _read(
        self, target: Target, plan: _Plan, auth: Any, transport: UdpTransportTarget
    ) -> _Answers:
        """GET every object of the plan, in requests of at most the agent's limit. Answers are
        matched to objects by OID. A request that times out, is tooBig, or is answered in
        part is split; an object the agent reports an error for is left out (said) and the
        rest asked again. Stops at the first request nothing answered, if nothing had."""
        by_oid = dict(zip((o.oid for o in plan.objects), plan.var_binds, strict=True))
        objects = {o.oid: o for o in plan.objects}
        key = (target.host, target.port)
        limit = self._limit(target, len(plan.objects))
        queue = deque(_chunks([o.oid for o in plan.objects], limit))
        got = _Answers()
        asked: dict[str, int] = {}
        silent_in_a_row = 0
        while queue:
            chunk = queue.popleft()
            for oid in chunk:
                asked[oid] = asked.get(oid, 0) + 1
            indication, status, index, answers = await get_cmd(
                self._engine_or_new(),
                auth,
                transport,
                self._context,
                *(by_oid[oid] for oid in chunk),
                lookupMib=False,
            )
            if indication:
                timed_out = isinstance(indication, errind.RequestTimedOut)
                if timed_out and len(chunk) > 1 and len(chunk) > self._accepted.get(key, 0):
                    # Never answered a request this big: perhaps too many OIDs for it.
                    queue.extendleft(reversed([[oid] for oid in chunk]))
                    got.probing = True  # learnt only if one alone is answered
                    continue
                if not got.answered:
                    got.indication = indication
                    return got
                silent_in_a_row += 1
                what = "no answer (timeout)" if timed_out else f"SNMP error {indication}"
                got.problems.append(f"{_fields(chunk, objects)}: {what}")
                if silent_in_a_row >= 2:
                    rest = [oid for c in queue for oid in c]
                    if rest:
                        got.problems.append(
                            f"{_fields(rest, objects)}: not asked, the agent fell silent"
                        )
                    return got
                continue
            silent_in_a_row = 0
            got.answered = True
            if got.probing:
                got.probing = False
                self._learn(target, 1, got)
            status_code = int(status)
            if status_code == _TOO_BIG:
                if len(chunk) == 1:
                    got.problems.append(f"{_fields(chunk, objects)}: the agent says tooBig")
                    continue
                half = -(-len(chunk) // 2)
                queue.extendleft(reversed(_chunks(chunk, half)))
                self._learn(target, half, got)
                continue
            if status_code:
                where = int(index) - 1
                if 0 <= where < len(chunk):
                    bad = chunk[where]
                    if status_code != _NO_SUCH_NAME:  # noSuchName: v1's noSuchObject
                        pretty = getattr(status, "prettyPrint", status.__str__)()
                        got.problems.append(
                            f"{_fields([bad], objects)}: the agent answered {pretty}"
                        )
                    rest = chunk[:where] + chunk[where + 1 :]
                    if rest:
                        queue.appendleft(rest)
                elif len(chunk) > 1:
                    queue.extendleft(reversed([[oid] for oid in chunk]))  # find the one
                else:
                    pretty = getattr(status, "prettyPrint", status.__str__)()
                    got.problems.append(f"{_fields(chunk, objects)}: the agent answered {pretty}")
                continue
            self._accepted[key] = max(self._accepted.get(key, 0), len(chunk))
            answered = 0
            for oid, value in answers:
                text = str(oid)
                if text in chunk and text not in got.values:
                    got.values[text] = value
                    answered += 1
            missing = [oid for oid in chunk if oid not in got.values]
            if not missing:
                continue
            if answered and asked[missing[0]] < 2:
                # Answered only the first few: it takes no more than that per request.
                self._learn(target, answered, got)
                queue.extendleft(reversed(_chunks(missing, answered)))
            else:
                got.problems.append(f"{_fields(missing, objects)}: not in the agent's answer")
        return got

    def _limit(self, target: Target, count: int) -> int:
        settings = target.profile.snmp
        configured = settings.max_oids_per_request if settings is not None else None
        learned = self._learned.get((target.host, target.port))
        return max(1, min(count, configured or count, learned or count))

    def _learn(self, target: Target, limit: int, got: _Answers) -> None:
        key = (target.host, target.port)
        limit = max(1, min(limit, self._learned.get(key, limit)))
        self._learned[key] = limit
        got.limit = limit

    async def close(self) -> None:
        """Close the shared engine and forget every cache, the learned OID limits included."""
        engine, self._engine = self._engine, None
        self._transports.clear()
        self._auth.clear()
        self._v3_auth.clear()
        self._learned.clear()
        self._accepted.clear()
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


def reading_from_values(
    target: Target,
    values: dict[str, Any],
    ts: datetime,
    *,
    error: str | None = None,
    notes: list[str] | None = None,
) -> Reading:
    """A Reading from profile fields (`power`, `errors.fan`, `metrics.x`, ...) and their values;
    `error` says what could not be read, `notes` (metric `snmp_notes`) how the rest was."""
    settings = target.profile.snmp
    fields: dict[str, Any] = {}
    flags: dict[str, Flag] = {}
    metrics: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        if name.startswith("errors."):
            if str(value) in Flag.__members__:
                flags[name.split(".", 1)[1]] = Flag(str(value))
            else:
                bad = f"{name}: {str(value)[:24]!r} is not ok, warning or error (give it a map)"
                error = f"{error}; {bad}" if error else f"{target.where}: {bad}"
        elif name.startswith("metrics."):
            metrics[name.split(".", 1)[1]] = value
        elif name == "power":
            fields["power"] = Power(value) if value in Power.__members__ else Power.unknown
            if fields["power"] == Power.unknown and value != Power.unknown:
                bad = f"power: {str(value)[:24]!r} is not a power state (give it a map)"
                error = f"{error}; {bad}" if error else f"{target.where}: {bad}"
        elif name in ("input", "firmware"):
            fields[name] = str(value)
        else:
            fields[name] = value
    if "power" not in fields and settings is not None:
        fields["power"] = Power(settings.power_when_reachable)
    if notes:
        metrics["snmp_notes"] = "; ".join(notes)
    return make_reading(
        target.device.id,
        ts,
        True,
        errors=ErrorFlags(**flags) if flags else None,
        metrics=metrics,
        source=target.where,
        out_of_range_fix=(f"check the scale and type in firmware profile {target.profile.id!r}"),
        error=error,
        **fields,
    )
