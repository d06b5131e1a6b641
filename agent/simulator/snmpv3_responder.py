"""A simulated SNMPv3 device: a real pysnmp command responder with one USM user (authPriv),
on a loopback port. It serves MIB-II's system group from pysnmp's own instrumentation, which
is what the `mib2-device` profile reads; used to test the agent's SNMPv3 path end to end.

The light responder in snmp_responder.py speaks v1/v2c only: USM's keys, engine discovery and
time windows are what a real engine is for.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import cmdrsp, context

from fleet.protocol.snmpv3 import SnmpV3Settings

MIB2 = (1, 3, 6, 1, 2, 1)
_AUTH = {
    "SHA": config.USM_AUTH_HMAC96_SHA,
    "SHA224": config.USM_AUTH_HMAC128_SHA224,
    "SHA256": config.USM_AUTH_HMAC192_SHA256,
    "SHA384": config.USM_AUTH_HMAC256_SHA384,
    "SHA512": config.USM_AUTH_HMAC384_SHA512,
}
_PRIV = {
    "AES": config.USM_PRIV_CFB128_AES,
    "AES192": config.USM_PRIV_CFB192_AES,
    "AES256": config.USM_PRIV_CFB256_AES,
}


def _free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class SnmpV3Device:
    """Call start() inside the running loop; close() when done."""

    user: SnmpV3Settings
    host: str = "127.0.0.1"
    port: int = 0
    _engine: engine.SnmpEngine | None = None

    @property
    def address(self) -> tuple[str, int]:
        """Where the device listens, (host, port); the port is 0 until start() picks one."""
        return self.host, self.port

    async def start(self) -> None:
        """Open the UDP port (0: a free one) and answer GET and GETNEXT under MIB-II to `user`,
        authPriv only. ValueError if the user lacks either key."""
        if not self.user.auth_key or not self.user.priv_key:
            raise ValueError("the simulated SNMPv3 device needs both keys (authPriv)")
        self.port = self.port or _free_udp_port(self.host)
        snmp = engine.SnmpEngine()
        config.add_transport(
            snmp,
            udp.DOMAIN_NAME,
            udp.UdpAsyncioTransport().open_server_mode((self.host, self.port)),
        )
        config.add_v3_user(
            snmp,
            self.user.user,
            _AUTH[self.user.auth_protocol],
            self.user.auth_key,
            _PRIV[self.user.priv_protocol],
            self.user.priv_key,
        )
        config.add_vacm_user(snmp, 3, self.user.user, "authPriv", MIB2)
        snmp_context = context.SnmpContext(snmp)
        cmdrsp.GetCommandResponder(snmp, snmp_context)
        cmdrsp.NextCommandResponder(snmp, snmp_context)
        self._engine = snmp
        await asyncio.sleep(0)

    async def close(self) -> None:
        """Stop the engine and with it the port."""
        if self._engine is not None:
            self._engine.close_dispatcher()
            self._engine = None
