"""Keeping a long-running controller's memory flat on glibc (Linux).

A controller runs many threads (the web thread pool, the scheduler's, paho's). glibc gives
busy threads arenas of their own, up to eight per core, and memory freed in one arena is
not reused by another: RSS climbs after every peak even though the live heap is flat (the
soak measured malloc's in-use bytes flat while RSS grew). Two arenas, and handing freed
memory back after the heavy scheduled jobs, keep RSS close to what is in use. Elsewhere
(musl, macOS) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter number
ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "mallopt") or not hasattr(libc, "malloc_trim"):
        return None  # not glibc
    return libc


_LIBC = _libc()


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas. Call before the process starts its threads."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_ARENA_MAX, arenas))


def give_back() -> None:
    """Return freed heap memory to the system (after a job that peaked)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
