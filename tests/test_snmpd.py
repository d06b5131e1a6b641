"""The SNMP collector against a real agent: Debian's net-snmp snmpd, on a loopback port."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.collectors import target_for
from agent.collectors.snmp import SnmpCollector
from fleet.embedded_broker import free_port
from fleet.protocol.messages import Power, Reading
from fleet.protocol.profiles import PollSettings, SnmpObject, load_profiles
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR, DeviceConfig
from tests.conftest import need

pytestmark = pytest.mark.snmpd

SNMPD = shutil.which("snmpd") or "/usr/sbin/snmpd"
SYS_NAME = "fleet-test-snmpd"
SYS_LOCATION = "loopback test lab"


@pytest.fixture
def snmpd(tmp_path: Path) -> Iterator[tuple[str, int]]:
    if not Path(SNMPD).exists():
        need("snmpd", ".ci/run installs it")
    # Not bind(0): from the ephemeral range, which other workers' SNMP clients' sockets take
    # their local ports from, a port may be taken before snmpd binds it.
    port = free_port(kind=socket.SOCK_DGRAM)
    conf = tmp_path / "snmpd.conf"
    conf.write_text(
        f"agentAddress udp:127.0.0.1:{port}\n"
        "rocommunity public 127.0.0.1\n"
        f"sysName {SYS_NAME}\n"
        f"sysLocation {SYS_LOCATION}\n"
        "sysContact nobody\n"
    )
    log = tmp_path / "snmpd.log"
    # -C: only our config; -m "" -M /dev/null: load no MIB files; the persistent dir in
    # tmp_path keeps it away from /var/lib/snmp.
    process = subprocess.Popen(
        [SNMPD, "-f", "-C", "-c", str(conf), "-Lf", str(log), "-m", "", "-M", "/dev/null"],
        env={"SNMP_PERSISTENT_DIR": str(tmp_path / "persist"), "PATH": "/usr/sbin:/usr/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        yield "127.0.0.1", port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.returncode not in (0, -15):
            print(log.read_text() if log.exists() else "(no snmpd log)")


def test_collector_reads_sys_name_and_uptime_from_net_snmp(snmpd: tuple[str, int]) -> None:
    profile = load_profiles(DEFAULT_PROFILES_DIR)["mib2-device"]
    # short timeout so that waiting for snmpd to start is a quick loop, not a long sleep
    quick = profile.model_copy(update={"poll": PollSettings(timeout_s=0.3, retries=0)})
    device = DeviceConfig(id="lab-pc-1", profile=profile.id, address="127.0.0.1")

    async def scenario() -> Reading:
        collector = SnmpCollector()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while True:
                reading = await collector.poll(target_for(device, quick, snmpd))
                if reading.reachable or loop.time() > deadline:
                    break
            assert reading.reachable, f"snmpd never answered: {reading.error}"
            # then one poll with the profile as shipped
            return await collector.poll(target_for(device, profile, snmpd))
        finally:
            await collector.close()

    reading = asyncio.run(scenario())
    assert reading.reachable, reading.error
    assert reading.device == "lab-pc-1"
    assert reading.metrics["sys_name"] == SYS_NAME
    assert reading.metrics["sys_location"] == SYS_LOCATION
    assert isinstance(reading.metrics["sys_descr"], str) and reading.metrics["sys_descr"]
    # snmpd's sysUpTime counts from its own start, a few seconds ago at most
    assert reading.uptime_s is not None and 0 <= reading.uptime_s < 60
    assert reading.power == Power.on  # mib2-device: power_when_reachable
    assert reading.errors is None


# net-snmp's UCD-SNMP-MIB: the 1-minute load average as text (laLoad) and as an Opaque-wrapped
# float (laLoadFloat), which is how net-snmp agents send floats. Real enterprise OIDs (2021,
# UCD): profiles refuse them (they hold simulated objects only), so this test builds its
# objects without that check.
LA_LOAD = "1.3.6.1.4.1.2021.10.1.3.1"
LA_LOAD_FLOAT = "1.3.6.1.4.1.2021.10.1.6.1"


def test_an_opaque_float_from_net_snmp_is_read_as_a_float(snmpd: tuple[str, int]) -> None:
    profile = load_profiles(DEFAULT_PROFILES_DIR)["mib2-device"]
    assert profile.snmp is not None
    objects = [
        SnmpObject.model_construct(field="metrics.load_text", oid=LA_LOAD, type="float"),
        SnmpObject.model_construct(field="metrics.load_float", oid=LA_LOAD_FLOAT, type="float"),
        SnmpObject.model_construct(
            field="uptime_s", oid="1.3.6.1.2.1.1.3.0", type="timeticks", scale=1.0
        ),
    ]
    snmp = profile.snmp.model_copy(update={"objects": objects})
    quick = profile.model_copy(
        update={"snmp": snmp, "poll": PollSettings(timeout_s=0.3, retries=0)}
    )
    device = DeviceConfig(id="lab-pc-1", profile=profile.id, address="127.0.0.1")

    async def scenario() -> Reading:
        collector = SnmpCollector()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while True:
                reading = await collector.poll(target_for(device, quick, snmpd))
                if reading.reachable or loop.time() > deadline:
                    return reading
        finally:
            await collector.close()

    reading = asyncio.run(scenario())
    assert reading.reachable and reading.error is None, reading.error
    as_float = reading.metrics["load_float"]
    assert isinstance(as_float, float) and 0 <= as_float < 1000
    # The same figure net-snmp also gives as text (both from one cached load sample).
    assert abs(as_float - float(reading.metrics["load_text"])) < 0.01
