"""The secret-reference syntax: how a site config or profile names a secret it does not hold.

A secret (SNMP community, SNMPv3 key, PJLink password) is written as `secret:NAME`; the agent
resolves NAME from its environment or secrets file (`agent/secrets.py`). A literal value in
the YAML still works, for a lab. The controller hands out site configs with literal secrets
replaced by references (`redact_site_config`), so secrets never leave the site.
"""

from __future__ import annotations

import re
from typing import Any

REF_PREFIX = "secret:"
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Device keys holding secrets, and the v3 keys inside `snmp_v3`.
DEVICE_SECRET_KEYS = ("community", "password")
V3_SECRET_KEYS = ("auth_key", "priv_key")


def is_reference(value: str | None) -> bool:
    """True for a `secret:NAME` reference, False for a literal or None."""
    return value is not None and value.startswith(REF_PREFIX)


def secret_name(device_id: str, key: str) -> str:
    """The conventional name of a device's secret: upm-sc1-panel-1, community ->
    UPM_SC1_PANEL_1_COMMUNITY."""
    return re.sub(r"[^A-Za-z0-9]", "_", f"{device_id}_{key}").upper()


def redact_site_config(data: Any) -> tuple[Any, list[str]]:
    """A site config (as parsed YAML) with every literal device secret replaced by a
    `secret:NAME` reference, and the names that the agent's secrets file must now give."""
    needed: list[str] = []
    for room in data.get("rooms") or [] if isinstance(data, dict) else []:
        for device in room.get("devices") or []:
            if not isinstance(device, dict):
                continue
            device_id = str(device.get("id", "device"))
            for key in DEVICE_SECRET_KEYS:
                needed += _redact(device, key, secret_name(device_id, key))
            v3 = device.get("snmp_v3")
            if isinstance(v3, dict):
                for key in V3_SECRET_KEYS:
                    needed += _redact(v3, key, secret_name(device_id, key))
    return data, needed


def _redact(holder: dict[str, Any], key: str, name: str) -> list[str]:
    value = holder.get(key)
    if value is None:
        return []
    if isinstance(value, str) and is_reference(value):
        return [value[len(REF_PREFIX) :]]
    holder[key] = REF_PREFIX + name
    return [name]
