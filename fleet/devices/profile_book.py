"""The firmware profiles the controller judges devices by (poll interval, thresholds, minimum
firmware), read from the profiles folder and read again only when a file there changes."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from fleet.protocol.errors import ConfigErrors
from fleet.protocol.profiles import PollSettings, Profile, load_profiles

log = logging.getLogger(__name__)
_lock = threading.Lock()
_cache: dict[Path, tuple[tuple[tuple[str, int], ...], dict[str, Profile]]] = {}


def profiles_in(directory: Path) -> dict[str, Profile]:
    """Profiles by id. A file changed into one that does not validate leaves the last good
    profiles in force (logged with the reasons), so that a typo in one profile does not fail
    every command, rollout and report; with none read before, raises
    fleet.protocol.errors.ConfigErrors."""
    directory = directory.resolve()
    stamp = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in directory.glob("*.yaml")))
    with _lock:
        cached = _cache.get(directory)
        if cached is not None and cached[0] == stamp:
            return cached[1]
    try:
        profiles = load_profiles(directory)
    except ConfigErrors as exc:
        if cached is None:
            raise
        log.error(
            "profiles in %s do not validate; the last good ones stay in force: %s", directory, exc
        )
        with _lock:
            _cache[directory] = (stamp, cached[1])  # said once, not at every call
        return cached[1]
    with _lock:
        _cache[directory] = (stamp, profiles)
    return profiles


def poll_interval_s(profiles: dict[str, Profile], profile_id: str) -> float:
    """The poll interval, in seconds, of the profile `profile_id`; the default poll's when that
    profile is not among `profiles`."""
    profile = profiles.get(profile_id)
    # A profile gone from the folder: judge its devices by the default poll, not not at all.
    return profile.poll.interval_s if profile is not None else PollSettings().interval_s


def vendors_in(directory: Path) -> set[str]:
    """The vendors the profiles name, as they spell them; none when the profiles do not
    validate (`fleet serve` says why), so that the registry's vendors still stand."""
    try:
        return {p.vendor for p in profiles_in(directory).values()}
    except ConfigErrors:
        return set()
