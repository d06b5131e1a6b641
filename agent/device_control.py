"""The `power` and `input` commands' handler (agent/commands.py): each device of the
command is switched through its protocol's Control (agent/collectors/control.py), then read
again, and its answer goes back with the command's ack."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from agent.collectors import Target
from agent.collectors.control import ControlAnswer, control_for
from agent.commands import Result, StillWanted
from fleet.protocol.commands import InputArgs, PowerArgs
from fleet.protocol.messages import Command, Reading


class DeviceControl:
    """The `power` and `input` commands' Handler: switches each device of the command through its
    protocol's Control, then reads it again."""

    def __init__(
        self,
        targets: list[Target],
        poll: Callable[[Target], Any],
        emit: Callable[[Reading], None],
    ) -> None:
        """`targets`: the site's devices; `poll` reads one Target; `emit` sends that reading on its
        way to the controller."""
        self.targets = {t.device.id: t for t in targets}
        self.poll = poll
        self.emit = emit

    async def carry_out(
        self, command: Command, args: BaseModel, still_wanted: StillWanted
    ) -> Result:
        """Switch each device the command lists, one after the other; once `still_wanted()` gives a
        reason, the rest are left alone with it. Ok only if every device took it; the message gives
        each device's answer."""
        answers = []
        for device in command.devices:
            why = still_wanted()
            if why:
                answers.append((device, ControlAnswer(False, why)))
                continue
            answers.append((device, await self._one(device, args)))
        ok = all(a.ok for _, a in answers)
        return Result(ok, "; ".join(f"{d}: {a.answer}" for d, a in answers))

    async def _one(self, device: str, args: BaseModel) -> ControlAnswer:
        target = self.targets.get(device)
        if target is None:
            return ControlAnswer(False, f"{device} is not in this agent's site config")
        control = control_for(target.profile.protocol)
        if control is None:
            return ControlAnswer(
                False, f"the agent cannot switch {target.profile.protocol} devices: not sent"
            )
        if isinstance(args, PowerArgs):
            answer = await control.set_power(target, args.power == "on")
        else:
            assert isinstance(args, InputArgs)
            answer = await control.set_input(target, args.input)
        if answer.ok:
            # Read it at once: the next reading is what confirms the command.
            await asyncio.sleep(0.2)
            reading = await self.poll(target)
            self.emit(reading)
        return answer
