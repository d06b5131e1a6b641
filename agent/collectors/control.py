"""Switching devices: the small interface a protocol module implements to set a device's
power or input, registered by the profile's `protocol` like the collectors.

A protocol's module `agent/collectors/<protocol>_control.py` registers a `Control`
(`register_control("pjlink", PjlinkControl)`) and is imported on first use; a new protocol
(MAXHUB's LAN control, say) plugs in with one such file and nothing else changes. The
agent's `power` and `input` commands (agent/device_control.py) look it up by the device's
profile and know nothing of the protocol. A set never raises for device trouble: it returns
a ControlAnswer with the device's own words (PJLink's `ERR3`, SNMP's `notWritable`), which
the controller shows with the command.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.collectors import Target


@dataclass(frozen=True)
class ControlAnswer:
    """`ok`: the device took it; `answer`: what it said, in its protocol's words and ours."""

    ok: bool
    answer: str


class Control(Protocol):
    """What a protocol module implements to set a device's power or input."""

    async def set_power(self, target: Target, on: bool) -> ControlAnswer:
        """Switch the device on (`on`) or to standby."""
        ...

    async def set_input(self, target: Target, name: str) -> ControlAnswer:
        """Select the input a reading names `name` (`hdmi1`, `digital1`)."""
        ...


_CONTROLS: dict[str, Callable[[], Control]] = {}
_PROTOCOL = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def register_control(protocol: str, factory: Callable[[], Control]) -> None:
    """Make `factory` give the Control for profiles whose `protocol` is `protocol`; a
    `<protocol>_control` module calls this on import."""
    _CONTROLS[protocol] = factory


def control_for(protocol: str) -> Control | None:
    """The Control of `protocol`, or None when the agent cannot switch such devices."""
    if protocol not in _CONTROLS and _PROTOCOL.match(protocol):
        # `maxhub-lan` is agent/collectors/maxhub_lan_control.py: a module name has no '-'.
        module = f"agent.collectors.{protocol.replace('-', '_')}_control"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise  # the module exists but something it imports does not
    factory = _CONTROLS.get(protocol)
    return factory() if factory is not None else None
