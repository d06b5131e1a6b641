"""What each command kind carries in its `args`, checked on both sides of the wire.

The controller builds commands from these models; the agent validates a command's args
against them before anything in them touches a path, a file or the network (a `sha256`
names a file in the artifact cache, a `url` is fetched). A command whose args do not match
is refused with the reason, never half carried out.

Campaigns: a command that belongs to a larger piece of work (a firmware rollout, a room's
power-off) names it in `Command.campaign`, e.g. `rollout-12`. The controller's word (a
`cancel` command, published retained on the site's cmd topic) lists the campaigns and
command ids it has revoked; the agent starts nothing the latest word revokes.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet.protocol.messages import (
    CAMPAIGN_PATTERN,
    CMD_ID_PATTERN,
    TEXT_PATTERN,
    Command,
    CommandKind,
)
from fleet.protocol.releases import SHA256_PATTERN

Campaign = Annotated[str, Field(pattern=CAMPAIGN_PATTERN)]
CmdId = Annotated[str, Field(pattern=CMD_ID_PATTERN)]
# The most a cancel (the controller's word) lists: a site's recently revoked work.
MAX_REVOKED = 500
# The largest firmware image an agent downloads: 8 GiB (Android panel images are 1-4 GiB).
MAX_ARTIFACT_BYTES = 8 * 1024**3


def campaign_of_rollout(rollout_id: int) -> str:
    """The campaign a rollout's commands carry (`rollout-12`), which a `cancel` revokes whole."""
    return f"rollout-{rollout_id}"


class FirmwareArgs(BaseModel):
    """`firmware_update`: install `version` (the artifact `sha256`, `size` bytes, from `url`)."""

    model_config = ConfigDict(extra="ignore")

    rollout_id: int | None = Field(default=None, ge=0, le=2**31 - 1)
    profile: str | None = Field(default=None, max_length=64, pattern=TEXT_PATTERN)
    version: str = Field(min_length=1, max_length=64, pattern=TEXT_PATTERN)
    sha256: str = Field(pattern=SHA256_PATTERN)
    size: int = Field(gt=0, le=MAX_ARTIFACT_BYTES)
    url: str = Field(max_length=2048, pattern=TEXT_PATTERN)
    timeout_s: float = Field(default=1800, gt=0, le=30 * 86400, allow_inf_nan=False)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            host = parts.hostname
        except ValueError:
            host = None
        if parts.scheme not in ("http", "https") or not host or any(c.isspace() for c in value):
            raise ValueError(f"artifact URL {value[:200]!r} is not http(s): not downloaded")
        return value


class CancelArgs(BaseModel):
    """`cancel`, the controller's word for a site: every campaign and command id it has
    revoked lately. It is published retained, so an agent that (re)connects gets the latest
    one; its `issued_at` is the controller's clock when it was sent."""

    model_config = ConfigDict(extra="forbid")

    campaigns: list[Campaign] = Field(default_factory=list, max_length=MAX_REVOKED)
    cmd_ids: list[CmdId] = Field(default_factory=list, max_length=MAX_REVOKED)


INPUT_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"


class PowerArgs(BaseModel):
    """`power`: switch the listed devices on or off (standby)."""

    model_config = ConfigDict(extra="forbid")

    power: Literal["on", "off"]


class InputArgs(BaseModel):
    """`input`: select an input by the name readings use (`hdmi1`, `digital1`, `rgb1`)."""

    model_config = ConfigDict(extra="forbid")

    input: str = Field(pattern=INPUT_PATTERN)


class PollNowArgs(BaseModel):
    """`poll_now`: read the listed devices (all of the site's when none are listed) now."""

    model_config = ConfigDict(extra="forbid")


Args = FirmwareArgs | CancelArgs | PollNowArgs | PowerArgs | InputArgs
ARGS: dict[CommandKind, type[Args]] = {
    CommandKind.firmware_update: FirmwareArgs,
    CommandKind.cancel: CancelArgs,
    CommandKind.poll_now: PollNowArgs,
    CommandKind.power: PowerArgs,
    CommandKind.input: InputArgs,
}


def args_of(command: Command) -> Args:
    """The command's args as its kind's model. Raises pydantic.ValidationError (bad args) or
    KeyError (a kind this contract gives no args model)."""
    model = ARGS[command.kind]
    return model.model_validate(command.args)
