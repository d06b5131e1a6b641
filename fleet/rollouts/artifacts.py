"""Firmware artifacts on the controller: found, verified against their release's SHA-256,
served in byte ranges (so a site's interrupted download resumes), and counted per site."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import SQLModel

from fleet.protocol.profiles import Profile
from fleet.protocol.releases import Release
from fleet.rollouts.models import ArtifactDownload

CHUNK = 64 * 1024
DOWNLOADS = SQLModel.metadata.tables[ArtifactDownload.__tablename__]
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class ArtifactError(Exception):
    """An artifact cannot be used: what is wrong and what to do."""


class RangeError(ValueError):
    """A Range header the artifact endpoint cannot serve: not one `bytes=` range, or outside the
    file; the message says what to send."""

    pass


@dataclass(frozen=True)
class ArtifactStore:
    """Where the controller keeps firmware files, and where the agents fetch them."""

    directory: Path
    # This controller as the sites reach it (scheme, host, port; no path).
    base_url: str


def artifact_path(store: ArtifactStore, release: Release) -> Path:
    """Where the release's file is (or would be) in the store; ArtifactError for a release
    the agents download from its own URL."""
    if release.url is not None:
        raise ArtifactError(
            f"release {release.version} is downloaded by each site's agent from {release.url} "
            "(and checked there against its SHA-256); the controller holds no file for it"
        )
    return store.directory / Path(release.artifact).name


def agent_download_url(store: ArtifactStore, release: Release) -> str:
    """Where the agents fetch the release's artifact: the release's own http(s) URL, or the
    controller's endpoint for a file that matches the release (ArtifactError if it does not).

    The controller does not fetch a URL release itself: its bytes would cross the links twice,
    and each agent checks the SHA-256 before any device sees them anyway."""
    if release.url is not None:
        return release.url
    verified_artifact(store, release)
    base = store.base_url.rstrip("/")
    return f"{base}/api/v1/firmware/artifacts/{release.sha256}"


_verified: dict[tuple[Path, int, int], str] = {}
_verified_lock = threading.Lock()


def _sha256_of(path: Path) -> str:
    stat = path.stat()
    key = (path.resolve(), stat.st_size, stat.st_mtime_ns)
    with _verified_lock:
        known = _verified.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    value = digest.hexdigest()
    with _verified_lock:
        _verified[key] = value
    return value


def verified_artifact(store: ArtifactStore, release: Release) -> Path:
    """The artifact's file, only if its size and SHA-256 are the release's: a file that does
    not match is never offered to an agent, let alone pushed to a device. ArtifactError says
    what is wrong (missing, wrong size, wrong SHA-256, a URL release) and what to do."""
    path = artifact_path(store, release)
    if not path.is_file():
        raise ArtifactError(
            f"artifact {path} of release {release.version} is missing. Fix: put the file "
            "there (FLEET_ARTIFACTS_DIR)"
        )
    size = path.stat().st_size
    if size != release.size:
        raise ArtifactError(
            f"artifact {path} is {size} bytes, release {release.version} says {release.size}: "
            "it is not the file the profile lists. Fix: replace the file or correct the profile"
        )
    actual = _sha256_of(path)
    if actual != release.sha256:
        raise ArtifactError(
            f"artifact {path} has SHA-256 {actual}, release {release.version} says "
            f"{release.sha256}: it is not pushed. Fix: replace the file with the vendor's, "
            "or correct the profile"
        )
    return path


def release_by_sha(profiles: dict[str, Profile], sha256: str) -> tuple[Profile, Release] | None:
    """The profile and release whose artifact has this SHA-256 (hex), or None when no profile lists
    it."""
    for profile in profiles.values():
        for release in profile.releases:
            if release.sha256 == sha256:
                return profile, release
    return None


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single `bytes=` range, None for the whole file."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match or match.group(1) == match.group(2) == "":
        raise RangeError(f"unsupported Range {header!r}: send one range, bytes=START-[END]")
    first_text, last_text = match.groups()
    if first_text == "":  # a suffix: the last N bytes
        first, last = max(size - int(last_text), 0), size - 1
    else:
        first = int(first_text)
        last = min(int(last_text), size - 1) if last_text else size - 1
    if first >= size or first > last:
        raise RangeError(f"range {header!r} is outside the {size}-byte artifact")
    return first, last


@dataclass
class ServedBytes:
    """Bytes served by this process, per (site, sha256): what the tests and /metrics read."""

    counts: dict[tuple[str, str], int]

    def add(self, site: str, sha256: str, count: int) -> None:
        """Count `count` more bytes of the artifact `sha256` served to `site`."""
        self.counts[(site, sha256)] = self.counts.get((site, sha256), 0) + count


SERVED = ServedBytes({})


def stream_file(
    path: Path, first: int, last: int, on_done: Callable[[int], None]
) -> Iterator[bytes]:
    """The bytes first..last of `path`; `on_done` gets how many actually went out, even when
    the client hung up half-way (that is what the link paid for)."""
    sent = 0
    try:
        with path.open("rb") as handle:
            handle.seek(first)
            remaining = last - first + 1
            while remaining > 0:
                chunk = handle.read(min(CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk
                # Counted once the server's write of this chunk returned (the response asks
                # for the next chunk only then), not when it was read. "Written" still means
                # handed to the transport, not received: if the agent dies, what sat in
                # uvicorn's write buffer (64 KiB high-water mark) and the two kernels' socket
                # buffers is counted but lost. The over-count is at most that, and at most the
                # one range being served (a throttled agent asks for SPAN_S seconds' worth).
                sent += len(chunk)
    finally:
        on_done(sent)


def record_download(
    engine: Engine, site: str, sha256: str, sent: int, ranged: bool, now: datetime
) -> None:
    """Count one artifact request of `site`: `sent` bytes, `ranged` when it asked for a byte range;
    kept in this process (SERVED) and added to the site's `artifact_download` row."""
    SERVED.add(site, sha256, sent)
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    values = {
        "site_code": site,
        "sha256": sha256,
        "bytes_served": sent,
        "requests": 1,
        "range_requests": int(ranged),
        "last_at": now,
    }
    stmt = insert(DOWNLOADS).values(values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["site_code", "sha256"],
        set_={
            "bytes_served": DOWNLOADS.c.bytes_served + sent,
            "requests": DOWNLOADS.c.requests + 1,
            "range_requests": DOWNLOADS.c.range_requests + int(ranged),
            "last_at": now,
        },
    )
    with engine.begin() as conn:
        conn.execute(stmt)
