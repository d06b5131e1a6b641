"""Cursor paging over HTTP: the next page's URL in the `Link` header, a cursor the list did not
make answered as a 422, and `offset`, which skipped and repeated rows, refused with the fix.

The cursor itself, and the SQL it turns into, are `fleet.paging`'s: the pages use it too.
"""

from __future__ import annotations

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError

from fleet.api.params import refused
from fleet.paging import BadCursor


def link_next(
    request: Request, response: Response, cursor: str | None, param: str = "after"
) -> None:
    """Point the response's `Link` header (RFC 8288, rel="next") at the next page: this very
    request with `param` (`after`) set to the cursor. Nothing is set on the last page (`cursor`
    None)."""
    if cursor is None:
        return
    url = request.url.include_query_params(**{param: cursor})
    response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'


def cursor_refused(exc: BadCursor) -> RequestValidationError:
    """A refused cursor as FastAPI's own 422, located at the `after` query parameter."""
    return refused("query", "after", str(exc))


async def refuse_offset(request: Request) -> None:
    """A dependency of the lists that used to take `offset`: an old client paging by offset
    would otherwise be given the first page again and again, its `offset` ignored. (Async:
    no I/O, so no hop to the thread pool.)"""
    if "offset" in request.query_params:
        raise refused(
            "query",
            "offset",
            "offset paging is gone, as it skipped and repeated rows while data changed: pass "
            "'after' the 'next' cursor of the previous page instead",
            request.query_params["offset"][:40],
        )
