"""SNMPv3 authPriv (SHA / AES): an agent's site config polls a simulated SNMPv3 device (a real
pysnmp engine on loopback), keys from the secrets file; a wrong key gives a clear error."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent import collectors
from agent.collectors import target_for
from agent.collectors.snmp import SnmpCollector
from agent.poller import build_targets
from agent.secrets import SECRETS_FILE_ENV, SecretMissing
from agent.simulator.snmpv3_responder import SnmpV3Device
from fleet.protocol.messages import Reading
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR, load_site
from fleet.protocol.snmpv3 import SnmpV3Settings

AUTH_KEY = "correct-auth-key-1"
PRIV_KEY = "correct-priv-key-1"
DEVICE_USER = SnmpV3Settings(user="fleet-v3", auth_key=AUTH_KEY, priv_key=PRIV_KEY)


@pytest.fixture
def secrets_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "agent.env"
    monkeypatch.setenv(SECRETS_FILE_ENV, str(path))
    monkeypatch.setattr(collectors, "_SECRETS", [])  # read this test's file, not a cached one
    yield path


def write_site(tmp_path: Path) -> Path:
    """A one-device site whose device speaks SNMPv3, keys given as secret references."""
    config = {
        "site": {"code": "lab", "name": "Lab", "country": "Nepal", "timezone": "Asia/Kathmandu"},
        "rooms": [
            {
                "id": "lab-room",
                "name": "Lab",
                "devices": [
                    {
                        "id": "lab-pc-1",
                        "profile": "mib2-device",
                        "address": "127.0.0.1",
                        "snmp_v3": {
                            "user": "fleet-v3",
                            "auth_protocol": "SHA",
                            "priv_protocol": "AES",
                            "auth_key": "secret:LAB_PC_1_AUTH_KEY",
                            "priv_key": "secret:LAB_PC_1_PRIV_KEY",
                        },
                    }
                ],
            }
        ],
    }
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def poll_site(site_path: Path) -> Reading:
    device = SnmpV3Device(DEVICE_USER)
    await device.start()
    collector = SnmpCollector()
    try:
        site = load_site(site_path, DEFAULT_PROFILES_DIR)
        (target,) = build_targets(site, {"lab-pc-1": device.address})
        quick = target.profile.model_copy(
            update={"poll": target.profile.poll.model_copy(update={"timeout_s": 1, "retries": 0})}
        )
        return await collector.poll(target_for(target.device, quick, device.address))
    finally:
        await collector.close()
        await device.close()


def test_agent_polls_snmpv3_device_with_keys_from_secrets_file(
    tmp_path: Path, secrets_file: Path
) -> None:
    secrets_file.write_text(f"LAB_PC_1_AUTH_KEY={AUTH_KEY}\nLAB_PC_1_PRIV_KEY='{PRIV_KEY}'\n")
    reading = asyncio.run(asyncio.wait_for(poll_site(write_site(tmp_path)), 20))
    assert reading.reachable, reading.error
    assert reading.uptime_s is not None
    assert "PySNMP" in str(reading.metrics.get("sys_descr", ""))


@pytest.mark.parametrize("wrong", ["LAB_PC_1_AUTH_KEY", "LAB_PC_1_PRIV_KEY"])
def test_wrong_snmpv3_key_gives_clear_error_without_the_key(
    tmp_path: Path, secrets_file: Path, wrong: str, caplog: pytest.LogCaptureFixture
) -> None:
    keys = {"LAB_PC_1_AUTH_KEY": AUTH_KEY, "LAB_PC_1_PRIV_KEY": PRIV_KEY}
    keys[wrong] = "not-the-right-key-9"
    secrets_file.write_text("".join(f"{k}={v}\n" for k, v in keys.items()))
    with caplog.at_level(logging.DEBUG):
        reading = asyncio.run(asyncio.wait_for(poll_site(write_site(tmp_path)), 20))
    assert not reading.reachable
    assert reading.error is not None
    assert "SNMPv3" in reading.error and "key" in reading.error
    part = "authentication" if "AUTH" in wrong else "privacy"
    assert part in reading.error or "timeout" not in reading.error, reading.error
    for secret in (AUTH_KEY, PRIV_KEY, "not-the-right-key-9"):
        assert secret not in reading.error
        assert secret not in caplog.text


def test_missing_secret_names_it_and_where_to_put_it(tmp_path: Path, secrets_file: Path) -> None:
    secrets_file.write_text("LAB_PC_1_AUTH_KEY=x-auth-key-long\n")
    site = load_site(write_site(tmp_path), DEFAULT_PROFILES_DIR)
    with pytest.raises(SecretMissing) as raised:
        build_targets(site, {"lab-pc-1": ("127.0.0.1", 1)})
    message = str(raised.value)
    assert "LAB_PC_1_PRIV_KEY" in message and str(secrets_file) in message
    assert "x-auth-key-long" not in message


def test_secret_values_stay_out_of_reprs(tmp_path: Path, secrets_file: Path) -> None:
    secrets_file.write_text(f"LAB_PC_1_AUTH_KEY={AUTH_KEY}\nLAB_PC_1_PRIV_KEY={PRIV_KEY}\n")
    site = load_site(write_site(tmp_path), DEFAULT_PROFILES_DIR)
    (target,) = build_targets(site, {"lab-pc-1": ("127.0.0.1", 1)})
    assert target.snmp_v3 is not None and target.snmp_v3.auth_key == AUTH_KEY
    assert AUTH_KEY not in repr(target) and PRIV_KEY not in repr(target.snmp_v3)


def test_profile_with_version_3_needs_a_v3_section() -> None:
    from pydantic import ValidationError

    from fleet.protocol.profiles import SnmpSettings

    with pytest.raises(ValidationError, match="no v3 section"):
        SnmpSettings.model_validate(
            {"version": "3", "objects": [{"field": "uptime_s", "oid": "1.3.6.1.2.1.1.3.0"}]}
        )
