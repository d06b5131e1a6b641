"""Power and input over PJLink (class 1 `POWR 1`/`POWR 0`, `INPT <type><number>`), one
connection per command as for polls. The projector's own answer comes back as it is: `OK`,
or ERR2 (no such input), ERR3 (busy: warming up or cooling down), ERR4 (projector failure).
"""

from __future__ import annotations

import asyncio

from agent.collectors import Target
from agent.collectors.control import ControlAnswer, register_control
from agent.collectors.pjlink import (
    ERROR_MEANING,
    INPUT_TYPES,
    PjlinkError,
    pjlink_session,
)

# Reading names the input types are also known by: `hdmi1` and `dvi1` are digital inputs.
_ALIASES = {"hdmi": "3", "dvi": "3", "dp": "3", "vga": "1", "usb": "4", "lan": "5"}
_TYPE_OF = {name: digit for digit, name in INPUT_TYPES.items()} | _ALIASES


def input_code(name: str) -> str | None:
    """`hdmi2` -> `32`, `digital1` -> `31`: PJLink's type digit and the input's number
    (one character, 1-9 or A-Z); None for a name PJLink cannot express."""
    kind = name.rstrip("0123456789")
    number = name[len(kind) :] or "1"
    digit = _TYPE_OF.get(kind.lower())
    if digit is None or len(number) != 1 or number == "0":
        return None
    return digit + number


async def _set(target: Target, command: str, param: str) -> ControlAnswer:
    timeout = target.profile.poll.timeout_s
    try:
        async with asyncio.timeout(timeout * 2 + 1):
            async with pjlink_session(
                target.host, target.port, target.device.password, timeout
            ) as session:
                answer = await session.set(command, param)
    except (PjlinkError, OSError, TimeoutError) as exc:
        return ControlAnswer(False, f"{command} {param}: no answer from {target.where} ({exc})")
    if answer.ok:
        return ControlAnswer(True, f"{command} {param}: {answer.value or 'OK'}")
    meaning = ERROR_MEANING.get(answer.error or "", "")
    return ControlAnswer(False, f"{command} {param}: {answer.error} ({meaning})")


class PjlinkControl:
    """The `Control` of `pjlink` projectors: class 1 POWR and INPT, one connection per command."""

    async def set_power(self, target: Target, on: bool) -> ControlAnswer:
        """`POWR 1` (on) or `POWR 0` (standby); the answer carries the projector's OK or ERRn."""
        return await _set(target, "POWR", "1" if on else "0")

    async def set_input(self, target: Target, name: str) -> ControlAnswer:
        """`INPT` with the code of `name` (see input_code); a name PJLink cannot express is not
        sent."""
        code = input_code(name)
        if code is None:
            return ControlAnswer(False, f"input {name!r} has no PJLink code: not sent")
        return await _set(target, "INPT", code)


register_control("pjlink", PjlinkControl)
