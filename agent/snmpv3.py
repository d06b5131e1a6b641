"""SNMPv3 (USM) settings: a user with authPriv, HMAC-SHA authentication and AES privacy.

Written in a firmware profile (user and protocols shared by a model) or on a device in a site
config (its own user). The keys are secrets: write them as `secret:NAME` and give NAME in the
environment or the agent's secrets file (agent/secrets.py), never in the YAML itself.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AuthProtocol = Literal["SHA", "SHA224", "SHA256", "SHA384", "SHA512"]
PrivProtocol = Literal["AES", "AES192", "AES256"]
KEY_MIN = 8  # RFC 3414: a USM password is at least 8 characters


class SnmpV3Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str = Field(min_length=1, max_length=32)
    auth_protocol: AuthProtocol = "SHA"
    priv_protocol: PrivProtocol = "AES"
    # repr=False: a settings object printed in a log or an error never shows a key.
    auth_key: str | None = Field(default=None, repr=False)
    priv_key: str | None = Field(default=None, repr=False)
    # A context engine id or name is rarely needed by classroom devices; left to pysnmp.


def usm_user_data(settings: SnmpV3Settings, auth_key: str, priv_key: str) -> object:
    """pysnmp's UsmUserData for authPriv with these (resolved) keys."""
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
