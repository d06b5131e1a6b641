"""Firmware updates on the site: a `firmware_update` command in, the device on the new
version (or the reason it is not) out. The handler of that kind in agent/commands.py, which
keeps the journal, the dedupe and the controller's word.

For each device: check where the artifact would come from (the controller, or the host the
device's profile declares for the release), read the device first (unreachable: deferred; in
use: skipped; already there: succeeded), fetch the artifact through the site cache (one
download per site, resumable, SHA-256 checked), ask whether the controller still wants it
(cancelled if not), hand the device the cache's local URL through the profile's method, then
read it until it reports the target version. Success is only ever what the device reports.
"""

from __future__ import annotations

import asyncio
import logging
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from agent.artifact_cache import ArtifactCache, ArtifactMismatch, LocalArtifactServer
from agent.collectors import Collectors, Target
from agent.commands import Result, StillWanted, stopped_state
from fleet.protocol.commands import FirmwareArgs
from fleet.protocol.messages import Command, Reading

log = logging.getLogger(__name__)

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass
class UpdateOptions:
    """How this agent carries out firmware updates: its data directory, the address its artifact
    server listens on for the site's devices, the download cap in bytes per second, how often a
    device is read while it installs, and the hosts the controller's artifact endpoint may be
    fetched from."""

    data_dir: Path
    # Where the site's devices reach this agent for artifacts.
    serve_host: str = "127.0.0.1"
    serve_port: int = 0
    download_bytes_per_s: float | None = None
    read_every_s: float = 2.0
    site: str = ""
    # Hosts the controller's artifact endpoint is fetched from (lowercase).
    controller_hosts: frozenset[str] = field(default_factory=lambda: LOOPBACK)

    @classmethod
    def from_env(cls, data_dir: Path, site: str, broker_host: str) -> UpdateOptions:
        """FLEET_AGENT_ARTIFACT_HOST: the address the site's devices reach this computer at
        (loopback serves simulated devices only); FLEET_AGENT_DOWNLOAD_BYTES_PER_S: a cap
        for metered links; FLEET_AGENT_CONTROLLER_URL: the controller as this agent reaches
        it, the only host its artifact endpoint is fetched from (default: the broker's)."""
        rate = os.environ.get("FLEET_AGENT_DOWNLOAD_BYTES_PER_S")
        controller = os.environ.get("FLEET_AGENT_CONTROLLER_URL")
        host = urllib.parse.urlsplit(controller).hostname if controller else broker_host
        return cls(
            data_dir=data_dir,
            serve_host=os.environ.get("FLEET_AGENT_ARTIFACT_HOST", "127.0.0.1"),
            download_bytes_per_s=float(rate) if rate else None,
            read_every_s=float(os.environ.get("FLEET_AGENT_UPDATE_READ_S", "2")),
            site=site,
            controller_hosts=frozenset({(host or "").lower()}),
        )


@dataclass(frozen=True)
class Outcome:
    """How one device's update ended: its state, what happened, and the firmware it reports when
    known."""

    state: str  # a fleet.rollouts DeviceUpdateState value
    message: str
    firmware: str | None = None


class Report(Protocol):
    """Reports one device's update progress to the controller (CommandInbox.report)."""

    async def __call__(
        self,
        command: Command,
        device: str,
        state: str,
        message: str,
        firmware: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """An update_progress event for `device` of `command`: its `state`, `message`, the firmware
        it reports, and any `extra` data."""
        ...


class Updater:
    """The `firmware_update` handler of the agent's commands (agent/commands.py)."""

    def __init__(self, targets: list[Target], report: Report, options: UpdateOptions) -> None:
        """Update the site's `targets`, sending progress through `report`; artifacts are kept under
        `options.data_dir/artifacts` and served from `options.serve_host`."""
        self.targets = {t.device.id: t for t in targets}
        self.report_to = report
        self.options = options
        self.cache = ArtifactCache(
            options.data_dir / "artifacts", options.site, options.download_bytes_per_s
        )
        self.server = LocalArtifactServer(self.cache, options.serve_host, options.serve_port)
        self.collectors = Collectors()
        self._snmp: Any = None

    async def start(self) -> None:
        """Start the local server the site's devices download artifacts from."""
        await self.server.start()

    async def close(self) -> None:
        """Stop a running download (the next one resumes it), the artifact server and the
        collectors."""
        self.cache.stop()
        await self.server.close()
        await self.collectors.close()
        if self._snmp is not None:
            self._snmp.close_dispatcher()

    async def carry_out(
        self, command: Command, args: BaseModel, still_wanted: StillWanted
    ) -> Result:
        """Update each device of `command` in turn; each one's outcome is reported as it
        ends. Devices not yet pushed when `still_wanted()` says stop are `cancelled`."""
        assert isinstance(args, FirmwareArgs)
        outcomes = []
        for device in command.devices:
            try:
                outcome = await self._update(command, args, device, still_wanted)
            except asyncio.CancelledError:
                raise  # the agent is stopping: the journal keeps the command for next start
            except Exception as exc:  # one device's trouble must not kill the agent
                log.exception("update of %s failed unexpectedly", device)
                outcome = Outcome("failed", f"agent error: {exc}")
            outcomes.append(outcome)
            await self._report(command, device, outcome.state, outcome.message, outcome.firmware)
        ok = all(o.state == "succeeded" for o in outcomes)
        return Result(
            ok, "; ".join(f"{d}: {o.state}" for d, o in zip(command.devices, outcomes, strict=True))
        )

    async def _update(
        self, command: Command, args: FirmwareArgs, device_id: str, still_wanted: StillWanted
    ) -> Outcome:
        version, sha256, size = args.version, args.sha256, args.size
        target = self.targets.get(device_id)
        if target is None:
            return Outcome("failed", f"{device_id} is not in this agent's site config")
        update = target.profile.update
        problem = target.profile.agent_push_problem()
        if problem or update.snmp_url_oid is None:
            return Outcome("failed", problem or f"{target.profile.id}: no way to push")
        problem = self.source_problem(target, args)
        if problem:
            return Outcome("failed", problem)
        why = still_wanted()
        if why:
            return Outcome(stopped_state(why), why)
        reading = await self.collectors.poll(target)
        if not reading.reachable:
            return Outcome("deferred", f"unreachable before the update: {reading.error}")
        if reading.firmware == version:
            return Outcome("succeeded", f"already on {version}", version)
        if reading.power.value == "on" and reading.input:
            return Outcome("skipped", f"in use (on, input {reading.input}): not interrupted")
        await self._report(command, device_id, "downloading", f"fetching {sha256[:12]}")
        try:
            await self.cache.fetch(args.url, sha256, size)
        except ArtifactMismatch as exc:
            return Outcome("failed", str(exc))
        except OSError as exc:
            return Outcome("deferred", f"cannot download the artifact yet ({exc})")
        # The push cannot be taken back: the controller's latest word is asked once more.
        why = still_wanted()
        if why:
            return Outcome(stopped_state(why), why)
        await self._report(command, device_id, "installing", f"pushing {version}")
        local_url = self.server.url(sha256)
        problem = await self._snmp_set(target, update.snmp_url_oid, local_url)
        if problem:
            return Outcome("failed", f"the device refused the update: {problem}")
        timeout = min(args.timeout_s, update.install_timeout_s)
        return await self._confirm(target, version, reading, timeout)

    def source_problem(self, target: Target, args: FirmwareArgs) -> str | None:
        """Why the artifact must not be fetched from `args.url`, or None. Only two sources
        are taken: the controller's artifact endpoint for exactly this SHA-256 (on a host
        this agent knows as its controller's), or the URL the device's own profile declares
        for the release with this SHA-256 (its host: a vendor's signed links vary the path)."""
        parts = urllib.parse.urlsplit(args.url)
        host = (parts.hostname or "").lower()
        if parts.scheme not in ("http", "https") or not host:
            return f"artifact URL {args.url!r} is not http(s): not downloaded"
        if parts.username or parts.password:
            return f"artifact URL {args.url!r} carries credentials: not downloaded"
        declared = next(
            (r for r in target.profile.releases if r.sha256 == args.sha256 and r.url), None
        )
        if declared is not None and declared.url is not None:
            own = urllib.parse.urlsplit(declared.url)
            if (own.hostname or "").lower() == host:
                return None
        if (
            host in self.options.controller_hosts
            and parts.path == f"/api/v1/firmware/artifacts/{args.sha256}"
        ):
            return None
        allowed = sorted(self.options.controller_hosts)
        return (
            f"artifact URL {args.url!r} is neither the controller's artifact endpoint for "
            f"{args.sha256[:12]} (on {', '.join(allowed)}) nor the URL that profile "
            f"{target.profile.id} declares for this release: not downloaded. Set "
            "FLEET_AGENT_CONTROLLER_URL to the controller's address if it moved"
        )

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
        await self.report_to(
            command,
            device,
            state,
            message,
            firmware,
            {"downloaded_bytes": self.cache.received_bytes},
        )
