"""Site configs: a site's identity, timezone, timetable, rooms and devices.

One YAML per site under `site_configs/`, validated on load against the firmware profiles.
Errors name the file, the key and the fix (`fleet.protocol.errors.ConfigError`), never a traceback.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import Field, ValidationError, field_validator

from fleet.protocol.documents import Strict, TextEncoding, read_yaml
from fleet.protocol.errors import ConfigError, ConfigErrors, config_errors_from_validation
from fleet.protocol.messages import (
    DEVICE_ID_PATTERN,
    MAX_BATCH_BYTES,
    MAX_READINGS_PER_BATCH,
    SITE_CODE_PATTERN,
)
from fleet.protocol.profiles import Profile, load_profiles
from fleet.protocol.snmpv3 import SnmpV3Settings
from fleet.protocol.timetable import Timetable
from fleet.protocol.zones import UnknownZone, zone_named

# A site's phases are numbered from 1; a programme has a handful. The bound keeps a number
# inside the column (a 32-bit integer on PostgreSQL) and the API path that names it.
MAX_PHASE_NUMBER = 999
INT32_MAX = 2**31 - 1

# fleet/protocol/ -> the folder holding fleet/, firmware_profiles/ and site_configs/: a source
# checkout, or the site-packages of an installed wheel, which carries both as package data.
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PROFILES_DIR = ROOT / "firmware_profiles"
# The example sites (the demo's and the tests'), shipped with the package.
DEFAULT_SITES_DIR = ROOT / "site_configs"
# Where an installed controller reads its site configs unless FLEET_SITES_DIR says otherwise:
# the operator's own files, never the examples shipped with the package.
INSTALLED_SITES_DIR = Path("/etc/fleet/sites")


def controller_sites_dir() -> Path:
    """The controller's default site configs folder: site_configs/ of a source checkout (where
    `make demo` and the tests run), /etc/fleet/sites in an installed package."""
    return DEFAULT_SITES_DIR if (ROOT / "pyproject.toml").is_file() else INSTALLED_SITES_DIR


class SiteInfo(Strict):
    """A site config's `site` section: its code (the `<site>` of its MQTT topics and its file
    name), names, country, IANA timezone and vendor."""

    code: str = Field(pattern=SITE_CODE_PATTERN)
    name: str = Field(min_length=1)
    institution: str = ""
    country: str = Field(min_length=1)
    timezone: str
    vendor: str = "not stated"

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            zone_named(value)
        except UnknownZone:
            raise ValueError(
                f"{value!r} is not an IANA timezone. Fix: use a name such as "
                "'Asia/Kathmandu' or 'Africa/Dakar'"
            ) from None
        return value


class DeviceConfig(Strict):
    """One device in a room: its id, firmware profile and address, its PJLink password, and
    what it sets instead of its profile (SNMP credentials, text encoding)."""

    id: str = Field(pattern=DEVICE_ID_PATTERN)
    profile: str
    address: str
    port: int | None = Field(default=None, ge=1, le=65535)
    name: str = ""
    # Secrets: a literal, or `secret:NAME` resolved on the agent (fleet/protocol/secret_refs.py).
    community: str | None = Field(default=None, repr=False)
    # PJLink password (the spec allows up to 32 bytes); none when the projector asks for none.
    password: str | None = Field(default=None, min_length=1, max_length=128, repr=False)
    # SNMPv3 user and keys of this device, instead of its profile's snmp.v3.
    snmp_v3: SnmpV3Settings | None = None
    # How this device encodes its free text, instead of its profile's (e.g. latin-1).
    text_encoding: TextEncoding | None = None

    @field_validator("password")
    @classmethod
    def _pjlink_password_length(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("secret:") and len(value.encode()) > 32:
            # Says how long, never what: the value is a secret.
            raise ValueError(
                f"the PJLink password is {len(value.encode())} bytes; PJLink allows 32. Fix: "
                "use the projector's password, or secret:NAME with NAME in the secrets file"
            )
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not value or " " in value or len(value) > 253:
                raise ValueError(
                    f"{value!r} is not an IP address or host name. Fix: write the device's "
                    "address, e.g. 192.0.2.21"
                ) from None
        return value


class RoomConfig(Strict):
    """A classroom of the site and the devices in it."""

    id: str = Field(pattern=DEVICE_ID_PATTERN)
    name: str = Field(min_length=1)
    building: str = ""
    devices: list[DeviceConfig] = Field(default_factory=list)


# What the batch_size check counts a reading as, in bytes of JSON. Measured by
# `python -m bench.link` polling the simulated devices of every shipped site: readings of the
# shipped profiles are 240 to 477 bytes, the PJLink projectors' the largest (477). 512 is that
# largest rounded up, with room for longer device ids and for the batch's own envelope. A
# batch_size is refused when that many such readings pass MAX_BATCH_BYTES: every batch the
# agent made would be cut by bytes anyway, so the setting would promise what the link cannot
# carry. An unusually large reading is still safe: the agent cuts every batch by bytes.
TYPICAL_READING_BYTES = 512
MAX_BATCH_SIZE = min(MAX_READINGS_PER_BATCH, MAX_BATCH_BYTES // TYPICAL_READING_BYTES)


class AgentSection(Strict):
    """How the site's agent runs: its id, how many devices it polls at once, the most readings
    in one health batch, and the `where_enabled` collectors the site has turned on."""

    id: str = Field(default="", max_length=64)
    poll_concurrency: int = Field(default=64, ge=1, le=2000)
    batch_size: int = Field(default=50, ge=1)
    # Collectors a profile lists as `where_enabled` that this site has turned on (PJLink on
    # panels: a technician enables it in each panel's settings).
    enable_collectors: list[Literal["pjlink", "maxhub-lan", "snmp"]] = Field(default_factory=list)

    @field_validator("batch_size")
    @classmethod
    def _batch_fits_the_byte_cap(cls, value: int) -> int:
        if value > MAX_BATCH_SIZE:
            raise ValueError(
                f"a batch of {value} readings is about {value * TYPICAL_READING_BYTES:,} bytes "
                f"(a reading is up to about {TYPICAL_READING_BYTES} bytes), over the "
                f"{MAX_BATCH_BYTES:,} bytes a health batch may carry (under the broker's and the "
                f"controller's message size limits). Fix: set batch_size to at most "
                f"{MAX_BATCH_SIZE}"
            )
        return value


class Milestone(Strict):
    """One installation milestone of a phase, with its planned and actual dates where the
    source gives them."""

    milestone: Literal[
        "agreement_signed", "equipment_delivered", "installed", "training_done", "in_use"
    ]
    planned: date | None = None
    actual: date | None = None
    actual_end: date | None = None
    # Reached on a date the source does not give (e.g. "training for faculty").
    reached: bool = False
    # Evidence for training_done: the source's "over 70 faculty members and students".
    trained_more_than: int | None = Field(default=None, ge=0, le=INT32_MAX)
    note: str = ""


class PhaseConfig(Strict):
    """One installation phase of the site's `programme`: its number, rooms and milestones."""

    phase: int = Field(ge=1, le=MAX_PHASE_NUMBER)
    rooms: list[str] = Field(default_factory=list)
    milestones: list[Milestone] = Field(default_factory=list)


class SiteConfig(Strict):
    """A site config, `site_configs/<code>.yaml`, read by the site's agent and by the
    controller."""

    site: SiteInfo
    illustrative: str = ""
    timetable: Timetable = Timetable()
    agent: AgentSection = AgentSection()
    rooms: list[RoomConfig] = Field(default_factory=list)
    programme: list[PhaseConfig] = Field(default_factory=list)

    @property
    def code(self) -> str:
        """The site code (`upm`): the `<site>` of the site's MQTT topics."""
        return self.site.code

    @property
    def tz(self) -> ZoneInfo:
        """The site's timezone, for its timetable and reports (everything else is UTC)."""
        return ZoneInfo(self.site.timezone)

    @property
    def agent_id(self) -> str:
        """The id the site's agent publishes under: `agent.id`, else `<code>-agent`."""
        return self.agent.id or f"{self.site.code}-agent"

    def devices(self) -> list[tuple[RoomConfig, DeviceConfig]]:
        """Every device of the site with its room, in the order of the file."""
        return [(room, device) for room in self.rooms for device in room.devices]


@dataclass(frozen=True)
class LoadedSite:
    """A validated site config with the profiles its devices use."""

    path: Path
    config: SiteConfig
    profiles: dict[str, Profile]

    def profile_of(self, device: DeviceConfig) -> Profile:
        """The profile a device of this site names (the load checked that it exists)."""
        return self.profiles[device.profile]


def load_site(path: Path | str, profiles_dir: Path | None = None) -> LoadedSite:
    """One site config, checked against the profiles in `profiles_dir`, else in
    FLEET_PROFILES_DIR, firmware_profiles/ beside its folder, or the shipped ones. Raises
    ConfigErrors."""
    path = Path(path)
    profiles = load_profiles(profiles_dir or _profiles_dir_for(path))
    return check_site(path, read_yaml(path), profiles)


def check_site(path: Path, data: object, profiles: dict[str, Profile]) -> LoadedSite:
    """The site config `data` read from `path`, validated and checked against `profiles`,
    with the profiles its devices use. Raises ConfigErrors with every problem found (schema,
    file name, repeated ids or addresses, unknown profiles or rooms)."""
    try:
        config = SiteConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigErrors(config_errors_from_validation(path, exc)) from None
    errors: list[ConfigError] = []
    if path.suffix in (".yaml", ".yml") and path.stem != config.site.code:
        errors.append(
            ConfigError(
                path,
                "site.code",
                f"code {config.site.code!r} differs from the file name",
                f"name the file {config.site.code}.yaml or set site.code: {path.stem}",
            )
        )
    seen_rooms: set[str] = set()
    seen_devices: set[str] = set()
    seen_addresses: dict[tuple[str, int | None], str] = {}
    for ri, room in enumerate(config.rooms):
        if room.id in seen_rooms:
            errors.append(
                ConfigError(
                    path,
                    f"rooms[{ri}].id",
                    f"room {room.id!r} is listed twice",
                    "give each room its own id",
                )
            )
        seen_rooms.add(room.id)
        for di, device in enumerate(room.devices):
            key = f"rooms[{ri}].devices[{di}]"
            if device.id in seen_devices:
                errors.append(
                    ConfigError(
                        path,
                        f"{key}.id",
                        f"device {device.id!r} is listed twice",
                        "give each device its own id",
                    )
                )
            seen_devices.add(device.id)
            if device.profile not in profiles:
                known = ", ".join(sorted(profiles)) or "none found"
                errors.append(
                    ConfigError(
                        path,
                        f"{key}.profile",
                        f"unknown firmware profile {device.profile!r}",
                        f"use one of: {known}",
                    )
                )
            where = (device.address, device.port)
            if where in seen_addresses:
                errors.append(
                    ConfigError(
                        path,
                        f"{key}.address",
                        f"address {device.address} is also device {seen_addresses[where]!r}",
                        "give each device its own address (or port)",
                    )
                )
            seen_addresses[where] = device.id
    for pi, phase in enumerate(config.programme):
        for room_id in phase.rooms:
            if room_id not in seen_rooms:
                errors.append(
                    ConfigError(
                        path,
                        f"programme[{pi}].rooms",
                        f"room {room_id!r} is not in rooms",
                        "list only rooms defined under rooms",
                    )
                )
    if errors:
        raise ConfigErrors(errors)
    used = {device.profile for _, device in config.devices()}
    return LoadedSite(path=path, config=config, profiles={k: profiles[k] for k in used})


def load_sites(directory: Path | None = None, profiles_dir: Path | None = None) -> list[LoadedSite]:
    """Every site config in `directory` (default: the shipped examples), checked against the
    profiles in `profiles_dir` (default: the shipped ones). Raises ConfigErrors with the
    problems of all files at once, or when the folder does not exist."""
    directory = directory or DEFAULT_SITES_DIR
    if not directory.is_dir():
        # A missing folder is not an empty fleet: syncing from it would retire every device.
        raise ConfigErrors(
            [
                ConfigError(
                    directory,
                    "",
                    "the site configs folder does not exist",
                    f"create it with one YAML per site (examples: {DEFAULT_SITES_DIR}), or set "
                    "FLEET_SITES_DIR (or `fleet serve --sites`) to the folder holding them",
                )
            ]
        )
    profiles = load_profiles(profiles_dir or DEFAULT_PROFILES_DIR)
    sites: list[LoadedSite] = []
    errors: list[ConfigError] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            sites.append(check_site(path, read_yaml(path), profiles))
        except ConfigErrors as exc:
            errors.extend(exc.errors)
    if errors:
        raise ConfigErrors(errors)
    return sites


def _profiles_dir_for(site_path: Path) -> Path:
    """FLEET_PROFILES_DIR when set, else firmware_profiles/ beside the site_configs/ folder,
    else ours."""
    env = os.environ.get("FLEET_PROFILES_DIR")
    if env:
        return Path(env)
    sibling = site_path.resolve().parent.parent / "firmware_profiles"
    return sibling if sibling.is_dir() else DEFAULT_PROFILES_DIR


profiles_dir_for = _profiles_dir_for
