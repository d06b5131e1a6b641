"""A simulated device taking a firmware update: fetch the artifact from the site agent's
local URL, check it, reboot (stop answering), come back on the new version.

A share of updates fails (the profile's simulation.update_failure_share), each in one of the
ways real ones do: the image is refused (checksum), the device does not come back for a long
while and then rolls back, or it comes back on the old version without a word.
"""

from __future__ import annotations

import asyncio
import hashlib
import urllib.request
from typing import TYPE_CHECKING

from agent.simulator.firmware_image import read_header

if TYPE_CHECKING:
    from agent.simulator.snmp_responder import DeviceResponder

FAILURES = ("checksum", "no_return", "old_version")
NO_RETURN_FACTOR = 30  # a device that hangs stays away this many reboot times


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310  (simulator: loopback)
        data: bytes = response.read()
    return data


async def take_update(responder: DeviceResponder, url: str) -> None:
    """Take a firmware update as the device would: fetch `url`, check the image's SHA-256 (the URL's
    last path segment) and model, reboot, then come back on the new version or fail as drawn. The
    device reports the outcome in its `update_status` and firmware."""
    behaviour = responder.behaviour
    hints = behaviour.profile.simulation
    outcome = "ok"
    if behaviour.rng.random() < hints.update_failure_share:
        outcome = behaviour.rng.choice(FAILURES)
    behaviour.update_status = "downloading"
    try:
        data = await asyncio.to_thread(_fetch, url)
    except OSError as exc:
        behaviour.update_status = f"failed: cannot fetch the image ({exc})"
        return
    expected = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    if outcome == "checksum" or hashlib.sha256(data).hexdigest() != expected:
        behaviour.update_status = "failed: checksum mismatch, image refused"
        return
    header = read_header(data)
    if header is None or header[0] != behaviour.profile.id:
        behaviour.update_status = "failed: not an image for this model"
        return
    behaviour.update_status = "installing"
    responder.alive = False  # rebooting
    try:
        reboot = hints.update_reboot_s
        await asyncio.sleep(reboot * (NO_RETURN_FACTOR if outcome == "no_return" else 1))
        if outcome == "ok":
            behaviour.firmware = header[1]
        behaviour.booted_at = behaviour.clock()
        behaviour.update_status = "idle"
    finally:
        responder.alive = True
