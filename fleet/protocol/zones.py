"""IANA time zones by name, from text that may be anything: a site config's `timezone`, a
cookie the user edited, a database row written by an older tzdata."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class UnknownZone(ValueError):
    """The text names no IANA time zone this machine's tzdata holds."""


def zone_named(name: str) -> ZoneInfo:
    """The IANA zone `name` (`Asia/Kathmandu`). Raises UnknownZone for any text that is not
    one. zoneinfo itself raises three kinds for such text: ZoneInfoNotFoundError (a KeyError)
    for an unknown name, ValueError for an absolute path, `..`, a NUL or a file of tzdata that
    is not a zone (`zone.tab`), and OSError for a directory of tzdata (`Europe`) or a name
    too long for the file system."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise UnknownZone(f"{name[:60]!r} is not an IANA time zone") from None
