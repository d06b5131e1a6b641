"""What the rollouts API and the rollouts page take and return."""

from __future__ import annotations

from datetime import datetime, time
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from fleet.protocol.messages import TEXT_PATTERN, SiteCode
from fleet.rollouts.plan import Policy, Wave
from fleet.rollouts.windows import WindowPolicy
from fleet.time_window import Instant


class RolloutOut(BaseModel):
    """One rollout as the rollouts API and page show it, with its devices counted by update
    state."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    profile: str
    release_version: str
    release_sha256: str
    targets: dict[str, Any]
    policy: dict[str, Any]
    state: str
    current_wave: int
    pause_kind: str
    reason: str
    created_at: datetime
    start_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    counts: dict[str, int] = {}  # devices by update state; "done" sums the final states


class RolloutDeviceOut(BaseModel):
    """One target device of a rollout as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    device_id: str
    site_code: str
    wave: int
    state: str
    method: str
    attempts: int
    firmware_before: str | None
    cmd_id: str | None
    sent_at: datetime | None
    next_try_at: datetime | None
    message: str


class SiteBytesOut(BaseModel):
    """One site of a rollout: bytes of the release's artifact served to it, and its devices updated
    and targeted."""

    site_code: str
    bytes_downloaded: int
    devices_updated: int
    devices_targeted: int


class RolloutDetailOut(RolloutOut):
    """One rollout with its devices and its sites' downloads."""

    devices: list[RolloutDeviceOut]
    sites: list[SiteBytesOut]


class StartIn(BaseModel):
    """The body of starting a draft rollout: `start_at` to schedule it, none to start now."""

    start_at: Instant | None = None


# Bounds of what a request may hold, so that every value fits a column and the arithmetic
# made with it (a wave's size, a timeout as a timedelta); zero stays in, for policy_problems
# to say why a zero threshold or count cannot work.
Name = Annotated[str, Field(max_length=200, pattern=TEXT_PATTERN)]
Version = Annotated[str, Field(max_length=64, pattern=TEXT_PATTERN)]
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=1_000_000)]


class TargetFilter(BaseModel):
    """Which devices a rollout targets: by vendor, model, profile, sites and current firmware
    versions (empty: any)."""

    model_config = ConfigDict(extra="forbid")

    vendor: Version | None = None
    model: Name | None = None
    profile: Version | None = None
    sites: list[SiteCode] = Field(default_factory=list, max_length=1000)
    current_versions: list[Version] = Field(default_factory=list, max_length=100)


class WaveIn(BaseModel):
    """One wave of a rollout request: a count of devices, or a cumulative percent of all targets."""

    model_config = ConfigDict(extra="forbid")

    count: Count | None = None
    percent: Percent | None = None


def _site_local(value: time) -> time:
    # Compared with each site's naive local time: one with an offset could not be compared.
    if value.tzinfo is not None:
        raise ValueError("a night is in each site's local time: give it without a zone offset")
    return value


SiteLocalTime = Annotated[time, AfterValidator(_site_local)]


class WindowIn(BaseModel):
    """The maintenance window of a rollout request: the margin around classes (minutes), and
    optionally nights only (site local time) or days without classes only."""

    model_config = ConfigDict(extra="forbid")

    margin_min: int = Field(default=30, ge=0, le=24 * 60)
    nights_only: bool = False
    weekends_only: bool = False
    # The night of nights_only, in each site's local time; it may span midnight (22:00 to
    # 06:00), so an end before the start is a night, not a mistake.
    night_start: SiteLocalTime = time(22, 0)
    night_end: SiteLocalTime = time(6, 0)


class RolloutRequest(BaseModel):
    """The body that creates a rollout: name, release, targets, waves, thresholds, timeout, retries,
    window, and when to start."""

    model_config = ConfigDict(extra="forbid")

    name: Name = Field(min_length=1)
    release_version: Version
    targets: TargetFilter
    waves: list[WaveIn] = Field(
        default_factory=lambda: [WaveIn(count=1), WaveIn(percent=100)], max_length=100
    )
    success_threshold_pct: Percent = 90.0
    pause_for_approval: bool = False
    abort_min_done: Count = 3
    abort_failure_pct: Percent = 20.0
    # Up to 30 days: a timeout is added to times, and must stay a date.
    device_timeout_s: float = Field(default=1800.0, ge=0, le=30 * 86400, allow_inf_nan=False)
    max_retries: int = Field(default=1, ge=0, le=100)
    window: WindowIn = WindowIn()
    # Start at once (start: true), at start_at, or stay a draft until POST .../start.
    start: bool = False
    start_at: Instant | None = None

    def policy(self) -> Policy:
        """The request's policy as the rollout plan takes it."""
        return Policy(
            waves=tuple(Wave(w.count, w.percent) for w in self.waves),
            success_threshold_pct=self.success_threshold_pct,
            pause_for_approval=self.pause_for_approval,
            abort_min_done=self.abort_min_done,
            abort_failure_pct=self.abort_failure_pct,
            device_timeout_s=self.device_timeout_s,
            max_retries=self.max_retries,
            window=WindowPolicy(**self.window.model_dump()),
        )


class PreviewDeviceOut(BaseModel):
    """A device a rollout preview would target, with its firmware and the rollout that holds it
    already, if any."""

    device_id: str
    site_code: str
    firmware: str | None
    # The rollout that holds the device (a device is in one rollout at a time), if any.
    held_by: int | None = None
    held_by_name: str = ""


class PreviewWaveOut(BaseModel):
    """The devices a rollout preview puts in one wave."""

    wave: int  # from 0, as RolloutDeviceOut.wave
    devices: list[PreviewDeviceOut]


class RolloutPreviewOut(BaseModel):
    """What POST /api/v1/rollouts would do with the same body, without storing anything:
    `refused` with the same reasons it would answer 422 with, or the devices it would target,
    by wave."""

    refused: bool
    reasons: list[str]
    profile: str | None
    release_version: str
    method: str | None
    matched: int  # devices the targets match
    already_on_release: int  # of those, already on it: left out
    waves: list[PreviewWaveOut]
