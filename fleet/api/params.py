"""The bounds of the path and query parameters, declared once, as types, so each route states
them in the OpenAPI schema and FastAPI refuses what is out of them with a 422 before a handler
runs.

- Row ids: 1 to what the id column holds: 2^63 - 1 for alerts and stored reports (64-bit;
  past it SQLite cannot even bind the number), 2^31 - 1 for rollouts (a 32-bit column, and
  PostgreSQL refuses a larger number there even to compare).
- Names: a site code, a device or room id by their registry patterns; other filters are text
  without control characters (PostgreSQL's text holds no NUL), capped in length.
- Instants (`since`, `from`, `to`): ISO 8601 with a UTC offset, from 2000-01-01 up to, not
  including, 2100-01-01 UTC; dates: 2000-01-01 to 2099-12-31 (`fleet.time_window`).
- Paging: `limit` per list, and `after`, a cursor (`fleet.paging`) of at most 512 characters.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BeforeValidator

from fleet.paging import CURSOR_PATTERN, INT32_MAX, MAX_CURSOR_CHARS
from fleet.protocol.messages import (
    DEVICE_ID_PATTERN,
    INT64_MAX,
    SITE_CODE_PATTERN,
    TEXT_PATTERN,
    lowercase_site_hint,
)
from fleet.time_window import WINDOW

MAX_FILTER_CHARS = 200


def refused(where: str, name: str, message: str, given: object = None) -> RequestValidationError:
    """A refusal a handler makes itself, in the shape of FastAPI's own 422 (the one the OpenAPI
    schema declares): `where` is "query", "path" or "body", `name` the parameter at fault."""
    return RequestValidationError(
        [{"loc": (where, name), "msg": message, "type": "value_error", "input": given}]
    )


# Path parameters.
# The examples are illustrative: they name what `make demo` registers.
RowIdPath = Annotated[
    int, Path(ge=1, le=INT64_MAX, description="a row id, 1 to 2^63 - 1", examples=[1])
]
Row32IdPath = Annotated[
    int, Path(ge=1, le=INT32_MAX, description="a row id, 1 to 2^31 - 1", examples=[1])
]
SiteCodePath = Annotated[
    str,
    Path(pattern=SITE_CODE_PATTERN, description="a site code", examples=["upm"]),
    BeforeValidator(lowercase_site_hint),
]
DeviceIdPath = Annotated[
    str,
    Path(pattern=DEVICE_ID_PATTERN, description="a device id", examples=["upm-sc1-panel-1"]),
]

# Query filters; absent means any.
SiteFilter = Annotated[
    str | None,
    Query(pattern=SITE_CODE_PATTERN, description="a site code"),
    BeforeValidator(lowercase_site_hint),
]
DeviceFilter = Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN, description="a device id")]
RoomFilter = Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN, description="a room id")]
VendorFilter = Annotated[
    str | None, Query(max_length=64, pattern=TEXT_PATTERN, description="a vendor, any case")
]


def text_filter(description: str, max_length: int = MAX_FILTER_CHARS) -> Any:
    """A free-text query filter: no control characters, at most `max_length` characters."""
    return Query(max_length=max_length, pattern=TEXT_PATTERN, description=description)


def since_query(description: str, alias: str | None = None) -> Any:
    """An instant in the window, described with it."""
    return Query(alias=alias, description=f"{description}; ISO 8601 with an offset, {WINDOW}")


def day_query(description: str, alias: str | None = None) -> Any:
    """A date (YYYY-MM-DD) in the window, described with it."""
    return Query(alias=alias, description=f"{description}; YYYY-MM-DD, {WINDOW}")


def limit_query(most: int) -> Any:
    """How many rows a page holds, 1 to `most`."""
    return Query(ge=1, le=most, description=f"rows in a page, 1 to {most}")


After = Annotated[
    str | None,
    Query(
        max_length=MAX_CURSOR_CHARS,
        pattern=CURSOR_PATTERN,
        description="the 'next' cursor of the previous page (the Link header's rel=\"next\"); "
        "leave it out for the first page",
    ),
]
