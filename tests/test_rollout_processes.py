"""Rollouts with every part a real process: `fleet serve`, `fleet-agent simulate` and
`fleet-agent run` over a real broker, driven through the HTTP API.

The site's timetable is emptied, so "now" is always inside the maintenance window and the
simulated panels stay in standby (never "in use"): the tests do not depend on the clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import create_engine, text

from agent.artifact_cache import span_bytes
from agent.simulator.firmware_image import write_image
from fleet.protocol.messages import Topics
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR
from tests.fixtures_broker import MOSQUITTO_ONLY, TestBroker
from tests.procs import Proc, Stack, wait_for

PROFILE = "seewo-panel"
OLD, NEW = "3.2.1", "3.3.0"
PANELS = ("upm-sc1-panel-1", "upm-sc1-panel-2", "upm-sc2-panel-1")
RATE = 40_000  # bytes/s: the 256 KiB artifact takes ~6.5 s, time to kill the agent in it

# The tick, the artifact's download and the lease are what these pin, not the broker.
pytestmark = MOSQUITTO_ONLY


@dataclass
class RolloutStack(Stack):
    """A Stack whose processes all get `extra_env` (the agent's throttle, the tick's pace)."""

    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(**{**self.extra_env, **extra})

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            self.base + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={
                "Authorization": f"Bearer {self.ops_token}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            return json.loads(resp.read())

    def profile(self) -> dict[str, Any]:
        """The Seewo profile as this stack's processes read it."""
        assert self.profiles_dir is not None
        data: dict[str, Any] = yaml.safe_load((self.profiles_dir / f"{PROFILE}.yaml").read_text())
        return data

    def firmware(self) -> dict[str, str | None]:
        page = self.get("/api/v1/devices?site=upm&limit=100")
        return {d["id"]: d["firmware"] for d in page["items"] if d["id"] in PANELS}


def rollout_profiles(tmp_path: Path, method: str = "agent") -> Path:
    """The shipped profiles polled every second, with panels that always take an update and
    reboot in half a second; `method` is how the Seewo release gets installed."""
    out = tmp_path / "firmware_profiles"
    out.mkdir()
    for path in DEFAULT_PROFILES_DIR.glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        data.setdefault("poll", {}).update(interval_s=1, timeout_s=0.5, retries=0)
        if data["id"] == PROFILE:
            data["simulation"].update(update_reboot_s=0.5, update_failure_share=0.0)
            data["update"]["method"] = method
        (out / path.name).write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def quiet_timetable(stack: Stack) -> None:
    """A site with no classes: the window is open and nobody is using a panel."""
    config = yaml.safe_load(stack.config.read_text())
    config["timetable"] = {"weekly": {}}
    stack.config.write_text(yaml.safe_dump(config, sort_keys=False))


def make_stack(tmp_path: Path, broker: TestBroker, method: str = "agent") -> RolloutStack:
    artifacts = tmp_path / "artifacts"
    write_image(artifacts, PROFILE, NEW)
    stack = RolloutStack(
        tmp_path,
        broker.url,
        broker.topic_root,
        f"sqlite:///{tmp_path / 'fleet.db'}",
        profiles_dir=rollout_profiles(tmp_path, method),
    )
    stack.extra_env = {
        "FLEET_ARTIFACTS_DIR": str(artifacts),
        "FLEET_PUBLIC_URL": stack.base,
        "FLEET_ROLLOUT_TICK_S": "0.5",
        "FLEET_AGENT_DOWNLOAD_BYTES_PER_S": str(RATE),
        "FLEET_AGENT_UPDATE_READ_S": "0.3",
    }
    quiet_timetable(stack)
    return stack


@pytest.fixture
def stack(tmp_path: Path, broker: TestBroker) -> Iterator[RolloutStack]:
    s = make_stack(tmp_path, broker)
    yield s
    s.stop_all()


def start_site(stack: RolloutStack) -> None:
    stack.simulate()
    stack.controller()
    stack.agent()
    wait_for(
        lambda: set(stack.firmware().values()) == {OLD} and len(stack.firmware()) == 3,
        30,
        f"the three panels to report {OLD}",
    )


def create_rollout(stack: RolloutStack, waves: list[dict[str, float]]) -> int:
    rollout = stack.call(
        "POST",
        "/api/v1/rollouts",
        {
            "name": "seewo 3.3.0",
            "release_version": NEW,
            "targets": {"profile": PROFILE, "sites": ["upm"]},
            "waves": waves,
            "device_timeout_s": 60,
            "window": {"margin_min": 0},
            "start": True,
        },
    )
    return int(rollout["id"])


def completed(stack: RolloutStack, rollout_id: int) -> dict[str, Any] | None:
    detail: dict[str, Any] = stack.get(f"/api/v1/rollouts/{rollout_id}")
    if detail["state"] in ("aborted", "paused"):
        raise AssertionError(f"rollout {detail['state']}: {detail['reason']}")
    return detail if detail["state"] == "completed" else None


@pytest.mark.timeout(90)
def test_agent_killed_mid_download_resumes_and_rollout_completes(stack: RolloutStack) -> None:
    start_site(stack)
    release = stack.profile()["releases"][0]
    sha, size = release["sha256"], release["size"]
    rollout_id = create_rollout(stack, [{"count": 1}, {"percent": 100}])

    part = stack.agent_data / "artifacts" / f"{sha}.part"
    wait_for(
        lambda: part.exists() and size // 8 < part.stat().st_size < size // 2,
        60,
        "the agent to be part-way through the artifact",
        interval=0.05,
    )
    agent = next(p for p in stack.procs if p.name == "agent")
    agent.kill9()
    have = part.stat().st_size
    assert 0 < have < size

    restarted = stack.agent()
    detail = wait_for(lambda: completed(stack, rollout_id), 40, "the rollout to complete")
    wait_for(lambda: set(stack.firmware().values()) == {NEW}, 15, f"/api/v1/devices to show {NEW}")

    log = restarted.output()
    resumed_from = [int(n) for n in re.findall(r"downloading \S+ from byte (\d+)", log)]
    downloads = [d for d in stack.get("/api/v1/firmware/downloads") if d["sha256"] == sha]
    (site,) = detail["sites"]
    print(
        f"\n[agent kill -9 mid-download] artifact {size} B; killed at {have} B; resumed from "
        f"{resumed_from}; controller served {downloads[0]['bytes_served']} B to upm in "
        f"{downloads[0]['requests']} requests ({downloads[0]['range_requests']} with Range); "
        f"site upm: {site['bytes_downloaded']} B downloaded for {site['devices_updated']} of "
        f"{site['devices_targeted']} devices updated"
    )
    # Both agents log to the same file: the first from byte 0, the restarted one from `have`.
    assert resumed_from == [0, have], "the restarted agent must ask only for what it lacks"
    assert len(downloads) == 1 and downloads[0]["site_code"] == "upm"
    # One download for three devices, in throttled spans, each asked for by Range; the kill
    # wasted at most the span the killed agent was in.
    span = span_bytes(RATE) or size
    assert downloads[0]["range_requests"] == downloads[0]["requests"] <= -(-size // span) + 1
    assert size <= downloads[0]["bytes_served"] <= size + span
    assert site["bytes_downloaded"] == downloads[0]["bytes_served"]
    assert (site["devices_updated"], site["devices_targeted"]) == (3, 3)
    assert detail["counts"]["succeeded"] == 3
    cached = stack.agent_data / "artifacts"
    assert [p.name for p in cached.iterdir()] == [sha]
    assert hashlib.sha256((cached / sha).read_bytes()).hexdigest() == sha


# --- two controllers, one tick --------------------------------------------------------------


def tick_row(database_url: str) -> tuple[str, datetime] | None:
    """Which controller ran the last rollout tick, and when."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT holder, expires_at FROM tick_lease WHERE name = 'rollouts'")
            ).first()
    finally:
        engine.dispose()
    if row is None:
        return None
    at = row[1] if isinstance(row[1], datetime) else datetime.fromisoformat(str(row[1]))
    return str(row[0]), at


def pid_of(proc: Proc) -> int:
    assert proc.popen is not None
    return proc.popen.pid


def holder_pid(holder: str) -> int:
    return int(holder.split(":")[1])


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def shared_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    url: str = request.getfixturevalue("migrated_postgres_url")
    return url


@pytest.mark.timeout(60)
def test_two_controllers_never_both_run_the_tick(
    tmp_path: Path, broker: TestBroker, shared_db: str
) -> None:
    """Exactly one scheduler: the holder of the PostgreSQL advisory lock, or of the file
    lock beside the SQLite database. Killed, it is replaced at once."""
    tick_s = 0.2
    stacks = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        s = RolloutStack(tmp_path / name, broker.url, broker.topic_root, shared_db)
        s.extra_env = {"FLEET_ROLLOUT_TICK_S": str(tick_s)}
        stacks.append(s)
    a, b = stacks
    try:
        proc_a = a.controller()
        b.ops_token = a.ops_token  # the same database: one user is enough
        proc_b = b.controller()
        pids = {pid_of(proc_a): proc_a, pid_of(proc_b): proc_b}

        # Sample who ran the last tick for many ticks: always the same one of the two.
        first = wait_for(lambda: tick_row(shared_db), 10, "a first rollout tick")
        holders, times = set(), set()
        deadline = time.monotonic() + 25 * tick_s
        while time.monotonic() < deadline:
            row = tick_row(shared_db)
            assert row is not None
            holders.add(row[0])
            times.add(row[1])
            time.sleep(tick_s / 4)
        assert holders == {first[0]}, holders
        assert len(times) > 10, "the leader was not ticking"
        leader = pids[holder_pid(first[0])]
        follower = proc_b if leader is proc_a else proc_a
        assert _tick_lines(leader) == ["started"], leader.output()[-2000:]
        assert _tick_lines(follower) == [], follower.output()[-2000:]

        # The leader dies: the database (or the kernel, for the file lock) frees its lock,
        # and the other controller runs the next tick.
        # Taken before the kill: the follower may take over before kill9() returns. The log
        # shows milliseconds, so the instant is cut to a millisecond too.
        killed_at = datetime.now(UTC)
        killed_at = killed_at.replace(microsecond=killed_at.microsecond // 1000 * 1000)
        killed_mono = time.monotonic()
        leader.kill9()

        def taken_over() -> tuple[str, datetime] | None:
            row = tick_row(shared_db)
            return row if row is not None and row[0] != first[0] else None

        new = wait_for(taken_over, 15, "the surviving controller to run the tick")
        took_s = time.monotonic() - killed_mono
        print(
            f"\n[two controllers, {shared_db.split(':')[0]}] leader pid {pid_of(leader)} "
            f"ran every tick for {25 * tick_s:.0f} s; after its kill -9 pid "
            f"{holder_pid(new[0])} ran the next tick {took_s:.1f} s later"
        )
        assert holder_pid(new[0]) == pid_of(follower)
        wait_for(lambda: _tick_lines(follower) == ["started"], 5, "the follower to log it")
        assert _ticks_started_at(follower) >= killed_at
    finally:
        for s in stacks:
            s.stop_all()


def _tick_lines(proc: Proc) -> list[str]:
    return re.findall(r"rollout ticks (started|stopped)", proc.output())


def _ticks_started_at(proc: Proc) -> datetime:
    """When the process logged starting the ticks (its log's timestamps are local time)."""
    found = re.search(
        r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*rollout ticks started",
        proc.output(),
        re.MULTILINE,
    )
    assert found, proc.output()[-2000:]
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").astimezone(UTC)


# --- releases the agent does not push ----------------------------------------------------------


class ArtifactHost:
    """The vendor's cloud: serves the image at /<sha256>, which is the URL a simulated panel
    checks the bytes against."""

    def __init__(self, directory: Path) -> None:
        handler = type(
            "Handler",
            (http.server.SimpleHTTPRequestHandler,),
            {"log_message": lambda *_: None},
        )
        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), lambda *a: handler(*a, directory=str(directory))
        )
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def snmp_set(host: str, port: int, oid: str, value: str) -> None:
    from pysnmp.hlapi.v3arch.asyncio import (
        CommunityData,
        ContextData,
        ObjectIdentity,
        ObjectType,
        SnmpEngine,
        UdpTransportTarget,
        set_cmd,
    )
    from pysnmp.proto.rfc1902 import OctetString

    engine = SnmpEngine()
    try:
        error, status, _, _ = await set_cmd(
            engine,
            CommunityData("public", mpModel=1),
            await UdpTransportTarget.create((host, port), timeout=2, retries=2),
            ContextData(),
            ObjectType(ObjectIdentity(oid), OctetString(value)),
        )
    finally:
        engine.close_dispatcher()
    assert not error and not status, f"SET on {host}:{port} failed: {error or status}"


@pytest.mark.timeout(60)
def test_vendor_cloud_release_is_watched_not_sent(tmp_path: Path, broker: TestBroker) -> None:
    stack = make_stack(tmp_path, broker, method="vendor_cloud")
    commands: list[bytes] = []
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, msg: commands.append(bytes(msg.payload))
    host, port = broker.url.removeprefix("mqtt://").split("?")[0].split(":")
    vendor = ArtifactHost(tmp_path / "artifacts")
    try:
        client.connect(host, int(port))
        client.subscribe(Topics(broker.topic_root).cmd("upm"), qos=1)
        client.loop_start()
        start_site(stack)
        rollout_id = create_rollout(stack, [{"percent": 100}])

        def watching() -> list[dict[str, Any]] | None:
            devices: list[dict[str, Any]] = stack.get(f"/api/v1/rollouts/{rollout_id}")["devices"]
            return devices if all(d["state"] == "sent" for d in devices) else None

        devices = wait_for(watching, 15, "the rollout to watch the three panels")
        assert all(d["method"] == "vendor_cloud" for d in devices)
        assert all("watching for vendor_cloud" in d["message"] for d in devices)
        assert all(d["cmd_id"] for d in devices)
        # Still watching after a few ticks (0.5 s each) and fresh readings on the old
        # version: nothing is marked done on the command alone.
        time.sleep(1.5)
        assert stack.get(f"/api/v1/rollouts/{rollout_id}")["state"] == "running"

        # The vendor's cloud updates the panels, not us.
        profile = stack.profile()
        sha = profile["releases"][0]["sha256"]
        (tmp_path / "artifacts" / sha).symlink_to(tmp_path / "artifacts" / f"{PROFILE}-{NEW}.bin")
        addresses = json.loads(stack.address_map.read_text())
        for device in PANELS:
            device_host, device_port = addresses[device].rsplit(":", 1)
            asyncio.run(
                snmp_set(
                    device_host,
                    int(device_port),
                    profile["update"]["snmp_url_oid"],
                    vendor.url(sha),
                )
            )

        detail = wait_for(lambda: completed(stack, rollout_id), 30, "the rollout to complete")
        assert set(stack.firmware().values()) == {NEW}
        agent_log = next(p for p in stack.procs if p.name == "agent").output()
        print(
            f"\n[vendor_cloud] {detail['counts'].get('succeeded', 0)} of {len(PANELS)} panels "
            f"succeeded on the version they report; commands published on cmd: {len(commands)}; "
            f"bytes downloaded by the site: {detail['sites'][0]['bytes_downloaded']}"
        )
        assert detail["counts"]["succeeded"] == 3
        assert all(d["message"] == f"reports {NEW}" for d in detail["devices"])
        assert commands == []
        assert "firmware command" not in agent_log and "update r" not in agent_log
        assert detail["sites"][0]["bytes_downloaded"] == 0
    finally:
        client.loop_stop()
        client.disconnect()
        vendor.close()
        stack.stop_all()
