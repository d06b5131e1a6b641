"""Power and input over SNMP SET, where the device's profile names the object
(`snmp.power_set`, `snmp.input_set`). The agent's answer is the device's: a SET it refuses
comes back with its error status (notWritable, wrongValue, ...).
"""

from __future__ import annotations

import asyncio
from typing import Any

from agent.collectors import Target
from agent.collectors.control import ControlAnswer, register_control
from fleet.protocol.profiles import SnmpSetObject


class SnmpControl:
    """Power and input by SNMP v1/v2c SET of the profile's `power_set` / `input_set` object
    (RFC 3416 SetRequest); the answer is the device's error-status by name, or noError."""

    def __init__(self) -> None:
        """No engine yet: the first SET makes one in its own event loop."""
        self._engine: Any = None
        # The loop the engine was made in: pysnmp's engine binds its transport to one loop,
        # so a control used from another (a second asyncio.run) makes an engine of its own.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def set_power(self, target: Target, on: bool) -> ControlAnswer:
        """SET the profile's `power_set` object to its `on` or `off` value; nothing is sent if the
        profile names no such object."""
        settings = target.profile.snmp
        obj = settings.power_set if settings else None
        if obj is None:
            return ControlAnswer(
                False, f"profile {target.profile.id} names no SNMP object for power: not sent"
            )
        return await self._set(target, obj, "on" if on else "off")

    async def set_input(self, target: Target, name: str) -> ControlAnswer:
        """SET the profile's `input_set` object to `name` (through its value map, if any); nothing
        is sent if the profile names no such object."""
        settings = target.profile.snmp
        obj = settings.input_set if settings else None
        if obj is None:
            return ControlAnswer(
                False, f"profile {target.profile.id} names no SNMP object for input: not sent"
            )
        return await self._set(target, obj, name)

    async def _set(self, target: Target, obj: SnmpSetObject, wanted: str) -> ControlAnswer:
        from pysnmp.hlapi.v3arch.asyncio import (
            CommunityData,
            ContextData,
            ObjectIdentity,
            ObjectType,
            SnmpEngine,
            UdpTransportTarget,
            set_cmd,
        )
        from pysnmp.proto.rfc1902 import Integer32, OctetString

        raw = obj.values.get(wanted) if obj.values is not None else wanted
        if raw is None:
            known = ", ".join(sorted(obj.values or {}))
            return ControlAnswer(False, f"{wanted!r} is not one of {known}: not sent")
        if obj.type == "int":
            try:
                value: Any = Integer32(int(raw))
            except ValueError:
                return ControlAnswer(False, f"{raw!r} is not an integer: not sent")
        else:
            value = OctetString(raw)
        settings = target.profile.snmp
        if target.snmp_v3 is not None:
            return ControlAnswer(False, "SET over SNMPv3 is not supported yet: not sent")
        loop = asyncio.get_running_loop()
        if self._engine is None or self._loop is not loop:
            self._engine, self._loop = SnmpEngine(), loop
        mp_model = 0 if settings is not None and settings.version == "1" else 1
        poll = target.profile.poll
        transport = await UdpTransportTarget.create(
            (target.host, target.port), timeout=poll.timeout_s, retries=poll.retries
        )
        error, status, _index, _binds = await set_cmd(
            self._engine,
            CommunityData(target.community, mpModel=mp_model),
            transport,
            ContextData(),
            ObjectType(ObjectIdentity(obj.oid), value),
        )
        if error:
            return ControlAnswer(False, f"SET {obj.oid} = {raw}: {error}")
        if status:
            return ControlAnswer(False, f"SET {obj.oid} = {raw}: {status.prettyPrint()}")
        return ControlAnswer(True, f"SET {obj.oid} = {raw}: noError")


_shared = SnmpControl()
register_control("snmp", lambda: _shared)
