"""Resident memory of the controller with a large fleet, and of an agent with a large site.

    python -m bench.memory [--quick] [--devices 10000] [--agent-devices 500] [--agent-seconds 75]

- Controller: `fleet serve` (role all: API, dashboard, ingest, scheduler) as its own process
  over a SQLite database seeded with `--devices` devices across 100 sites (see bench.api), on a
  Mosquitto of our own; RSS (VmRSS, and the peak VmHWM, from /proc/<pid>/status) after the
  overview, the dashboard and every page of the device list have been requested.
- Agent: `fleet-agent run` over a generated site config of `--agent-devices` SNMP devices,
  answered by simulated devices in a child process; RSS sampled while it polls (the first cycle
  polls every device; the default window also covers the second 60 s cycle).

Target: agent RSS under 100 MB with 500 devices. The controller has no target: its figure is
printed against the same process with no devices registered (the limit column), so the ratio
is what 10,000 devices cost over an empty controller.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from multiprocessing.connection import Connection
from pathlib import Path

import yaml

from bench.targets import target
from fleet.embedded_broker import free_port

AGENT_LIMIT_MB = 100.0
BIN = Path(sys.executable).parent


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def get(url: str, token: str | None = None, timeout: float = 30) -> bytes:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return bytes(response.read())


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the process exited ({process.returncode}) before serving {url}")
        try:
            get(url, timeout=2)
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing answered at {url} within {timeout:.0f} s")


@contextmanager
def controller(
    tmp: Path, database: Path | str, mqtt_url: str, topic_root: str | None = None
) -> Iterator[tuple[int, str]]:
    """A `fleet serve` process over `database` (a SQLite file, or a database URL): yields its
    pid and base URL."""
    port = free_port()
    sites_dir = tmp / "no-sites"  # the registry is already in the database
    sites_dir.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "FLEET_DATABASE_URL": database if isinstance(database, str) else f"sqlite:///{database}",
        "FLEET_DATA_DIR": str(tmp / "controller-data"),
        "FLEET_MQTT_URL": mqtt_url,
        "FLEET_MQTT_CLIENT_ID": f"bench-memory-{port}",
        "FLEET_SITES_DIR": str(sites_dir),
        "FLEET_TOPIC_ROOT": topic_root or f"mem{port}/fleet/v1",
    }
    log = (tmp / f"controller-{port}.log").open("wb")
    process = subprocess.Popen(
        [str(BIN / "fleet"), "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", process)
        yield process.pid, base
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def controller_rss(tmp: Path, mqtt_url: str, sites: int, per_site: int) -> tuple[float, float]:
    from bench.api import seed
    from tests.fixtures_auth import user_token

    database = tmp / f"memory-{sites * per_site}.db"
    engine = seed(database, sites, per_site)
    token = user_token(engine, "bench-ops", "ops", ttl=timedelta(hours=1))
    engine.dispose()
    with controller(tmp, database, mqtt_url) as (pid, base):
        for _ in range(3):
            get(f"{base}/api/v1/sites", token)
            get(f"{base}/", token)
            after = ""  # every device, a page of 1,000 at a time, by cursor
            while True:
                page = json.loads(get(f"{base}/api/v1/devices?limit=1000{after}", token))
                if page["next"] is None:
                    break
                after = f"&after={page['next']}"
        time.sleep(0.5)
        return rss_mb(pid)


def site_config(path: Path, devices: int, profile: str) -> Path:
    data = {
        "site": {"code": "mem", "name": "Memory bench", "country": "Nowhere", "timezone": "UTC"},
        "illustrative": "synthetic, for benchmarks",
        "rooms": [
            {
                "id": f"mem-room-{r}",
                "name": f"Room {r}",
                "devices": [
                    {
                        "id": f"sim-{i:04d}",
                        "profile": profile,
                        "address": "192.0.2.1",
                        "port": 10000 + i,
                    }
                    for i in range(r * 50, min(devices, (r + 1) * 50))
                ],
            }
            for r in range((devices + 49) // 50)
        ],
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _serve_responders(count: int, profile_id: str, map_path: str, conn: Connection) -> None:
    """Child process: `count` simulated devices (ids sim-0000...) until the parent says stop."""
    from agent.simulator import start_devices, write_address_map
    from fleet.protocol.profiles import load_profiles
    from fleet.protocol.site_config import DEFAULT_PROFILES_DIR

    async def serve() -> None:
        profile = load_profiles(DEFAULT_PROFILES_DIR)[profile_id]
        simulated = await start_devices(count, profile)
        write_address_map(map_path, simulated.address_map)
        conn.send("ready")
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await simulated.close()

    asyncio.run(serve())


def agent_rss(
    tmp: Path, mqtt_url: str, devices: int, seconds: float, profile: str
) -> tuple[float, float, int]:
    """Peak VmRSS, VmHWM and RSS samples of `fleet-agent run` polling `devices` devices."""
    config = site_config(tmp / "mem.yaml", devices, profile)
    map_path = tmp / "mem-addresses.json"
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    child = context.Process(
        target=_serve_responders,
        args=(devices, profile, str(map_path), child_end),
        daemon=True,
    )
    child.start()
    log = (tmp / "agent.log").open("wb")
    try:
        if not parent_end.poll(120):
            raise RuntimeError("the simulated devices did not start within 120 s")
        parent_end.recv()
        agent = subprocess.Popen(
            [
                str(BIN / "fleet-agent"),
                "run",
                "--config",
                str(config),
                "--mqtt-url",
                mqtt_url,
                "--data-dir",
                str(tmp / "agent-data"),
                "--address-map",
                str(map_path),
                "--topic-root",
                "memagent/fleet/v1",
                "--log-level",
                "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        peak, hwm, samples = 0.0, 0.0, 0
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                if agent.poll() is not None:
                    raise RuntimeError(
                        f"fleet-agent exited ({agent.returncode}): see {tmp / 'agent.log'}"
                    )
                rss, hwm = rss_mb(agent.pid)
                peak = max(peak, rss)
                samples += 1
                time.sleep(0.5)
        finally:
            agent.terminate()
            try:
                agent.wait(15)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        return peak, hwm, samples
    finally:
        log.close()
        parent_end.send("stop")
        child.join(10)
        if child.is_alive():
            child.terminate()


def main(argv: list[str] | None = None) -> int:
    from bench.ingest import broker

    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--devices", type=int, default=10_000, help="controller: devices")
    parser.add_argument("--agent-devices", type=int, default=500)
    parser.add_argument("--agent-seconds", type=float, default=75.0)
    parser.add_argument("--profile", default="seewo-panel")
    parser.add_argument("--quick", action="store_true", help="a tiny run, to keep it working")
    args = parser.parse_args(argv)
    if args.quick:
        args.devices, args.agent_devices, args.agent_seconds = 200, 20, 4.0
    sites = 100 if args.devices >= 1000 else 2
    per_site = max(1, args.devices // sites)
    with tempfile.TemporaryDirectory() as tmp_name, broker() as url:
        tmp = Path(tmp_name)
        empty, _ = controller_rss(tmp, url, 1, 1)
        full, full_hwm = controller_rss(tmp, url, sites, per_site)
        print(
            f"controller RSS with {sites * per_site:,} devices: {full:.1f} MB "
            f"(peak {full_hwm:.1f} MB); limit: the same controller with 1 device, {empty:.1f} MB; "
            f"ratio {full / empty:.2f} (no target)"
        )
        peak, hwm, samples = agent_rss(
            tmp, url, args.agent_devices, args.agent_seconds, args.profile
        )
        print(
            f"agent RSS with {args.agent_devices} devices: {peak:.1f} MB over {samples} samples "
            f"in {args.agent_seconds:.0f} s (peak VmHWM {hwm:.1f} MB); "
            f"limit {AGENT_LIMIT_MB:.0f} MB; ratio {hwm / AGENT_LIMIT_MB:.2f}: "
            f"{'met' if hwm < AGENT_LIMIT_MB else 'MISSED'}"
        )
        target(
            f"agent RSS (VmHWM) polling {args.agent_devices} devices",
            hwm,
            AGENT_LIMIT_MB,
            "MB",
            goal=1.0,
            at_least=False,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
