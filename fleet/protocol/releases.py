"""Firmware releases of a model, and how the model takes them (a firmware profile's `update`
and `releases` sections)."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from fleet.protocol.documents import OID_PATTERN, Strict
from fleet.protocol.messages import INT64_MAX

UpdateMethodName = Literal["agent", "vendor_cloud", "technician"]
SHA256_PATTERN = r"^[0-9a-f]{64}$"


class UpdateSettings(Strict):
    """How a model takes new firmware. `agent`: the site agent pushes the artifact;
    `vendor_cloud` and `technician`: someone else does, the controller only watches the version."""

    method: UpdateMethodName = "technician"
    # agent method over SNMP: the object a device takes the artifact's local URL on (a SET),
    # after which it downloads, installs, reboots and comes back reporting its new version.
    snmp_url_oid: str | None = Field(default=None, pattern=OID_PATTERN)
    # How long a device may take from the SET to reporting the new version.
    install_timeout_s: float = Field(default=900, gt=0, le=24 * 3600)


class Release(Strict):
    """One firmware release of a model. Illustrative unless the source material gives it."""

    version: str = Field(min_length=1, max_length=64)
    sha256: str = Field(pattern=SHA256_PATTERN)
    size: int = Field(gt=0, le=INT64_MAX)
    # A file name under the controller's artifacts folder (FLEET_ARTIFACTS_DIR), which the
    # controller serves to the agents; or an http(s) URL (a vendor's server), which each
    # site's agent downloads itself, once per site, resumably, and checks against sha256.
    artifact: str = Field(min_length=1)
    # Versions it may be installed over; empty means any.
    upgrades_from: tuple[str, ...] = ()
    # Overrides the profile's update.method for this release.
    method: UpdateMethodName | None = None
    note: str = ""

    @field_validator("artifact")
    @classmethod
    def _file_or_http_url(cls, value: str) -> str:
        if "://" not in value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"artifact {value!r} is neither a file name nor an http(s) URL. Fix: give the "
                "file name under the controller's artifacts folder, or the http:// or "
                "https:// URL the agents download it from"
            )
        return value

    @property
    def url(self) -> str | None:
        """The http(s) URL the agents download the artifact from, if the release names one."""
        return self.artifact if "://" in self.artifact else None

    def applies_to(self, current: str | None) -> bool:
        """Whether this release may be installed over a device's `current` version (None:
        not known, which only a release without `upgrades_from` accepts)."""
        return not self.upgrades_from or (current is not None and current in self.upgrades_from)
