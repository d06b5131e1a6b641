"""SNMPv3 on the agent: pysnmp's USM user from the settings a profile or site config gives
(`fleet.protocol.snmpv3.SnmpV3Settings`), once its keys are resolved (`agent/secrets.py`)."""

from __future__ import annotations

from fleet.protocol.snmpv3 import SnmpV3Settings


def usm_user_data(settings: SnmpV3Settings, auth_key: str, priv_key: str) -> object:
    """pysnmp's UsmUserData for authPriv with these (resolved) keys (RFC 3414 USM, RFC 3826
    AES; the SHA-2 protocols of RFC 7860)."""
    from pysnmp.entity import config
    from pysnmp.hlapi.v3arch.asyncio import UsmUserData

    auth = {
        "SHA": config.USM_AUTH_HMAC96_SHA,
        "SHA224": config.USM_AUTH_HMAC128_SHA224,
        "SHA256": config.USM_AUTH_HMAC192_SHA256,
        "SHA384": config.USM_AUTH_HMAC256_SHA384,
        "SHA512": config.USM_AUTH_HMAC384_SHA512,
    }[settings.auth_protocol]
    priv = {
        "AES": config.USM_PRIV_CFB128_AES,
        "AES192": config.USM_PRIV_CFB192_AES,
        "AES256": config.USM_PRIV_CFB256_AES,
    }[settings.priv_protocol]
    return UsmUserData(
        settings.user, authKey=auth_key, privKey=priv_key, authProtocol=auth, privProtocol=priv
    )
