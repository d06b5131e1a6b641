"""`fleet-agent` as a technician runs it: check, status, and what a mistake looks like."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent.simulator import SimulatedSite, start_site, write_address_map
from fleet.embedded_broker import free_port
from fleet.protocol.site_config import DEFAULT_SITES_DIR, load_site
from tests.fixtures_broker import TestBroker
from tests.procs import BIN


class SimulatorThread:
    """The site's simulated devices on an event loop of their own, so a test can kill one."""

    def __init__(self, config: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.site: SimulatedSite = self._run(start_site(load_site(config)))

    def _run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self._run(self.site.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def upm_config(tmp_path: Path) -> Path:
    sites = tmp_path / "site_configs"
    sites.mkdir()
    return Path(shutil.copy(DEFAULT_SITES_DIR / "upm.yaml", sites / "upm.yaml"))


@pytest.fixture
def simulated(upm_config: Path, tmp_path: Path) -> Iterator[tuple[SimulatorThread, Path]]:
    sim = SimulatorThread(upm_config)
    address_map = tmp_path / "map.json"
    write_address_map(address_map, sim.site.address_map)
    yield sim, address_map
    sim.close()


def fleet_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "fleet-agent"), *args], capture_output=True, text=True, timeout=60
    )


def test_check_passes_when_broker_and_devices_answer(
    upm_config: Path, simulated: tuple[SimulatorThread, Path], broker: TestBroker
) -> None:
    _, address_map = simulated
    out = fleet_agent(
        "check",
        "--config",
        str(upm_config),
        "--mqtt-url",
        broker.url,
        "--address-map",
        str(address_map),
        "--json",
    )
    results = {r["check"]: r for r in json.loads(out.stdout)}
    assert out.returncode == 0, out.stdout + out.stderr
    # Connected; a test broker lets anyone in, which check says rather than vouch for it.
    assert results["broker"]["status"] == "warn"
    assert "lets anyone in" in results["broker"]["detail"]
    devices = [r for name, r in results.items() if name.startswith("device ")]
    assert len(devices) == 5 and all(r["status"] == "ok" for r in devices)
    assert results["clock"]["status"] == "warn"  # no controller given to compare with


def test_check_names_the_dead_device_and_the_unreachable_broker(
    upm_config: Path, simulated: tuple[SimulatorThread, Path]
) -> None:
    sim, address_map = simulated
    sim.site.device("upm-sc2-projector").alive = False
    closed = free_port()
    out = fleet_agent(
        "check",
        "--config",
        str(upm_config),
        "--mqtt-url",
        f"mqtt://127.0.0.1:{closed}",
        "--address-map",
        str(address_map),
        "--json",
    )
    assert out.returncode == 1
    results = {r["check"]: r for r in json.loads(out.stdout)}
    assert results["broker"]["status"] == "fail"
    assert f"127.0.0.1:{closed}" in results["broker"]["detail"]
    assert "nothing listens on" in results["broker"]["detail"]  # the cause, not a guess
    dead = next(r for name, r in results.items() if "upm-sc2-projector" in name)
    assert dead["status"] == "fail"
    assert "cannot reach" in dead["detail"] and "timeout" in dead["detail"].lower()
    alive = [r for name, r in results.items() if name.startswith("device upm-sc1")]
    assert alive and all(r["status"] == "ok" for r in alive)


def test_bad_config_is_one_clear_line_not_a_traceback(upm_config: Path) -> None:
    data = yaml.safe_load(upm_config.read_text())
    data["rooms"][0]["devices"][0]["profile"] = "no-such-panel"
    upm_config.write_text(yaml.safe_dump(data))
    out = fleet_agent("run", "--config", str(upm_config))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "rooms[0].devices[0].profile: unknown firmware profile 'no-such-panel'" in out.stderr
    assert "Fix:" in out.stderr


def test_bad_broker_url_and_missing_outbox_are_explained(upm_config: Path, tmp_path: Path) -> None:
    out = fleet_agent("run", "--config", str(upm_config), "--mqtt-url", "http://broker")
    assert out.returncode == 2 and "mqtt://" in out.stderr and "Traceback" not in out.stderr
    out = fleet_agent("status", "--config", str(upm_config), "--data-dir", str(tmp_path / "x"))
    assert out.returncode == 2 and "no outbox" in out.stderr


def test_address_map_missing_a_device_is_refused(upm_config: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"upm-sc1-panel-1": "127.0.0.1:16100"}))
    out = fleet_agent(
        "check",
        "--config",
        str(upm_config),
        "--address-map",
        str(partial),
        "--mqtt-url",
        f"mqtt://127.0.0.1:{free_port()}",
    )
    assert out.returncode == 2
    assert "not in the address map" in out.stderr
