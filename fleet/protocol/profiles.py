"""Firmware profiles: how a vendor model is read, what it reports, and its limits.

One YAML per model under `firmware_profiles/`. A profile names its protocol; the collector
registered for that protocol reads the objects listed here and maps them onto a Reading.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from fleet.protocol.documents import OID_PATTERN, Strict, TextEncoding, read_yaml
from fleet.protocol.errors import ConfigError, ConfigErrors, config_errors_from_validation
from fleet.protocol.releases import Release, UpdateMethodName, UpdateSettings
from fleet.protocol.snmpv3 import SnmpV3Settings

PROFILE_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{1,63}$"
DOC_ENTERPRISE_ARC = "1.3.6.1.4.1.32473"  # RFC 5612: for documentation and simulation
ENTERPRISES = "1.3.6.1.4.1."

READING_FIELDS = {
    "power",
    "input",
    "temperature_c",
    "lamp_hours",
    "filter_hours",
    "uptime_s",
    "firmware",
}
ERROR_FLAGS = {"fan", "lamp", "temperature", "cover", "filter", "other"}
FIELD_PATTERN = re.compile(r"^(?:metrics\.[a-z][a-z0-9_]{0,47}|errors\.[a-z]+|[a-z_]+)$")


class PollSettings(Strict):
    """How a model is polled, in seconds: `interval_s` between polls, `timeout_s` for one try,
    and `retries` after the first try. The controller's silence threshold for a device also
    comes from `interval_s`."""

    interval_s: float = Field(default=60, ge=1, le=3600)
    timeout_s: float = Field(default=2.0, gt=0, le=30)
    retries: int = Field(default=1, ge=0, le=5)


class SnmpObject(Strict):
    """One OID and how its value becomes a reading field."""

    field: str
    oid: str = Field(pattern=OID_PATTERN)
    type: Literal["int", "float", "string", "timeticks"] = "string"
    scale: float = 1.0
    # Raw value (as text) -> field value; used for enumerations such as power state.
    map: dict[str, str] | None = None

    @field_validator("map", mode="before")
    @classmethod
    def _keys_as_text(cls, value: object) -> object:
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        return value

    @field_validator("field")
    @classmethod
    def _known_field(cls, value: str) -> str:
        if not FIELD_PATTERN.match(value):
            raise ValueError(
                f"{value!r} is not a reading field. Fix: use one of "
                f"{', '.join(sorted(READING_FIELDS))}, errors.<flag> or metrics.<name>"
            )
        if value.startswith("errors."):
            if value.split(".", 1)[1] not in ERROR_FLAGS:
                raise ValueError(
                    f"{value!r} is not an error flag. Fix: use errors.<one of "
                    f"{', '.join(sorted(ERROR_FLAGS))}>"
                )
        elif not value.startswith("metrics.") and value not in READING_FIELDS:
            raise ValueError(
                f"{value!r} is not a reading field. Fix: use one of "
                f"{', '.join(sorted(READING_FIELDS))}, errors.<flag> or metrics.<name>"
            )
        return value

    @model_validator(mode="after")
    def _vendor_objects_under_doc_arc(self) -> SnmpObject:
        if self.oid.startswith(ENTERPRISES) and not self.oid.startswith(DOC_ENTERPRISE_ARC + "."):
            raise ValueError(
                f"vendor object {self.oid} is under a real enterprise number. Fix: put simulated "
                f"vendor objects under {DOC_ENTERPRISE_ARC} (RFC 5612); the source material "
                "gives no vendor MIB"
            )
        return self


class SnmpSetObject(Strict):
    """An object the agent SETs to switch the device: `values` maps what is asked (`on`,
    `off`, an input name) to the value written; without it an input's name is written."""

    oid: str = Field(pattern=OID_PATTERN)
    type: Literal["int", "string"] = "int"
    values: dict[str, str] | None = None

    @field_validator("values", mode="before")
    @classmethod
    def _values_as_text(cls, value: object) -> object:
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        return value


class SnmpSettings(Strict):
    """How an SNMP model is read and switched: version and credentials, the objects read each
    poll, and the objects SET for power and input."""

    version: Literal["1", "2c", "3"] = "2c"
    # v1/v2c: a literal or `secret:NAME` (fleet/protocol/secret_refs.py). repr=False keeps it
    # out of logs.
    community: str = Field(default="public", repr=False)
    # v3: the USM user and protocols (keys as `secret:NAME`); a device may override it.
    v3: SnmpV3Settings | None = None
    objects: list[SnmpObject] = Field(min_length=1)
    # What a reachable device that reports no power object is taken to be.
    power_when_reachable: Literal["on", "unknown"] = "unknown"
    # The most objects one GET asks for (None: all of them). Some agents answer only one, or
    # only the first of several; the collector also learns a lower limit from a timeout, a
    # tooBig or a short answer.
    max_oids_per_request: int | None = Field(default=None, ge=1, le=128)
    # Where the model takes power and input commands, if it does (agent/collectors/
    # snmp_control.py); values: {on: ..., off: ...} for power.
    power_set: SnmpSetObject | None = None
    input_set: SnmpSetObject | None = None

    @model_validator(mode="after")
    def _v3_needs_user(self) -> SnmpSettings:
        if self.version == "3" and self.v3 is None:
            raise ValueError(
                "version is 3 but there is no v3 section. Fix: add v3: {user: ..., "
                "auth_protocol: SHA, priv_protocol: AES}, the keys as secret:NAME"
            )
        return self


class PjlinkSettings(Strict):
    """How a PJLink projector is read. Its password belongs to the device (site config)."""

    # Ask FILT, SNUM, SVER and %2INPT when the projector says it is class 2 (CLSS).
    class2: bool = True
    # NAME, INF1, INF2, INFO (and SNUM): constant, but cheap, and they show a swapped projector.
    identity: bool = True
    # How often the static queries (CLSS, SVER, SNUM and the identity ones) are asked again;
    # between, their last answers are reported. Power, errors, lamp, input are read every poll.
    static_interval_s: float = Field(default=3600, ge=0, le=7 * 86400)
    # The encoding of NAME, INF1, INF2, INFO (NEC projectors send Latin-1); a device's own
    # `text_encoding` in the site config wins.
    text_encoding: TextEncoding = "utf-8"


CollectorName = Literal["snmp", "simulated", "pjlink", "maxhub-lan", "reachability"]
# Collectors read from a simulated device only: with an address map (`fleet-agent simulate`,
# the demo, tests), never at a real site.
SIMULATION_ONLY = {"simulated"}


class ChainStep(Strict):
    """One way of reading a device, in the order the profile tries them."""

    collector: CollectorName
    # Used only where the site config turns it on (agent.enable_collectors), e.g. PJLink,
    # which a panel answers only once someone enables it in the panel's settings.
    where_enabled: bool = False


class ReachabilitySettings(Strict):
    """How `reachability` tells a device is there: ICMP echo, or a TCP connect to a port."""

    # None: ICMP echo. A port: TCP connect to it (a device that drops ICMP, or a site that
    # filters it); a refused connection counts as reachable, since the host answered.
    tcp_port: int | None = Field(default=None, ge=1, le=65535)
    count: int = Field(default=2, ge=1, le=10)


class MatchRules(Strict):
    """How `fleet-agent discover` recognises this model from what a device answers.

    Each rule is a regular expression searched case-insensitively; every rule given must
    match. An empty section matches any device of the profile's protocol: a fallback."""

    sys_object_id: str | None = None
    sys_descr: str | None = None
    pjlink_inf1: str | None = None
    pjlink_inf2: str | None = None

    @field_validator("sys_object_id", "sys_descr", "pjlink_inf1", "pjlink_inf2")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(
                    f"{value!r} is not a regular expression ({exc}). Fix: escape special "
                    "characters such as ( ) . with a backslash"
                ) from None
        return value

    def rules(self) -> dict[str, str]:
        """The rules given, by name (`sys_descr` -> its expression); unset ones left out."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class Thresholds(Strict):
    """The limits the controller's alerts hold a model's readings to: the highest temperature
    (°C), and lamp and filter life (hours, also shown in usage reports). None: no alert."""

    temperature_c_max: float | None = None
    lamp_hours_life: float | None = None
    filter_hours_life: float | None = None


class SimulationHints(Strict):
    """How `fleet-agent simulate` makes this model behave. Not facts about the product."""

    firmware: str = "1.0.0"
    temperature_standby_c: float = 28.0
    temperature_on_c: float = 45.0
    lamp_hours_start: float | None = None
    filter_hours_start: float | None = None
    sys_descr: str = "simulated classroom device"
    # net-snmp's own for a Linux host, unless the profile names the model's.
    sys_object_id: str = Field(default="1.3.6.1.4.1.8072.3.2.10", pattern=OID_PATTERN)
    inputs: list[str] = Field(default_factory=lambda: ["hdmi1"])
    # Error flags the simulated device reports from the start, e.g. {lamp: warning}.
    faults: dict[str, Literal["warning", "error"]] = Field(default_factory=dict)
    # Firmware updates: the share that fail (bad checksum, no return, back on the old
    # version) and how long a device is away installing before it answers again.
    update_failure_share: float = Field(default=0.1, ge=0, le=1)
    update_reboot_s: float = Field(default=20.0, ge=0, le=3600)
    # The share of class periods a device is not switched on for, and of days it is left on
    # after the last class (per device: the timetable's exceptions that ops should notice).
    # None: the simulator's own (agent/simulator/behaviour.py).
    off_in_class_share: float | None = Field(default=None, ge=0, le=1)
    left_on_share: float | None = Field(default=None, ge=0, le=1)

    @field_validator("faults")
    @classmethod
    def _known_flags(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - ERROR_FLAGS)
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)} not error flags. Fix: use {', '.join(sorted(ERROR_FLAGS))}"
            )
        return value


class Profile(Strict):
    """A firmware profile, `firmware_profiles/<id>.yaml`: one vendor model, read by the agent
    (how to poll and switch it) and the controller (its limits, releases, how it is updated)."""

    id: str = Field(pattern=PROFILE_ID_PATTERN)
    vendor: str = Field(min_length=1)
    model: str = Field(min_length=1)
    kind: Literal["panel", "projector", "device"]
    # The primary way of reading it: what discovery matches on and what firmware pushes use.
    protocol: Literal["snmp", "simulated", "pjlink", "maxhub-lan", "reachability", "mqtt"]
    # The ways, in order, a reading is made of (agent/collectors/chain.py); none: protocol only.
    collectors: list[ChainStep] | None = None
    reachability: ReachabilitySettings = ReachabilitySettings()
    illustrative: bool = True
    note: str = ""
    poll: PollSettings = PollSettings()
    snmp: SnmpSettings | None = None
    pjlink: PjlinkSettings | None = None
    match: MatchRules | None = None
    thresholds: Thresholds = Thresholds()
    firmware_minimum: str | None = None
    update: UpdateSettings = UpdateSettings()
    releases: tuple[Release, ...] = ()
    simulation: SimulationHints = SimulationHints()

    def chain(self) -> list[ChainStep]:
        """The collectors a reading of this model is made of, in order (none for MQTT)."""
        if self.collectors is not None:
            return list(self.collectors)
        return [] if self.protocol == "mqtt" else [ChainStep(collector=self.protocol)]

    def release(self, version: str) -> Release | None:
        """This model's release of `version`, or None when the profile lists none."""
        return next((r for r in self.releases if r.version == version), None)

    def method_of(self, release: Release) -> UpdateMethodName:
        """How `release` is installed: its own method, else the profile's `update.method`."""
        return release.method or self.update.method

    def control_problem(self, kind: str) -> str | None:
        """Why the site agent cannot switch this model's `kind` ("power" or "input"), or None
        when it can: PJLink and MAXHUB LAN control take both, SNMP only the objects the
        profile names (snmp.power_set, snmp.input_set); other protocols take neither. The
        agent's controls (agent/collectors/*_control.py) answer the same way."""
        if self.protocol in ("pjlink", "maxhub-lan"):
            return None
        if self.protocol == "snmp":
            snmp = self.snmp
            obj = (snmp.power_set if kind == "power" else snmp.input_set) if snmp else None
            if obj is None:
                return f"profile {self.id} names no SNMP object for {kind}: the agent cannot set it"
            return None
        return f"the agent cannot switch {self.protocol} devices (profile {self.id})"

    def input_names(self) -> list[str]:
        """The inputs a person is offered for this model: the names its SNMP input object
        maps, else the inputs its simulated device has (illustrative, as the profile is)."""
        snmp_set = self.snmp.input_set if self.snmp is not None else None
        if snmp_set is not None and snmp_set.values:
            return sorted(snmp_set.values)
        return list(self.simulation.inputs)

    def agent_push_problem(self) -> str | None:
        """Why the site agent cannot push firmware to this model (method `agent`), or None.
        The agent pushes over SNMP only: it SETs the artifact's local URL on the device."""
        if self.protocol == "pjlink":
            return (
                f"profile {self.id} is read over PJLink, which has no firmware update command: "
                "the agent cannot push firmware to it. Fix: give its releases method "
                "technician (someone installs it on site) or vendor_cloud"
            )
        if self.protocol not in ("snmp", "simulated"):
            return (
                f"profile {self.id} is read over {self.protocol}; the agent pushes firmware "
                "over SNMP only. Fix: give its releases method technician or vendor_cloud"
            )
        if self.update.snmp_url_oid is None:
            return (
                f"profile {self.id} has update.snmp_url_oid unset: the agent has no SNMP "
                "object to give the device the artifact URL on. Fix: name that object, or "
                "use method technician or vendor_cloud"
            )
        return None

    @model_validator(mode="after")
    def _protocol_section(self) -> Profile:
        uses_snmp = self.protocol in ("snmp", "simulated") or any(
            step.collector in ("snmp", "simulated") for step in self.chain()
        )
        if uses_snmp and self.snmp is None:
            raise ValueError(
                "it is read over snmp (or simulated) but there is no snmp section. Fix: add "
                "snmp.objects listing each OID read and the reading field it maps to"
            )
        versions = [r.version for r in self.releases]
        if len(set(versions)) != len(versions):
            raise ValueError("releases list a version twice. Fix: one entry per version")
        pushes = [r.version for r in self.releases if self.method_of(r) == "agent"]
        problem = self.agent_push_problem() if pushes else None
        if problem:
            raise ValueError(f"release {pushes[0]} has method agent, but {problem}")
        if self.match is not None:
            prefix = {"snmp": "sys_", "simulated": "sys_", "pjlink": "pjlink_"}.get(
                self.protocol, "-"
            )
            foreign = sorted(k for k in self.match.rules() if not k.startswith(prefix))
            if foreign:
                raise ValueError(
                    f"match rules {', '.join(foreign)} cannot apply to a {self.protocol} device. "
                    "Fix: use sys_descr/sys_object_id for snmp, pjlink_inf1/pjlink_inf2 for pjlink"
                )
        return self


def load_profile(path: Path) -> Profile:
    """The firmware profile at `path`, checked. Raises ConfigErrors when the file cannot be
    read or validated, or its `id` differs from the file name."""
    data = read_yaml(path)
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise ConfigErrors(config_errors_from_validation(path, exc)) from None
    if profile.id != path.stem:
        raise ConfigErrors(
            [
                ConfigError(
                    path,
                    "id",
                    f"id {profile.id!r} differs from the file name",
                    f"name the file {profile.id}.yaml or set id: {path.stem}",
                )
            ]
        )
    return profile


def load_profiles(directory: Path) -> dict[str, Profile]:
    """Every profile in `directory` (its *.yaml files), by id. Raises ConfigErrors with the
    problems of all files at once, or when the folder does not exist."""
    if not directory.is_dir():
        raise ConfigErrors(
            [
                ConfigError(
                    directory,
                    "",
                    "the firmware profiles folder does not exist",
                    "set FLEET_PROFILES_DIR (or `fleet serve --profiles`) to a folder of "
                    "profile YAMLs, or unset it to use the profiles shipped with the package",
                )
            ]
        )
    profiles: dict[str, Profile] = {}
    errors: list[ConfigError] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            profile = load_profile(path)
        except ConfigErrors as exc:
            errors.extend(exc.errors)
            continue
        profiles[profile.id] = profile
    if errors:
        raise ConfigErrors(errors)
    return profiles
