"""The agent's command path as the tests drive it: the inbox (agent/commands.py) with the
firmware updater as its handler, fed a command and then the controller's next word, as the
rollout tick sends them."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from agent.commands import CommandInbox
from agent.updater import UpdateOptions, Updater
from fleet.protocol.commands import CancelArgs
from fleet.protocol.messages import Command, CommandKind, Topics


def word(site: str, issued_at: datetime, campaigns: list[str] | None = None) -> bytes:
    """The controller's word (a retained `cancel` listing what it revoked) at `issued_at`."""
    return Command(
        cmd_id=f"word-{site}-{int(issued_at.timestamp() * 1000)}",
        kind=CommandKind.cancel,
        site=site,
        issued_at=issued_at,
        args=CancelArgs(campaigns=campaigns or []).model_dump(),
    ).to_json()


class CommandPath:
    """Mix-in for a test's agent: `self.publish(topic, payload)` keeps what is sent."""

    inbox: CommandInbox
    updater: Updater

    def build(self, site: str, data_dir: Path, targets: list[Any], options: UpdateOptions) -> None:
        self.site = site
        options.site = site
        self.inbox = CommandInbox(site, f"{site}-agent-1", self.publish, Topics(), data_dir, {})
        self.updater = Updater(targets, self.inbox.report, options)
        self.inbox.handlers[CommandKind.firmware_update] = self.updater

    async def publish(self, topic: str, payload: bytes) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        await self.updater.start()
        self.inbox.load()

    async def close(self) -> None:
        await self.inbox.close()
        await self.updater.close()

    def deliver(self, payload: bytes) -> None:
        """The command, then the controller's next word (which confirms it)."""
        self.inbox.on_message(payload, True)
        issued = Command.model_validate_json(payload).issued_at
        self.inbox.on_message(word(self.site, issued + timedelta(milliseconds=1)), True)
