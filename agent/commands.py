"""Every command the agent receives, in one place: checked, remembered on disk, held until the
controller's latest word allows it, then carried out by its kind's handler.

- Checked: the command and its kind's args (fleet.protocol.commands) before anything in
  them reaches a handler; a bad one is refused with the reason (an ack with ok false).
- Remembered: a journal on disk (`commands-<site>.json`) keeps each command until it is
  done, and the ids of done ones, so a command the broker delivers again is not run again
  and one that an agent restart interrupted carries on.
- Held: a command that acts on devices starts only once the agent holds a *current* word
  from the controller (a `cancel` command, published retained) issued after the command,
  which does not revoke its campaign or id, and by whose clock the command has not expired.
  Current means received after the broker acknowledged this connection's subscription: the
  retained word the broker hands over then, or a later one. Words the broker had queued for
  the agent while it was away may be old: their revocations count (a revocation is never
  taken back) but they start nothing. The agent's own wall clock is never used.
- Cancelled: a word that revokes a campaign drops every command of it not yet started, and
  the handler of a started one asks `still_wanted()` before each step that cannot be undone
  (the firmware push to a device); the devices dropped are reported `cancelled`.
- One stream per device: a command for a device that is still in another campaign's active
  command is refused, naming it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError

from agent.collectors.cleaning import clean_text
from fleet.protocol.commands import CancelArgs, args_of
from fleet.protocol.messages import (
    AgentEvent,
    Command,
    CommandAck,
    CommandKind,
    EventKind,
    Topics,
    describe_validation_error,
    utcnow,
)

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]
DONE_KEPT = 2000  # finished command ids remembered, so a redelivered command is not re-run
REVOKED_KEPT = 1000
# Kinds that change a device: held for the controller's word before they start.
GATED = frozenset({CommandKind.firmware_update, CommandKind.power, CommandKind.input})


@dataclass(frozen=True)
class Result:
    """How a command ended: `ok` for the ack, `message` in words a technician can act on."""

    ok: bool
    message: str


StillWanted = Callable[[], str | None]


class Handler(Protocol):
    """Carries out one kind of command. `still_wanted()` gives the reason to stop (the
    command was revoked or expired) or None; a handler asks it before each step it cannot
    undo and reports the devices it then leaves alone as `cancelled`."""

    async def carry_out(
        self, command: Command, args: BaseModel, still_wanted: StillWanted
    ) -> Result:
        """Carry out `command`, whose `args` are already checked against its kind, and say how it
        ended; the Result becomes the command's ack."""
        ...


@dataclass
class Word:
    """The controller's latest current word: when it was issued (its clock), when this agent
    received it (the event loop's monotonic clock)."""

    issued_at: datetime
    received_mono: float


class CommandInbox:
    """The site's commands from receipt to ack: checked, journalled on disk, held for the
    controller's current word, carried out by their kind's Handler, acknowledged on the cmd/ack
    topic."""

    def __init__(
        self,
        site: str,
        agent_id: str,
        publish: Publish,
        topics: Topics,
        data_dir: Path,
        handlers: dict[CommandKind, Handler],
    ) -> None:
        """The inbox of site code `site`. `publish(topic, payload)` sends acks and events; the
        journal is `data_dir/commands-<site>.json`, read by `load`; `handlers` carry out each kind
        of command."""
        self.site = site
        self.agent_id = agent_id
        self.publish = publish
        self.topics = topics
        self.handlers = handlers
        self.journal_path = data_dir / f"commands-{site}.json"
        self._journal: dict[str, Any] = {
            "active": {},
            "done": [],
            "revoked": {"campaigns": [], "cmd_ids": []},
        }
        self._word: Word | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.refused = 0  # commands refused as malformed

    # --- lifecycle ----------------------------------------------------------------------

    def load(self) -> None:
        """Read the journal, and carry on the commands a restart interrupted (started ones
        at once; held ones wait for the controller's word again)."""
        data_dir = self.journal_path.parent
        data_dir.mkdir(parents=True, exist_ok=True)
        if self.journal_path.exists():
            try:
                loaded = json.loads(self.journal_path.read_text())
                self._journal.update({k: loaded[k] for k in ("active", "done") if k in loaded})
                self._journal["revoked"].update(loaded.get("revoked") or {})
            except (OSError, ValueError, TypeError, AttributeError):
                log.warning("command journal %s unreadable; starting afresh", self.journal_path)
        for cmd_id, entry in list(self._journal["active"].items()):
            try:
                command = Command.model_validate(entry["command"])
            except (ValidationError, KeyError, TypeError):
                log.warning("journal entry %s is not a command; dropped", cmd_id)
                self._journal["active"].pop(cmd_id, None)
                continue
            if entry.get("started"):
                log.info("resuming command %s after a restart", cmd_id)
                self._spawn(command)

    async def close(self) -> None:
        """Cancel the commands running; the journal keeps them, and `load` resumes the started ones
        at the next start."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def on_connected(self) -> None:
        """A new connection: until the broker acknowledges the subscription again, no word
        received is known to be the latest."""
        self._word = None

    # --- receiving ----------------------------------------------------------------------

    def on_message(self, payload: bytes, current: bool) -> None:
        """One message on the site's cmd topic. `current`: it came after the broker
        acknowledged this connection's subscription (not from the queue held while away)."""
        try:
            command = Command.model_validate_json(payload)
        except ValidationError as exc:
            self.refused += 1
            log.warning("ignored a command that is not one: %s", describe_validation_error(exc))
            return
        if command.site != self.site:
            log.warning("ignored command %s for site %s", command.cmd_id, command.site)
            return
        try:
            args = args_of(command)
        except KeyError:
            args = None
        except ValidationError as exc:
            self.refused += 1
            self._finish(command, Result(False, f"refused: {describe_validation_error(exc)}"))
            return
        if command.kind == CommandKind.cancel:
            assert isinstance(args, CancelArgs)
            self._take_word(command, args, current)
            return
        if self._known(command.cmd_id):
            return  # redelivered (QoS 1, a persistent session): already in hand
        if command.kind not in self.handlers:
            self._finish(
                command,
                Result(False, f"this agent does not carry out {command.kind.value} commands"),
            )
            return
        busy = self._busy_with_other(command)
        if busy:
            self._finish(command, Result(False, busy))
            return
        self._journal["active"][command.cmd_id] = {
            "command": command.model_dump(mode="json"),
            "started": False,
        }
        self._save()
        self._consider()

    def _take_word(self, command: Command, args: CancelArgs, current: bool) -> None:
        revoked = self._journal["revoked"]
        revoked["campaigns"] = _merged(revoked["campaigns"], args.campaigns)
        revoked["cmd_ids"] = _merged(revoked["cmd_ids"], args.cmd_ids)
        if current and (self._word is None or command.issued_at >= self._word.issued_at):
            self._word = Word(command.issued_at, asyncio.get_running_loop().time())
        self._save()
        self._consider()

    def _known(self, cmd_id: str) -> bool:
        return cmd_id in self._journal["active"] or cmd_id in self._journal["done"]

    def _busy_with_other(self, command: Command) -> str | None:
        if command.kind not in GATED:
            return None
        for cmd_id, entry in self._journal["active"].items():
            other = entry["command"]
            if other.get("kind") not in {k.value for k in GATED}:
                continue
            if other.get("campaign") == command.campaign and command.campaign is not None:
                continue
            shared = sorted(set(other.get("devices") or []) & set(command.devices))
            if shared:
                return (
                    f"refused: {', '.join(shared)} already in command {cmd_id} of "
                    f"{other.get('campaign') or 'no campaign'}; one command stream per device"
                )
        return None

    # --- the gate -----------------------------------------------------------------------

    def controller_now(self) -> datetime | None:
        """The controller's clock as the latest current word tells it, or None."""
        if self._word is None:
            return None
        elapsed = asyncio.get_running_loop().time() - self._word.received_mono
        return self._word.issued_at + timedelta(seconds=max(elapsed, 0.0))

    def why_not(self, command: Command) -> str | None:
        """Why `command` must not start (revoked, expired), or None."""
        revoked = self._journal["revoked"]
        if command.cmd_id in revoked["cmd_ids"]:
            return f"cancelled: the controller revoked command {command.cmd_id}"
        if command.campaign is not None and command.campaign in revoked["campaigns"]:
            return f"cancelled: the controller cancelled {command.campaign}"
        now = self.controller_now()
        expires = command.expires_at
        if expires is None:
            timeout = command.args.get("timeout_s")
            if isinstance(timeout, int | float) and not isinstance(timeout, bool):
                expires = command.issued_at + timedelta(seconds=min(float(timeout), 30 * 86400))
        if now is not None and expires is not None and now > expires:
            return (
                f"expired: the controller's clock says {now.isoformat(timespec='seconds')}, "
                f"past {expires.isoformat(timespec='seconds')}; the controller sends a new "
                "command if it still wants this"
            )
        return None

    def _consider(self) -> None:
        """Start, drop or keep waiting each command not yet started."""
        for cmd_id, entry in list(self._journal["active"].items()):
            if entry.get("started"):
                continue
            command = Command.model_validate(entry["command"])
            why = self.why_not(command)
            if why is not None:
                log.warning("command %s not carried out: %s", cmd_id, why)
                self._journal["active"].pop(cmd_id, None)
                self._drop(command, why)
                continue
            if command.kind in GATED and (
                self._word is None or self._word.issued_at <= command.issued_at
            ):
                continue  # no word from the controller since it sent this one
            entry["started"] = True
            self._save()
            self._spawn(command)

    def _drop(self, command: Command, why: str) -> None:
        state = stopped_state(why)

        async def report() -> None:
            if command.kind == CommandKind.firmware_update:
                for device in command.devices:
                    await self.report(command, device, state, why)
            await self._ack(command, Result(False, why))

        self._journal["done"].append(command.cmd_id)
        self._save()
        self._background(report(), f"{command.cmd_id}-{state}")

    # --- carrying out -------------------------------------------------------------------

    def _spawn(self, command: Command) -> None:
        self._background(self._run(command), command.cmd_id)

    def _background(self, work: Awaitable[None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(_awaited(work), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, command: Command) -> None:
        handler = self.handlers[command.kind]
        args = args_of(command)
        try:
            result = await handler.carry_out(command, args, lambda: self.why_not(command))
        except asyncio.CancelledError:
            raise  # the agent is stopping: the journal keeps the command for next start
        except Exception as exc:  # one command's trouble must not stop the agent
            log.exception("command %s failed unexpectedly", command.cmd_id)
            result = Result(False, f"agent error: {exc}")
        await self._ack(command, result)
        self._journal["active"].pop(command.cmd_id, None)
        self._journal["done"].append(command.cmd_id)
        self._save()

    def _finish(self, command: Command, result: Result) -> None:
        log.warning("command %s: %s", command.cmd_id, result.message)
        self._journal["done"].append(command.cmd_id)
        self._save()
        self._background(self._ack(command, result), f"{command.cmd_id}-ack")

    async def _ack(self, command: Command, result: Result) -> None:
        ack = CommandAck(
            cmd_id=command.cmd_id,
            site=self.site,
            agent_id=self.agent_id,
            ok=result.ok,
            ts=utcnow(),
            message=_text(result.message),
        )
        await self.send(self.topics.cmd_ack(self.site), ack.to_json(), final=True)

    async def report(
        self,
        command: Command,
        device: str,
        state: str,
        message: str,
        firmware: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """An update_progress event for one device of `command`."""
        event = AgentEvent(
            kind=EventKind.update_progress,
            site=self.site,
            agent_id=self.agent_id,
            ts=utcnow(),
            device=device,
            message=_text(message),
            data={
                "cmd_id": command.cmd_id,
                "campaign": command.campaign,
                "rollout_id": command.args.get("rollout_id"),
                "state": state,
                "firmware": _text(firmware, 64) if firmware is not None else None,
                **(extra or {}),
            },
        )
        log.info("command %s %s: %s (%s)", command.cmd_id, device, state, message)
        await self.send(
            self.topics.events(self.site),
            event.to_json(),
            final=state not in ("downloading", "installing"),
        )

    async def send(self, topic: str, payload: bytes, final: bool) -> None:
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

    def _save(self) -> None:
        self._journal["done"] = self._journal["done"][-DONE_KEPT:]
        # On disk before it replaces the journal, and the rename itself on disk: a power cut
        # (routine at these sites) must leave the old journal or the new, never an empty one.
        tmp = self.journal_path.with_suffix(".tmp")
        with tmp.open("w") as out:
            out.write(json.dumps(self._journal))
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.journal_path)
        directory = os.open(self.journal_path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


class PollNow:
    """The `poll_now` handler: read the command's devices (all the site's when it lists
    none) at once, their readings going the usual way (outbox, then the broker) but in the
    next batch sent, without the linger (`emit` sees to that)."""

    def __init__(self, poller: Any, targets: list[Any], emit: Callable[[Any], None]) -> None:
        """`poller` reads one Target (its `poll`); `targets` are the site's devices; `emit` takes
        each reading for the next batch."""
        self.poller = poller
        self.targets = {t.device.id: t for t in targets}
        self.emit = emit

    async def carry_out(
        self, command: Command, args: BaseModel, still_wanted: StillWanted
    ) -> Result:
        """Poll the devices the command lists (all the site's when none) at once; ok only if every
        device listed is in this agent's site config."""
        wanted = command.devices or list(self.targets)
        unknown = [d for d in wanted if d not in self.targets]
        found = [self.targets[d] for d in wanted if d in self.targets]
        readings = await asyncio.gather(*(self.poller.poll(t) for t in found))
        for reading in readings:
            self.emit(reading)
        message = f"polled {len(readings)} devices"
        if unknown:
            message += f"; not in this agent's site config: {', '.join(unknown[:20])}"
        return Result(not unknown, message)


def stopped_state(why: str) -> str:
    """The state a device left alone is reported in, from `why_not`'s reason: `cancelled`
    (revoked by the controller) or `expired`."""
    return "cancelled" if why.startswith("cancelled") else "expired"


async def _awaited(work: Awaitable[None]) -> None:
    await work


def _merged(kept: list[str], new: list[str]) -> list[str]:
    out = list(kept)
    seen = set(out)
    for item in new:
        if item not in seen:
            out.append(item)
            seen.add(item)
    return out[-REVOKED_KEPT:]


def _text(value: str, limit: int = 2000) -> str:
    """Text for an event or ack: what a device or an exception said may hold control
    characters, which the contract refuses (fleet/protocol/messages.py)."""
    return clean_text(value, limit)[0]
