"""The agent's one place for commands (agent/commands.py): the contract's checks before a
command's args touch a path, a file or the network; the on-disk dedupe; the controller's
word as the only judge of when a command may start; cancel; one stream per device."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from agent.collectors import target_for
from agent.commands import CommandInbox, Result, StillWanted
from agent.updater import UpdateOptions, Updater
from fleet.devices.profile_book import profiles_in
from fleet.protocol.commands import FirmwareArgs
from fleet.protocol.messages import Command, CommandAck, CommandKind, Topics
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR, DeviceConfig
from tests.agent_commands import word

SITE = "upm"
SHA = "a" * 64
NOW = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)


class Recorder:
    """A firmware handler that records what it was asked to do and when it was stopped."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.gate = asyncio.Event()
        self.stopped: dict[str, str | None] = {}

    async def carry_out(
        self, command: Command, args: BaseModel, still_wanted: StillWanted
    ) -> Result:
        self.started.append(command.cmd_id)
        await self.gate.wait()
        why = still_wanted()
        self.stopped[command.cmd_id] = why
        return Result(why is None, why or "done")


class Sent:
    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, payload: bytes) -> None:
        self.items.append((topic, payload))

    def acks(self) -> dict[str, CommandAck]:
        return {
            a.cmd_id: a
            for a in (CommandAck.model_validate_json(p) for t, p in self.items if "ack" in t)
        }

    def states(self) -> list[tuple[str, str]]:
        return [
            (e["device"], e["data"]["state"])
            for e in (json.loads(p) for t, p in self.items if t.endswith("/events"))
        ]


def firmware(
    cmd_id: str, devices: list[str], campaign: str | None = "rollout-7", **args: Any
) -> bytes:
    body = {
        "version": "3.3.0",
        "sha256": SHA,
        "size": 1000,
        "url": f"http://127.0.0.1:8000/api/v1/firmware/artifacts/{SHA}",
    }
    body.update(args)
    return Command(
        cmd_id=cmd_id,
        kind=CommandKind.firmware_update,
        site=SITE,
        issued_at=NOW,
        campaign=campaign,
        expires_at=NOW + timedelta(minutes=30),
        devices=devices,
        args=body,
    ).to_json()


def inbox(tmp_path: Path, sent: Sent, handler: Any) -> CommandInbox:
    box = CommandInbox(SITE, "upm-agent-1", sent.publish, Topics(), tmp_path, {})
    box.handlers[CommandKind.firmware_update] = handler
    box.load()
    return box


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


def test_nothing_starts_before_a_current_word_issued_after_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        sent, handler = Sent(), Recorder()
        box = inbox(tmp_path, sent, handler)
        box.on_message(firmware("c1", ["p1"]), True)
        # Words the broker had queued for the agent while it was away start nothing, even
        # one issued after the command; nor does a current word issued with it or before.
        box.on_message(word(SITE, NOW + timedelta(seconds=5)), False)
        box.on_message(word(SITE, NOW), True)
        await settle()
        assert handler.started == []
        box.on_message(word(SITE, NOW + timedelta(seconds=1)), True)
        await settle()
        assert handler.started == ["c1"]
        handler.gate.set()
        await box.close()

    asyncio.run(scenario())


def test_cancel_drops_held_commands_and_stops_started_ones_before_their_next_step(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        sent, handler = Sent(), Recorder()
        box = inbox(tmp_path, sent, handler)
        box.on_message(firmware("started", ["p1"]), True)
        box.on_message(word(SITE, NOW + timedelta(seconds=1)), True)
        await settle()
        held = Command.model_validate_json(firmware("held", ["p2", "p3"]))
        held = held.model_copy(update={"issued_at": NOW + timedelta(seconds=2)})
        box.on_message(held.to_json(), True)
        other = firmware("other", ["p4"], campaign="rollout-8")
        box.on_message(other, True)
        await settle()
        assert handler.started == ["started", "other"]
        # The cancel arrives queued (not current): its revocation still counts.
        box.on_message(word(SITE, NOW + timedelta(seconds=3), ["rollout-7"]), False)
        handler.gate.set()
        for _ in range(100):
            if len(sent.acks()) == 3:
                break
            await asyncio.sleep(0.02)
        await box.close()
        acks = sent.acks()
        assert not acks["held"].ok and "cancelled" in acks["held"].message
        assert ("p2", "cancelled") in sent.states() and ("p3", "cancelled") in sent.states()
        assert handler.stopped["started"] is not None and "rollout-7" in handler.stopped["started"]
        assert handler.stopped["other"] is None and acks["other"].ok
        assert "held" not in handler.started
        # Remembered on disk: a restarted agent neither runs them nor forgets the revocation.
        journal = json.loads((tmp_path / f"commands-{SITE}.json").read_text())
        assert {"held", "started", "other"} <= set(journal["done"])
        assert journal["revoked"]["campaigns"] == ["rollout-7"]

    asyncio.run(scenario())


def test_a_device_is_in_one_command_stream_at_a_time(tmp_path: Path) -> None:
    async def scenario() -> None:
        sent, handler = Sent(), Recorder()
        box = inbox(tmp_path, sent, handler)
        box.on_message(firmware("a1", ["p1", "p2"]), True)
        box.on_message(firmware("b1", ["p2"], campaign="rollout-9"), True)
        box.on_message(firmware("a2", ["p2"]), True)  # the same campaign's retry: taken
        await settle()
        await box.close()
        refused = sent.acks()["b1"]
        assert not refused.ok
        assert "p2 already in command a1 of rollout-7" in refused.message
        assert "a2" not in sent.acks()

    asyncio.run(scenario())


def test_a_redelivered_command_is_carried_out_once_even_after_a_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        sent, handler = Sent(), Recorder()
        handler.gate.set()
        box = inbox(tmp_path, sent, handler)
        box.on_message(firmware("c1", ["p1"]), True)
        box.on_message(word(SITE, NOW + timedelta(seconds=1)), True)
        for _ in range(50):
            if sent.acks():
                break
            await asyncio.sleep(0.02)
        box.on_message(firmware("c1", ["p1"]), True)
        await box.close()
        again = inbox(tmp_path, sent, handler)
        again.on_message(firmware("c1", ["p1"]), True)
        again.on_message(word(SITE, NOW + timedelta(seconds=2)), True)
        await settle()
        await again.close()
        assert handler.started == ["c1"]

    asyncio.run(scenario())


# --- hostile args -------------------------------------------------------------------------

text = st.one_of(
    st.text(max_size=300),
    st.sampled_from(
        [
            "../../etc/passwd",
            "/etc/passwd",
            "..",
            "a" * 63 + "/",
            "A" * 64,
            "a" * 64 + "\n",
            "a" * 65,
            "file:///etc/shadow",
            "http://evil.example/x",
            "http://127.0.0.1:8000/api/v1/firmware/artifacts/" + "b" * 64,
            "ftp://127.0.0.1/fw",
            "http:///nohost",
            "http://user:pw@127.0.0.1/api/v1/firmware/artifacts/" + SHA,
            "\x1b[2J",
            "",
        ]
    ),
)
number = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    text,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sha=text,
    url=text,
    size=number,
    version=st.one_of(text, number),
    timeout=number,
)
def test_hostile_firmware_args_are_refused_with_the_reason_and_touch_no_path(
    tmp_path_factory: Any, sha: Any, url: Any, size: Any, version: Any, timeout: Any
) -> None:
    tmp = tmp_path_factory.mktemp("agent")
    profile = profiles_in(DEFAULT_PROFILES_DIR)["seewo-panel"]
    device = DeviceConfig.model_validate(
        {"id": "p1", "profile": "seewo-panel", "address": "127.0.0.1"}
    )
    target = target_for(device, profile, ("127.0.0.1", 9))

    async def scenario() -> tuple[Sent, list[str]]:
        sent = Sent()
        box = CommandInbox(SITE, "upm-agent-1", sent.publish, Topics(), tmp / "data", {})
        updater = Updater([target], box.report, UpdateOptions(tmp / "data", site=SITE))
        box.handlers[CommandKind.firmware_update] = updater
        box.load()
        bad = {"version": version, "sha256": sha, "size": size, "url": url, "timeout_s": timeout}
        payload = Command(
            cmd_id="bad",
            kind=CommandKind.firmware_update,
            site=SITE,
            issued_at=NOW,
            campaign="rollout-1",
            devices=["p1"],
            args={k: v for k, v in bad.items() if _json_able(v)},
        ).to_json()
        box.on_message(payload, True)
        # A good command beside it, for another device, is kept.
        box.on_message(firmware("good", ["p2"], campaign="rollout-1"), True)
        await settle()
        pending = list(json.loads((tmp / "data" / f"commands-{SITE}.json").read_text())["active"])
        await box.close()
        await updater.close()
        return sent, pending

    sent, pending = asyncio.run(scenario())
    acks = sent.acks()
    try:
        FirmwareArgs.model_validate(
            {"version": version, "sha256": sha, "size": size, "url": url, "timeout_s": timeout}
        )
        valid = True
    except ValueError:
        valid = False
    if not valid:
        assert not acks["bad"].ok and acks["bad"].message.startswith("refused: ")
    assert "good" in pending  # held for the controller's word, not lost beside the bad one
    # Nothing was written outside the agent's data folder, nor any artifact fetched.
    outside = {p.name for p in tmp.iterdir()}
    assert outside == {"data"}
    assert not list((tmp / "data" / "artifacts").glob("*"))


def _json_able(value: Any) -> bool:
    try:
        Command.model_validate(
            {
                "cmd_id": "x",
                "kind": "poll_now",
                "site": SITE,
                "issued_at": NOW,
                "args": {"v": value},
            }
        )
    except ValueError:
        return False
    return True


def test_artifact_urls_come_only_from_the_controller_or_the_release_s_declared_host(
    tmp_path: Path,
) -> None:
    profile = profiles_in(DEFAULT_PROFILES_DIR)["seewo-panel"]
    release = profile.releases[0]
    vendor = profile.model_copy(
        update={
            "releases": (
                release.model_copy(update={"artifact": "https://dl.vendor.example/a.bin"}),
            )
        }
    )
    device = DeviceConfig.model_validate(
        {"id": "p1", "profile": "seewo-panel", "address": "127.0.0.1"}
    )
    options = UpdateOptions(tmp_path, site=SITE, controller_hosts=frozenset({"fleet.example.org"}))

    async def reports(*args: Any) -> None:
        return None

    def problem(profile_used: Any, url: str, sha: str = release.sha256) -> str | None:
        updater = Updater([], reports, options)
        target = target_for(device, profile_used, ("127.0.0.1", 9))
        args = FirmwareArgs(version=release.version, sha256=sha, size=release.size, url=url)
        return updater.source_problem(target, args)

    endpoint = f"/api/v1/firmware/artifacts/{release.sha256}"
    assert problem(profile, f"https://fleet.example.org{endpoint}") is None
    assert problem(vendor, "https://dl.vendor.example/signed/a.bin?sig=1") is None
    for url in (
        f"https://evil.example{endpoint}",
        "https://fleet.example.org/etc/passwd",
        f"https://fleet.example.org/api/v1/firmware/artifacts/{'b' * 64}",
        "https://dl.vendor.example/a.bin",  # this profile's release names no such host
        f"https://user:pw@fleet.example.org{endpoint}",
    ):
        found = problem(profile, url)
        assert found is not None and "not downloaded" in found, url
