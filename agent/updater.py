"""Firmware updates on the site: a `firmware_update` command in, the device on the new
version (or the reason it is not) out.

For each device: read it first (unreachable: deferred; in use: skipped; already there:
succeeded), fetch the artifact through the site cache (one download per site, resumable,
SHA-256 checked), hand the device the cache's local URL through the profile's method, then
read it until it reports the target version. Success is only ever what the device reports.
Commands in progress are kept in a journal on disk, so an agent restart carries them on
(and the download resumes where it stopped).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.artifact_cache import ArtifactCache, ArtifactMismatch, LocalArtifactServer
from agent.collectors import Collectors, Target
from agent.collectors.cleaning import clean_text
from fleet.protocol.messages import (
    AgentEvent,
    Command,
    CommandAck,
    CommandKind,
    EventKind,
    Reading,
    Topics,
    utcnow,
)

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]
DONE_KEPT = 2000  # finished command ids remembered, so a redelivered command is not re-run


@dataclass
class UpdateOptions:
    data_dir: Path
    # Where the site's devices reach this agent for artifacts.
    serve_host: str = "127.0.0.1"
    serve_port: int = 0
    download_bytes_per_s: float | None = None
    read_every_s: float = 2.0

    @classmethod
    def from_env(cls, data_dir: Path) -> UpdateOptions:
        """FLEET_AGENT_ARTIFACT_HOST: the address the site's devices reach this computer at
        (loopback serves simulated devices only); FLEET_AGENT_DOWNLOAD_BYTES_PER_S: a cap
        for metered links."""
        rate = os.environ.get("FLEET_AGENT_DOWNLOAD_BYTES_PER_S")
        return cls(
            data_dir=data_dir,
            serve_host=os.environ.get("FLEET_AGENT_ARTIFACT_HOST", "127.0.0.1"),
            download_bytes_per_s=float(rate) if rate else None,
            read_every_s=float(os.environ.get("FLEET_AGENT_UPDATE_READ_S", "2")),
        )


@dataclass(frozen=True)
class Outcome:
    state: str  # a fleet.rollouts DeviceUpdateState value
    message: str
    firmware: str | None = None


class Updater:
    def __init__(
        self,
        site: str,
        agent_id: str,
        targets: list[Target],
        publish: Publish,
        topics: Topics,
        options: UpdateOptions,
    ) -> None:
        self.site = site
        self.agent_id = agent_id
        self.targets = {t.device.id: t for t in targets}
        self.publish = publish
        self.topics = topics
        self.options = options
        self.cache = ArtifactCache(
            options.data_dir / "artifacts", site, options.download_bytes_per_s
        )
        self.server = LocalArtifactServer(self.cache, options.serve_host, options.serve_port)
        self.collectors = Collectors()
        self.journal_path = options.data_dir / f"updates-{site}.json"
        self._journal: dict[str, Any] = {"active": {}, "done": []}
        self._tasks: set[asyncio.Task[None]] = set()
        self._snmp: Any = None

    async def start(self) -> None:
        await self.server.start()
        if self.journal_path.exists():
            try:
                self._journal = json.loads(self.journal_path.read_text())
            except (OSError, ValueError):
                log.warning("update journal %s unreadable; starting afresh", self.journal_path)
        for raw in list(self._journal["active"].values()):
            log.info("resuming firmware command %s after a restart", raw.get("cmd_id"))
            self._spawn(Command.model_validate(raw))

    async def close(self) -> None:
        self.cache.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.close()
        await self.collectors.close()
        if self._snmp is not None:
            self._snmp.close_dispatcher()

    def on_command(self, payload: bytes) -> None:
        try:
            command = Command.model_validate_json(payload)
        except ValidationError as exc:
            log.warning("ignored a command that is not one: %s", exc.errors()[:1])
            return
        if command.site != self.site or command.kind != CommandKind.firmware_update:
            return
        if command.cmd_id in self._journal["active"] or command.cmd_id in self._journal["done"]:
            return  # redelivered (the broker's QoS 1, a persistent session): already in hand
        stale = self._stale(command)
        if stale:
            # Queued by the broker while the agent was away for longer than the controller
            # waits: the controller has given up on it (and may have cancelled the rollout).
            log.warning("firmware command %s not carried out: %s", command.cmd_id, stale)
            self._journal["done"].append(command.cmd_id)
            self._save()
            self._spawn_refusal(command, stale)
            return
        self._journal["active"][command.cmd_id] = command.model_dump(mode="json")
        self._save()
        self._spawn(command)

    def _stale(self, command: Command) -> str | None:
        timeout = command.args.get("timeout_s")
        if not isinstance(timeout, int | float) or isinstance(timeout, bool):
            return None
        age = (utcnow() - command.issued_at).total_seconds()
        if age <= timeout:
            return None
        return (
            f"expired: issued {age:.0f} s ago, past its {timeout:.0f} s timeout (the agent was "
            "away); the controller sends a new command if the rollout still wants the device"
        )

    def _spawn_refusal(self, command: Command, reason: str) -> None:
        ack = CommandAck(
            cmd_id=command.cmd_id,
            site=self.site,
            agent_id=self.agent_id,
            ok=False,
            ts=utcnow(),
            message=_text(reason),
        )
        task = asyncio.get_running_loop().create_task(
            self._send(self.topics.cmd_ack(self.site), ack.to_json(), final=True),
            name=f"{command.cmd_id}-refused",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn(self, command: Command) -> None:
        task = asyncio.get_running_loop().create_task(self._run(command), name=command.cmd_id)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _save(self) -> None:
        self._journal["done"] = self._journal["done"][-DONE_KEPT:]
        tmp = self.journal_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._journal))
        tmp.replace(self.journal_path)

    async def _run(self, command: Command) -> None:
        outcomes = []
        for device in command.devices:
            try:
                outcome = await self._update(command, device)
            except asyncio.CancelledError:
                raise  # the agent is stopping: the journal keeps the command for next start
            except Exception as exc:  # one device's trouble must not kill the agent
                log.exception("update of %s failed unexpectedly", device)
                outcome = Outcome("failed", f"agent error: {exc}")
            outcomes.append(outcome)
            await self._report(command, device, outcome.state, outcome.message, outcome.firmware)
        ok = all(o.state == "succeeded" for o in outcomes)
        ack = CommandAck(
            cmd_id=command.cmd_id,
            site=self.site,
            agent_id=self.agent_id,
            ok=ok,
            ts=utcnow(),
            message=_text(
                "; ".join(f"{d}: {o.state}" for d, o in zip(command.devices, outcomes, strict=True))
            ),
        )
        await self._send(self.topics.cmd_ack(self.site), ack.to_json(), final=True)
        self._journal["active"].pop(command.cmd_id, None)
        self._journal["done"].append(command.cmd_id)
        self._save()

    async def _update(self, command: Command, device_id: str) -> Outcome:
        args = command.args
        version, sha256, size = str(args["version"]), str(args["sha256"]), int(args["size"])
        target = self.targets.get(device_id)
        if target is None:
            return Outcome("failed", f"{device_id} is not in this agent's site config")
        update = target.profile.update
        problem = target.profile.agent_push_problem()
        if problem or update.snmp_url_oid is None:
            return Outcome("failed", problem or f"{target.profile.id}: no way to push")
        reading = await self.collectors.poll(target)
        if not reading.reachable:
            return Outcome("deferred", f"unreachable before the update: {reading.error}")
        if reading.firmware == version:
            return Outcome("succeeded", f"already on {version}", version)
        if reading.power.value == "on" and reading.input:
            return Outcome("skipped", f"in use (on, input {reading.input}): not interrupted")
        url = str(args["url"])
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            return Outcome("failed", f"artifact URL {url!r} is not http(s): not downloaded")
        await self._report(command, device_id, "downloading", f"fetching {sha256[:12]}")
        try:
            await self.cache.fetch(url, sha256, size)
        except ArtifactMismatch as exc:
            return Outcome("failed", str(exc))
        except OSError as exc:
            return Outcome("deferred", f"cannot download the artifact yet ({exc})")
        await self._report(command, device_id, "installing", f"pushing {version}")
        local_url = self.server.url(sha256)
        problem = await self._snmp_set(target, update.snmp_url_oid, local_url)
        if problem:
            return Outcome("failed", f"the device refused the update: {problem}")
        timeout = min(
            float(args.get("timeout_s", update.install_timeout_s)), update.install_timeout_s
        )
        return await self._confirm(target, version, reading, timeout)

    async def _confirm(
        self, target: Target, version: str, before: Reading, timeout: float
    ) -> Outcome:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        went_away = False
        while loop.time() < deadline:
            await asyncio.sleep(self.options.read_every_s)
            reading = await self.collectors.poll(target)
            if not reading.reachable:
                went_away = True
                continue
            status = str(reading.metrics.get("update_status", ""))
            if reading.firmware == version:
                return Outcome("succeeded", f"reports {version}", version)
            if status.startswith("failed"):
                return Outcome("failed", status, reading.firmware)
            # A reboot shows as a gap in answers, or, if the polls missed it, as uptime
            # starting again.
            restarted = (
                reading.uptime_s is not None
                and before.uptime_s is not None
                and reading.uptime_s < before.uptime_s
            )
            if (went_away or restarted) and status in ("", "idle"):
                return Outcome(
                    "failed", f"came back on {reading.firmware}, not {version}", reading.firmware
                )
        return Outcome("timed_out", f"not on {version} within {timeout:.0f} s")

    async def _snmp_set(self, target: Target, oid: str, value: str) -> str | None:
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

        if self._snmp is None:
            self._snmp = SnmpEngine()
        settings = target.profile.snmp
        mp_model = 0 if settings is not None and settings.version == "1" else 1
        transport = await UdpTransportTarget.create(
            (target.host, target.port), timeout=3, retries=2
        )
        error, status, _index, _binds = await set_cmd(
            self._snmp,
            CommunityData(target.community, mpModel=mp_model),
            transport,
            ContextData(),
            ObjectType(ObjectIdentity(oid), OctetString(value)),
        )
        if error:
            return str(error)
        if status:
            return status.prettyPrint()
        return None

    async def _report(
        self, command: Command, device: str, state: str, message: str, firmware: str | None = None
    ) -> None:
        event = AgentEvent(
            kind=EventKind.update_progress,
            site=self.site,
            agent_id=self.agent_id,
            ts=utcnow(),
            device=device,
            message=_text(message),
            data={
                "cmd_id": command.cmd_id,
                "rollout_id": command.args.get("rollout_id"),
                "state": state,
                "firmware": _text(firmware, 64) if firmware is not None else None,
                "downloaded_bytes": self.cache.received_bytes,
            },
        )
        log.info("update %s %s: %s (%s)", command.cmd_id, device, state, message)
        await self._send(
            self.topics.events(self.site),
            event.to_json(),
            final=state not in ("downloading", "installing"),
        )

    async def _send(self, topic: str, payload: bytes, final: bool) -> None:
        """Progress is best effort; a result is tried for a while (the controller's device
        timeout and retry cover what is still lost)."""
        last: Exception | None = None
        for _ in range(60 if final else 1):
            try:
                await self.publish(topic, payload)
                return
            except Exception as exc:
                last = exc
            await asyncio.sleep(2)
        log.warning(
            "could not report on %s (%s); the controller will time the device out",
            topic,
            last or "no PUBACK in time",
        )


def _text(value: str, limit: int = 2000) -> str:
    """Text for an event or ack: what a device or an exception said may hold control
    characters, which the contract refuses (fleet/protocol/messages.py)."""
    return clean_text(value, limit)[0]
