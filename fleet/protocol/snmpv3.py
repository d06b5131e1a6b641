"""SNMPv3 (USM) settings: a user with authPriv, HMAC-SHA authentication and AES privacy.

Written in a firmware profile (user and protocols shared by a model) or on a device in a site
config (its own user). The keys are secrets: write them as `secret:NAME` (see
`fleet.protocol.secret_refs`) and give NAME in the environment or the agent's secrets file,
never in the YAML itself. Turning these settings into pysnmp's USM user is the agent's
(`agent/snmpv3.py`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AuthProtocol = Literal["SHA", "SHA224", "SHA256", "SHA384", "SHA512"]
PrivProtocol = Literal["AES", "AES192", "AES256"]
KEY_MIN = 8  # RFC 3414: a USM password is at least 8 characters


class SnmpV3Settings(BaseModel):
    """A USM user in authPriv mode; `auth_key` and `priv_key` are literals or `secret:NAME`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str = Field(min_length=1, max_length=32)
    auth_protocol: AuthProtocol = "SHA"
    priv_protocol: PrivProtocol = "AES"
    # repr=False: a settings object printed in a log or an error never shows a key.
    auth_key: str | None = Field(default=None, repr=False)
    priv_key: str | None = Field(default=None, repr=False)
    # A context engine id or name is rarely needed by classroom devices; left to pysnmp.
