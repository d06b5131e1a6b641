"""Simulated firmware images: deterministic bytes with a header naming model and version.

Never a real vendor image. Tests and the demo generate them at run time (nothing binary is
committed); the same (profile, version, size) always gives the same bytes, so the SHA-256 a
profile lists for an illustrative release can be checked against a freshly generated file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MAGIC = b"SIMFW1 "
DEFAULT_SIZE = 256 * 1024


def image_name(profile_id: str, version: str) -> str:
    """The file name of a simulated image: `<profile id>-<version>.bin`."""
    return f"{profile_id}-{version}.bin"


def make_image(profile_id: str, version: str, size: int = DEFAULT_SIZE) -> bytes:
    """The simulated image of `profile_id` at `version`, `size` bytes: a header line naming both,
    then bytes derived from it by SHA-256, the same on every call. ValueError if `size` cannot hold
    the header."""
    header = MAGIC + f"{profile_id} {version}\n".encode()
    if size < len(header):
        raise ValueError(f"an image of {size} bytes cannot hold its {len(header)}-byte header")
    body = bytearray(header)
    seed = hashlib.sha256(header).digest()
    counter = 0
    while len(body) < size:
        body += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(body[:size])


def write_image(directory: Path, profile_id: str, version: str, size: int = DEFAULT_SIZE) -> Path:
    """Write the simulated image into `directory` (created if needed) under its image_name; returns
    its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / image_name(profile_id, version)
    path.write_bytes(make_image(profile_id, version, size))
    return path


def read_header(data: bytes) -> tuple[str, str] | None:
    """(profile id, version) from an image's first line, or None if it is not one of ours."""
    if not data.startswith(MAGIC):
        return None
    line = data[len(MAGIC) :].split(b"\n", 1)[0].decode(errors="replace").split()
    return (line[0], line[1]) if len(line) == 2 else None
