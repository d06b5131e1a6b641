"""The agent's side of a rollout with real sockets: the controller's artifact endpoint (the
real app under uvicorn), the agent's updater and cache, and simulated SNMP devices that take
the update over SNMP SET, reboot and come back on the new version."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import uvicorn
from sqlalchemy import Engine

from agent.collectors import target_for
from agent.simulator import SimulatedSite, start_devices
from agent.simulator.firmware_image import write_image
from agent.updater import UpdateOptions
from fleet.api.app import create_app
from fleet.db import make_engine, migrate
from fleet.devices.profile_book import profiles_in
from fleet.devices.registry import sync_registry
from fleet.embedded_broker import free_port
from fleet.protocol.messages import AgentEvent, Command, CommandAck, CommandKind
from fleet.protocol.profiles import Profile
from fleet.protocol.site_config import LoadedSite
from fleet.rollouts.artifacts import SERVED
from fleet.settings import Settings
from tests.agent_commands import CommandPath

SITE = "upm"


class Controller:
    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.port = free_port()
        config = uvicorn.Config(create_app(settings, engine), port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Controller:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the controller did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    artifacts = tmp_path / "artifacts"
    write_image(artifacts, "seewo-panel", "3.3.0")
    return Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'fleet.db'}",
        artifacts_dir=artifacts,
    )


@pytest.fixture
def controller(settings: Settings, loaded_sites: list[LoadedSite]) -> Iterator[Controller]:
    # SQLite only: the artifact endpoint's database work is one upsert, tested on both elsewhere.
    engine = make_engine(settings.database_url)
    migrate(engine)
    sync_registry(engine, loaded_sites)
    SERVED.counts.clear()
    try:
        with Controller(settings, engine) as running:
            yield running
    finally:
        engine.dispose()


def fast_seewo(settings: Settings, failure_share: float = 0.0) -> Profile:
    profile = profiles_in(settings.profiles_dir)["seewo-panel"]
    hints = profile.simulation.model_copy(
        update={"update_reboot_s": 0.3, "update_failure_share": failure_share}
    )
    return profile.model_copy(update={"simulation": hints})


def command(settings: Settings, port: int, device: str, n: int = 1) -> bytes:
    release = profiles_in(settings.profiles_dir)["seewo-panel"].releases[0]
    return Command(
        cmd_id=f"r1-{device}-{n}",
        kind=CommandKind.firmware_update,
        site=SITE,
        issued_at=datetime.now(UTC),
        devices=[device],
        args={
            "rollout_id": 1,
            "version": release.version,
            "sha256": release.sha256,
            "size": release.size,
            "url": f"http://127.0.0.1:{port}/api/v1/firmware/artifacts/{release.sha256}",
            "timeout_s": 30,
        },
    ).to_json()


class Agent(CommandPath):
    """The updater as the site agent runs it, with what it publishes kept."""

    def __init__(
        self, data_dir: Path, sim: SimulatedSite, profile: Profile, rate: float | None
    ) -> None:
        self.events: list[AgentEvent] = []
        self.acks: list[CommandAck] = []
        targets = [
            target_for(r.behaviour.device, profile, r.address) for r in sim.responders.values()
        ]
        options = UpdateOptions(data_dir, download_bytes_per_s=rate, read_every_s=0.1)
        self.build(SITE, data_dir, targets, options)

    async def publish(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/cmd/ack"):
            self.acks.append(CommandAck.model_validate_json(payload))
        else:
            self.events.append(AgentEvent.model_validate_json(payload))

    async def wait_acks(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acks) < count:
            assert time.monotonic() < deadline, (
                f"{len(self.acks)} of {count} results: {self.events[-3:]}"
            )
            await asyncio.sleep(0.05)


async def _scenario_one_download_per_site_however_many_devices(
    settings: Settings, controller: Controller, tmp_path: Path
) -> None:
    profile = fast_seewo(settings)
    release = profile.releases[0]
    async with await start_devices(6, profile) as sim:
        agent = Agent(tmp_path / "agent", sim, profile, rate=None)
        await agent.start()
        try:
            for device in sim.responders:
                agent.deliver(command(settings, controller.port, device))
            await agent.wait_acks(6)
        finally:
            await agent.close()
        assert all(ack.ok for ack in agent.acks), [a.message for a in agent.acks]
        assert {r.behaviour.firmware for r in sim.responders.values()} == {"3.3.0"}
        served = SERVED.counts[(SITE, release.sha256)]
        local = agent.updater.server.served_bytes
    print(
        f"\nsite {SITE}: {served} bytes downloaded from the controller for 6 devices updated "
        f"({served / 6:.0f} bytes per device; {local} bytes served locally to the devices)"
    )
    assert served == release.size
    assert local == 6 * release.size


async def _scenario_agent_restart_during_a_download_resumes_it(
    settings: Settings, controller: Controller, tmp_path: Path
) -> None:
    profile = fast_seewo(settings)
    release = profile.releases[0]
    data = tmp_path / "agent"
    async with await start_devices(1, profile) as sim:
        device = next(iter(sim.responders))
        first = Agent(data, sim, profile, rate=release.size / 2)  # about two seconds
        await first.start()
        first.deliver(command(settings, controller.port, device))
        part = first.updater.cache.partial(release.sha256)
        deadline = time.monotonic() + 10
        while not (part.exists() and part.stat().st_size > release.size // 4):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await first.close()  # the agent stops half-way
        kept = part.stat().st_size
        assert 0 < kept < release.size and first.acks == []

        second = Agent(data, sim, profile, rate=None)  # the journal brings the command back
        await second.start()
        try:
            await second.wait_acks(1)
        finally:
            await second.close()
        assert second.acks[0].ok, second.acks[0].message
        assert sim.device(device).behaviour.firmware == "3.3.0"
        received = first.updater.cache.received_bytes + second.updater.cache.received_bytes
        assert received == release.size, "bytes were downloaded twice"
        cached = second.updater.cache.path(release.sha256).read_bytes()
        assert hashlib.sha256(cached).hexdigest() == release.sha256
    with controller.server.config.app.state.engine.connect() as conn:  # type: ignore[attr-defined]
        from sqlalchemy import text

        row = conn.execute(text("SELECT requests, range_requests FROM artifact_download")).one()
    assert tuple(row) == (2, 1)


async def _scenario_device_that_returns_on_the_old_version_is_failed_not_succeeded(
    settings: Settings, controller: Controller, tmp_path: Path
) -> None:
    profile = fast_seewo(settings, failure_share=1.0)
    async with await start_devices(4, profile) as sim:
        agent = Agent(tmp_path / "agent", sim, profile, rate=None)
        agent.updater.options.read_every_s = 0.1
        await agent.start()
        for responder in sim.responders.values():
            responder.behaviour.profile = profile
        try:
            for device in sim.responders:
                agent.deliver(command(settings, controller.port, device))
            await agent.wait_acks(4, timeout=60)
        finally:
            await agent.close()
    assert not any(ack.ok for ack in agent.acks)
    finals = [e for e in agent.events if e.data["state"] not in ("downloading", "installing")]
    assert {e.data["state"] for e in finals} <= {"failed", "timed_out"}


def test_one_download_per_site_however_many_devices(
    settings: Settings, controller: Controller, tmp_path: Path
) -> None:
    asyncio.run(
        asyncio.wait_for(
            _scenario_one_download_per_site_however_many_devices(settings, controller, tmp_path),
            120,
        )
    )


def test_agent_restart_during_a_download_resumes_it(
    settings: Settings, controller: Controller, tmp_path: Path
) -> None:
    asyncio.run(
        asyncio.wait_for(
            _scenario_agent_restart_during_a_download_resumes_it(settings, controller, tmp_path),
            120,
        )
    )


def test_device_that_returns_on_the_old_version_is_failed_not_succeeded(
    settings: Settings, controller: Controller, tmp_path: Path
) -> None:
    asyncio.run(
        asyncio.wait_for(
            _scenario_device_that_returns_on_the_old_version_is_failed_not_succeeded(
                settings, controller, tmp_path
            ),
            120,
        )
    )
