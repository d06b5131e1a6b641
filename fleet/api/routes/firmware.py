"""Firmware: each model's releases, their artifacts served in byte ranges (a site's
interrupted download resumes), and the bytes each site has downloaded."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Path, Query
from fastapi.responses import StreamingResponse
from sqlmodel import col, select

from fleet.api.deps import EngineDep, SessionDep, SettingsDep
from fleet.api.schemas import Out
from fleet.auth.permissions import Allow
from fleet.devices.profile_book import profiles_in
from fleet.protocol.messages import SITE_CODE_PATTERN, utcnow
from fleet.rollouts.artifacts import (
    ArtifactError,
    RangeError,
    parse_range,
    record_download,
    release_by_sha,
    stream_file,
    verified_artifact,
)
from fleet.rollouts.models import ArtifactDownload

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/firmware", tags=["firmware"])


class ReleaseOut(Out):
    """One firmware release of a model's profile, for ops: version, artifact (SHA-256, size in
    bytes), update method, the versions it upgrades from, and whether the controller can serve
    its artifact."""

    profile: str
    vendor: str
    model: str
    version: str
    sha256: str
    size: int
    method: str
    upgrades_from: list[str]
    artifact: str
    # "ok", or why the controller will not serve it (missing file, wrong SHA-256).
    artifact_status: str


class DownloadOut(Out):
    """What one site has downloaded of one artifact, for ops watching metered links: bytes
    served, requests (and how many were ranges), and the last one (UTC)."""

    site_code: str
    sha256: str
    bytes_served: int
    requests: int
    range_requests: int
    last_at: datetime


@router.get("", dependencies=[Allow("firmware:read")])
def list_releases(settings: SettingsDep) -> list[ReleaseOut]:
    out = []
    for profile in profiles_in(settings.profiles_dir).values():
        for release in profile.releases:
            method = profile.method_of(release)
            try:
                verified_artifact(settings.artifact_store(), release)
                status = "ok"
            except ArtifactError as exc:
                status = str(exc) if method == "agent" else f"not needed ({method}): {exc}"
            out.append(
                ReleaseOut(
                    profile=profile.id,
                    vendor=profile.vendor,
                    model=profile.model,
                    version=release.version,
                    sha256=release.sha256,
                    size=release.size,
                    method=method,
                    upgrades_from=list(release.upgrades_from),
                    artifact=release.artifact,
                    artifact_status=status,
                )
            )
    return out


@router.get("/downloads", dependencies=[Allow("firmware:read")])
def list_downloads(session: SessionDep) -> list[DownloadOut]:
    rows = session.exec(
        select(ArtifactDownload).order_by(
            col(ArtifactDownload.site_code), col(ArtifactDownload.sha256)
        )
    )
    return [DownloadOut.model_validate(row, from_attributes=True) for row in rows]


@router.get("/artifacts/{sha256}", dependencies=[Allow("agent")])
def get_artifact(
    sha256: Annotated[str, Path(pattern=r"^[0-9a-fA-F]{64}$", description="the release's SHA-256")],
    settings: SettingsDep,
    engine: EngineDep,
    site: Annotated[str, Query(pattern=SITE_CODE_PATTERN, description="the downloading site")],
    range_: Annotated[str | None, Header(alias="Range", max_length=200)] = None,
) -> StreamingResponse:
    found = release_by_sha(profiles_in(settings.profiles_dir), sha256)
    if found is None:
        raise HTTPException(
            404, f"no release has SHA-256 {sha256}: GET /api/v1/firmware lists them"
        )
    _, release = found
    if release.url is not None:
        # The release's own public URL, from its profile: nothing of this server's is named.
        raise HTTPException(
            409,
            f"release {release.version} is downloaded by each site's agent from "
            f"{release.url}; the controller holds no file for it",
        )
    try:
        path = verified_artifact(settings.artifact_store(), release)
    except ArtifactError as exc:
        # An open route: the reason (which names the server's folder) goes to the log and to
        # ops' GET /api/v1/firmware, never to whoever asks here.
        log.warning("artifact %s not served: %s", sha256, exc)
        raise HTTPException(
            409,
            f"the artifact of SHA-256 {sha256} cannot be served yet: ops see why in "
            "GET /api/v1/firmware (artifact_status)",
        ) from None
    size = release.size
    try:
        wanted = parse_range(range_, size)
    except RangeError as exc:
        raise HTTPException(416, str(exc), headers={"Content-Range": f"bytes */{size}"}) from None
    first, last = wanted or (0, size - 1)
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Length": str(last - first + 1),
        "ETag": f'"{sha256}"',
        "X-Checksum-Sha256": sha256,
    }
    if wanted:
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"

    def done(sent: int) -> None:
        record_download(engine, site, sha256, sent, wanted is not None, utcnow())

    return StreamingResponse(
        stream_file(path, first, last, done),
        status_code=206 if wanted else 200,
        media_type="application/octet-stream",
        headers=headers,
    )
