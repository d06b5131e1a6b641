"""Releases whose artifact is an http(s) URL (a vendor's download server): the controller puts
that URL in the firmware command instead of its own endpoint, and the site agent downloads it
once per site, resuming with HTTP Range after a dropped or broken link, and checks its SHA-256
before any device sees it. The server is a real one on 127.0.0.1; the devices are simulated
SNMP panels that take the update over SNMP SET."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlmodel import Session, select

from agent.collectors import target_for
from agent.poller import build_targets
from agent.simulator import SimulatedSite, start_devices, start_site
from agent.simulator.firmware_image import make_image
from agent.updater import UpdateOptions
from fleet.db import make_engine, migrate
from fleet.devices.profile_book import profiles_in
from fleet.devices.registry import sync_registry
from fleet.ingest.pipeline import Ingest
from fleet.models import AgentStatus, Device
from fleet.protocol.errors import ConfigErrors
from fleet.protocol.messages import AgentEvent, Command, CommandAck, CommandKind
from fleet.protocol.profiles import Profile, load_profile
from fleet.protocol.site_config import (
    DEFAULT_PROFILES_DIR,
    DEFAULT_SITES_DIR,
    LoadedSite,
    load_site,
)
from fleet.rollouts import engine as rollout_engine
from fleet.rollouts.artifacts import ArtifactStore
from fleet.rollouts.campaigns import RolloutRequest, TargetFilter, create_rollout
from fleet.rollouts.engine import FirmwareDelivery
from fleet.rollouts.models import RolloutDevice
from fleet.settings import Settings
from tests.agent_commands import CommandPath
from tests.fixtures_db import message
from tests.range_server import RangeServer

SITE = "upm"
PROFILE = "seewo-panel"
OLD, NEW = "3.2.1", "3.3.0"
IMAGE = make_image(PROFILE, NEW)


def url_profiles(tmp_path: Path, url: str) -> Path:
    """The shipped profiles, with the Seewo release's artifact given as `url` and panels that
    always take an update and reboot at once."""
    out = tmp_path / "firmware_profiles"
    out.mkdir()
    for path in DEFAULT_PROFILES_DIR.glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        if data["id"] == PROFILE:
            data["simulation"].update(update_reboot_s=0.3, update_failure_share=0.0)
            release = next(r for r in data["releases"] if r["version"] == NEW)
            release["artifact"] = url
        (out / path.name).write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def quiet_site(tmp_path: Path, profiles: Path) -> LoadedSite:
    """UPM with no classes: the maintenance window is open and no panel is in use."""
    sites = tmp_path / "site_configs"
    sites.mkdir()
    shutil.copy(DEFAULT_SITES_DIR / f"{SITE}.yaml", sites)
    config = yaml.safe_load((sites / f"{SITE}.yaml").read_text())
    config["timetable"] = {"weekly": {}}
    (sites / f"{SITE}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return load_site(sites / f"{SITE}.yaml", profiles_dir=profiles)


class Agent(CommandPath):
    """The site agent's updater, with what it publishes kept."""

    def __init__(self, data_dir: Path, targets: list[Any]) -> None:
        self.events: list[AgentEvent] = []
        self.acks: list[CommandAck] = []
        self.sent: list[tuple[str, bytes]] = []
        options = UpdateOptions(data_dir, read_every_s=0.1)
        self.build(SITE, data_dir, targets, options)

    async def publish(self, topic: str, payload: bytes) -> None:
        self.sent.append((topic, payload))
        if topic.endswith("/cmd/ack"):
            self.acks.append(CommandAck.model_validate_json(payload))
        else:
            self.events.append(AgentEvent.model_validate_json(payload))

    async def wait_acks(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acks) < count:
            assert time.monotonic() < deadline, f"{len(self.acks)} of {count}: {self.events[-3:]}"
            await asyncio.sleep(0.05)


def panel_agent(data_dir: Path, sim: SimulatedSite, profile: Profile) -> Agent:
    targets = [target_for(r.behaviour.device, profile, r.address) for r in sim.responders.values()]
    return Agent(data_dir, targets)


def command(url: str, device: str, n: int = 1, sha256: str | None = None) -> bytes:
    release = profiles_in(DEFAULT_PROFILES_DIR)[PROFILE].release(NEW)
    assert release is not None
    return Command(
        cmd_id=f"r1-{device}-{n}",
        kind=CommandKind.firmware_update,
        site=SITE,
        issued_at=datetime.now(UTC),
        devices=[device],
        args={
            "rollout_id": 1,
            "version": NEW,
            "sha256": sha256 or release.sha256,
            "size": release.size,
            "url": url,
            "timeout_s": 30,
        },
    ).to_json()


def fast_panel(profiles: Path) -> Profile:
    return profiles_in(profiles)[PROFILE]


# --- the whole path: profile → rollout → command → agent → devices → controller -------------


async def _url_release_rolls_out(tmp_path: Path) -> None:
    # The vendor's server drops the first response after 100,000 bytes (a link that ends).
    with RangeServer(IMAGE, drop_first_at=100_000, drop="close") as server:
        profiles = url_profiles(tmp_path, server.url)
        site = quiet_site(tmp_path, profiles)
        store = ArtifactStore(
            tmp_path / "no-artifacts",  # the controller holds no file
            base_url="http://127.0.0.1:8000",
        )
        delivery = FirmwareDelivery(profiles, store, topic_root="fleet/v1")
        engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
        migrate(engine)
        sync_registry(engine, [site])
        now = datetime.now(UTC)
        with Session(engine) as session:
            for device in session.exec(select(Device).where(Device.profile == PROFILE)):
                device.firmware, device.reachable, device.power = OLD, True, "standby"
                device.last_seen_at = now - timedelta(seconds=30)
                session.add(device)
            session.add(
                AgentStatus(
                    site_code=SITE, agent_id="upm-agent-1", state="online", ts=now, received_at=now
                )
            )
            session.commit()
            request = RolloutRequest.model_validate(
                {
                    "name": "seewo from the vendor's server",
                    "release_version": NEW,
                    "targets": TargetFilter(profile=PROFILE, sites=[SITE]),
                    "waves": [{"percent": 100}],
                    "start": True,
                }
            )
            create_rollout(session, profiles_in(profiles), store, request, now)

        published: list[tuple[str, bytes]] = []
        rollout_engine.tick(
            engine, delivery, now, lambda t, p: published.append((t, p)), "test-controller"
        )
        commands = [Command.model_validate_json(p) for _, p in published]
        panels = sorted(d for c in commands for d in c.devices)
        assert len(panels) == 3, commands
        assert {c.args["url"] for c in commands} == {server.url}

        async with await start_site(site) as sim:
            agent = Agent(tmp_path / "agent", build_targets(site, sim.address_map))
            await agent.start()
            try:
                for _, payload in published:
                    agent.deliver(payload)
                await agent.wait_acks(3)
            finally:
                await agent.close()
            assert all(a.ok for a in agent.acks), [a.message for a in agent.acks]
            assert {sim.device(p).behaviour.firmware for p in panels} == {NEW}
            received = agent.updater.cache.received_bytes
            served_locally = agent.updater.server.served_bytes

        # One download for the site's three panels: cut at 100,000 bytes, then the rest.
        assert [(r.range, r.status, r.sent) for r in server.requests] == [
            (None, 200, 100_000),
            (f"bytes=100000-{len(IMAGE) - 1}", 206, len(IMAGE) - 100_000),
        ]
        assert received == len(IMAGE)
        assert served_locally == 3 * len(IMAGE)

        # The agent's reports reach the controller, which marks the panels updated.
        later = now + timedelta(seconds=5)
        Ingest(engine).handle(
            [message(topic, json.loads(body), later) for topic, body in agent.sent]
        )
        rollout_engine.tick(engine, delivery, later, lambda t, p: None, "test-controller")
        with Session(engine) as session:
            states = {r.device_id: r.state for r in session.exec(select(RolloutDevice))}
        engine.dispose()
        assert states == dict.fromkeys(panels, "succeeded")


def test_url_release_goes_to_the_agents_and_is_downloaded_once_resuming(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(_url_release_rolls_out(tmp_path), 120))


# --- the agent's download ---------------------------------------------------------------------


async def _broken_link_resumes_on_the_next_attempt(tmp_path: Path) -> None:
    profile = fast_panel(url_profiles(tmp_path, "http://127.0.0.1/unused"))
    cut = 2 * 64 * 1024  # whole read chunks, so the agent has written all it was sent
    with RangeServer(IMAGE, drop_first_at=cut, drop="reset") as server:
        async with await start_devices(1, profile) as sim:
            device = next(iter(sim.responders))
            agent = panel_agent(tmp_path / "agent", sim, profile)
            await agent.start()
            try:
                agent.deliver(command(server.url, device, 1))
                part = agent.updater.cache.partial(profile.releases[0].sha256)
                deadline = time.monotonic() + 20
                while not (part.exists() and part.stat().st_size == cut):
                    assert time.monotonic() < deadline, "the first bytes never arrived"
                    await asyncio.sleep(0.02)
                server.may_reset.set()  # now the link breaks
                await agent.wait_acks(1)
                first = agent.acks[0]
                assert not first.ok and "deferred" in first.message, first.message
                assert part.stat().st_size == cut  # kept for the next attempt

                agent.deliver(command(server.url, device, 2))  # the retry
                await agent.wait_acks(2)
            finally:
                await agent.close()
            assert agent.acks[1].ok, agent.acks[1].message
            assert sim.device(device).behaviour.firmware == NEW
            assert agent.updater.cache.received_bytes == len(IMAGE), "bytes downloaded twice"
    assert [(r.range, r.status) for r in server.requests] == [
        (None, 200),
        (f"bytes={cut}-{len(IMAGE) - 1}", 206),
    ]


def test_broken_link_resumes_where_it_stopped_on_the_next_attempt(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(_broken_link_resumes_on_the_next_attempt(tmp_path), 120))


async def _wrong_bytes_are_never_pushed(tmp_path: Path) -> None:
    profile = fast_panel(url_profiles(tmp_path, "http://127.0.0.1/unused"))
    release = profile.releases[0]
    other = make_image(PROFILE, "9.9.9")  # the same size, not the release's bytes
    assert len(other) == release.size
    with RangeServer(other) as server:
        async with await start_devices(1, profile) as sim:
            device = next(iter(sim.responders))
            agent = panel_agent(tmp_path / "agent", sim, profile)
            await agent.start()
            try:
                agent.deliver(command(server.url, device))
                await agent.wait_acks(1)
            finally:
                await agent.close()
            ack = agent.acks[0]
            assert not ack.ok
            failed = [e for e in agent.events if e.data["state"] == "failed"]
            assert len(failed) == 1
            assert "SHA-256" in failed[0].message and "not pushed" in failed[0].message
            assert sim.device(device).behaviour.firmware == OLD
            assert agent.updater.server.served_bytes == 0  # no device fetched anything
            assert not agent.updater.cache.path(release.sha256).exists()
            assert not agent.updater.cache.partial(release.sha256).exists()


def test_artifact_with_the_wrong_sha256_is_refused_and_never_pushed(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(_wrong_bytes_are_never_pushed(tmp_path), 60))


async def _only_http_urls(tmp_path: Path) -> None:
    profile = fast_panel(url_profiles(tmp_path, "http://127.0.0.1/unused"))
    secret = tmp_path / "not-firmware.bin"
    secret.write_bytes(IMAGE)  # even the right bytes are not read from a file URL
    async with await start_devices(1, profile) as sim:
        device = next(iter(sim.responders))
        agent = panel_agent(tmp_path / "agent", sim, profile)
        await agent.start()
        try:
            agent.deliver(command(secret.as_uri(), device))
            await agent.wait_acks(1)
        finally:
            await agent.close()
    assert not agent.acks[0].ok
    assert "not http(s)" in agent.acks[0].message or any(
        "not http(s)" in e.message for e in agent.events
    )
    assert agent.updater.cache.received_bytes == 0
    assert sim.device(device).behaviour.firmware == OLD


def test_agent_downloads_only_http_urls(tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(_only_http_urls(tmp_path), 60))


@pytest.mark.parametrize(
    "artifact", ["ftp://vendor.example/fw.bin", "file:///srv/fw.bin", "https:///fw.bin"]
)
def test_release_url_other_than_http_is_refused_in_the_profile(
    tmp_path: Path, artifact: str
) -> None:
    data = yaml.safe_load((DEFAULT_PROFILES_DIR / f"{PROFILE}.yaml").read_text())
    data["releases"][0]["artifact"] = artifact
    path = tmp_path / f"{PROFILE}.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigErrors) as caught:
        load_profile(path)
    assert "http(s) URL" in str(caught.value)


def test_url_release_is_not_served_by_the_controller(tmp_path: Path) -> None:
    """The controller holds no file for a URL release; its endpoint says where it comes from."""
    from fastapi.testclient import TestClient

    from fleet.api.app import create_app

    profiles = url_profiles(tmp_path, "https://downloads.vendor.example/seewo/3.3.0.bin")
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'fleet.db'}",
        profiles_dir=profiles,
        artifacts_dir=tmp_path / "artifacts",
    )
    (tmp_path / "artifacts").mkdir()
    engine = make_engine(settings.database_url)
    migrate(engine)
    release = profiles_in(profiles)[PROFILE].release(NEW)
    assert release is not None
    with TestClient(create_app(settings, engine)) as client:
        response = client.get(f"/api/v1/firmware/artifacts/{release.sha256}?site={SITE}")
    engine.dispose()
    assert response.status_code == 409
    assert (
        "downloaded by each site's agent from https://downloads.vendor.example"
        in (response.json()["detail"])
    )
