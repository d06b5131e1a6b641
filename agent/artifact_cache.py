"""The site's firmware cache: each artifact crosses the site's (metered) link once, resumes
where it stopped (HTTP Range) after a dropped link or an agent restart, is checked against
its SHA-256, and is then served to the site's devices from a small local HTTP endpoint.

It comes from the controller's artifact endpoint, or from the http(s) URL a release names
(a vendor's server): the same resumable download and the same SHA-256 check either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from agent.streams import quiet_when_cancelled

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
SPAN_S = 2.0  # a throttled download's request: this many seconds' worth
_SHA = re.compile(r"^/artifacts/([0-9a-f]{64})$")
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
_CONTROLLER_ARTIFACT = re.compile(r"/api/v1/firmware/artifacts/[0-9a-f]{64}$")


class ArtifactMismatch(Exception):
    """The downloaded bytes are not the release's: deleted, never pushed to a device."""


class ArtifactCache:
    """Firmware artifacts on the site's disk, keyed by SHA-256: each downloaded once per site,
    resumably, optionally throttled to `bytes_per_s`, and verified before use."""

    def __init__(self, directory: Path, site: str, bytes_per_s: float | None = None) -> None:
        """Cache under `directory` (created if missing) for site code `site`; `bytes_per_s` caps the
        download rate on a metered link (None: no cap)."""
        self.directory = directory
        self.site = site
        self.bytes_per_s = bytes_per_s
        self.received_bytes = 0  # over the site's link, by this process
        self._locks: dict[str, asyncio.Lock] = {}
        # A download runs in a thread, which cancelling its task does not stop: this does.
        self._stopping = threading.Event()
        directory.mkdir(parents=True, exist_ok=True)

    def stop(self) -> None:
        """Make a running download stop at its next chunk: it fails with OSError, and a later fetch
        resumes from its .part file."""
        self._stopping.set()

    def path(self, sha256: str) -> Path:
        """The cached file of the artifact `sha256` (64 lowercase hex digits: anything else,
        such as a path, raises ValueError and so never names a file outside the cache)."""
        if not _HEX64.match(sha256):
            raise ValueError(f"{sha256[:80]!r} is not a SHA-256 (64 lowercase hex digits)")
        return self.directory / sha256

    def partial(self, sha256: str) -> Path:
        """The file an unfinished download of `sha256` is written to (`<sha256>.part`); ValueError
        if `sha256` is not 64 lowercase hex digits."""
        return self.path(sha256).with_name(f"{sha256}.part")

    async def fetch(self, url: str, sha256: str, size: int) -> Path:
        """The artifact's verified file, downloading (the rest of) it first if needed. Every
        device of the site waits on the same download: one per site, however many devices."""
        lock = self._locks.setdefault(sha256, asyncio.Lock())
        async with lock:
            done = self.path(sha256)
            if done.is_file() and done.stat().st_size == size:
                return done  # verified before it was given this name
            await asyncio.to_thread(self._download, url, sha256, size)
            return done

    def _download(self, url: str, sha256: str, size: int) -> None:
        part = self.partial(sha256)
        have = part.stat().st_size if part.exists() else 0
        if have > size:
            part.unlink()
            have = 0
        if have < size:
            self._receive(url, part, have, size)
        digest = hashlib.sha256()
        with part.open("rb") as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            part.unlink()
            raise ArtifactMismatch(
                f"downloaded {size} bytes from {url} with SHA-256 {digest.hexdigest()}, expected "
                f"{sha256}: deleted, not pushed to any device. The file at {_server(url)} or "
                "the link is bad (or the release's SHA-256 is wrong); the next attempt "
                "downloads it again"
            )
        os.replace(part, self.path(sha256))

    def _receive(self, url: str, part: Path, have: int, size: int) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise OSError(f"refused to fetch {url[:200]!r}: only http(s) URLs are fetched")
        full = url
        if _CONTROLLER_ARTIFACT.search(urllib.parse.urlsplit(url).path):
            # The controller counts each site's downloads; a release's own URL (a vendor's
            # server, perhaps a signed link) is fetched exactly as given.
            sep = "&" if "?" in url else "?"
            full = f"{url}{sep}site={urllib.parse.quote(self.site)}"
        log.info("downloading %s from byte %d", full, have)
        # Throttled, the agent reads slower than the link carries, and the kernel takes up to
        # a socket buffer's worth ahead of it: bytes the link paid for that a kill throws
        # away (on loopback, a whole 256 KiB artifact). So a throttled download asks for a
        # few seconds' worth at a time, and a kill wastes at most one span.
        span = span_bytes(self.bytes_per_s) or size
        while have < size:
            have = self._receive_span(full, part, have, min(have + span, size) - 1, size)

    def _receive_span(self, full: str, part: Path, have: int, last: int, size: int) -> int:
        ranged = have > 0 or last < size - 1
        headers = {"Range": f"bytes={have}-{last}"} if ranged else {}
        request = urllib.request.Request(full, headers=headers)  # noqa: S310  (http(s) only: _receive checks the scheme)
        try:
            response = urllib.request.urlopen(request, timeout=30)  # noqa: S310  (http(s) only: _receive checks the scheme)
        except urllib.error.HTTPError as exc:
            raise OSError(f"{_server(full)} answered {exc.code} for {full}: {exc.reason}") from None
        with response, part.open("ab") as out:
            if ranged and response.status != 206:
                out.truncate(0)  # the server sent the whole file: start over
                have = 0
            # What was asked for and no more: a server that sends past it (one ignoring the
            # range, or a stream that never ends) would fill the site's disk.
            wanted = size - have if response.status != 206 else last - have + 1
            started = time.monotonic()
            got = 0
            while got < wanted and (chunk := response.read(min(CHUNK, wanted - got))):
                if self._stopping.is_set():
                    raise OSError("the agent is stopping; the download resumes at its next start")
                out.write(chunk)
                out.flush()
                got += len(chunk)
                self.received_bytes += len(chunk)
                if self.bytes_per_s:
                    # A metered link is not flooded: stay under the configured rate.
                    ahead = got / self.bytes_per_s - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            os.fsync(out.fileno())
            if got == wanted and response.read(1):
                raise OSError(
                    f"{_server(full)} sent more than the {wanted} bytes asked for at {full}: "
                    f"kept the first {wanted}; the next attempt resumes after them"
                )
        if got == 0:
            raise OSError(f"{_server(full)} sent nothing for bytes {have}-{last} of {full}")
        return have + got


def _server(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if _CONTROLLER_ARTIFACT.search(parts.path):
        return "the controller"
    return f"the release's server {parts.hostname}"


def span_bytes(bytes_per_s: float | None) -> int | None:
    """Bytes asked for per request by a throttled download (None: the whole rest at once)."""
    return max(CHUNK, int(bytes_per_s * SPAN_S)) if bytes_per_s else None


class LocalArtifactServer:
    """GET /artifacts/<sha256> for the site's devices, from the verified cache only."""

    def __init__(self, cache: ArtifactCache, host: str = "127.0.0.1", port: int = 0) -> None:
        """Serve `cache` on `host`:`port`; port 0 takes a free port, known after start()."""
        self.cache = cache
        self.host = host
        self.port = port
        self.served_bytes = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Start listening; `port` then holds the port actually bound."""
        self._server = await asyncio.start_server(
            quiet_when_cancelled(self._handle), self.host, self.port
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, sha256: str) -> str:
        """The URL a device of the site downloads the artifact `sha256` from."""
        return f"http://{self.host}:{self.port}/artifacts/{sha256}"

    async def close(self) -> None:
        """Stop listening and wait until the server is closed."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            match = _SHA.match(path)
            file = self.cache.path(match.group(1)) if match else None
            if method != "GET" or file is None or not file.is_file():
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                return
            size = file.stat().st_size
            writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode()
            )
            with file.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    writer.write(chunk)
                    await writer.drain()
                    self.served_bytes += len(chunk)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            log.debug("local artifact request failed", exc_info=True)
        finally:
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()
