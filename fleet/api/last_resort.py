"""The last resort: every request gets an id, and an exception no handler answered is logged
with it and answered as a problem (RFC 9457) that names the id and nothing of the internals.

The bounds on every parameter (`fleet.api.params`) are what keep handlers from raising; this
is for what they did not foresee. The id is in every response's `X-Request-ID`, so that a
user who reports a failure can be matched with its log line. A client may send its own id
(a proxy's, say); one that is not short, plain text is replaced.
"""

from __future__ import annotations

import json
import logging
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from ulid import ULID

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_GIVEN_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class LastResort:
    """ASGI middleware: `app.add_middleware(LastResort)`. Request ids on every HTTP response;
    an unhandled exception becomes a 500 problem, unless the response had already started
    (a stream failing half-way), which can only be logged and cut."""

    def __init__(self, app: ASGIApp) -> None:
        """Wrap `app`, the rest of the ASGI stack, whose requests get ids and whose failures are
        answered here."""
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request with its id in `scope["state"]["request_id"]` and in the response's
        X-Request-ID; an exception from below is logged with the id and answered 500, or
        re-raised when the response had already started. Other than HTTP passes untouched."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.lower().encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            method, path = scope.get("method", "?"), scope.get("path", "?")
            log.exception("request %s: %s %s failed", request_id, method, path)
            if started:
                raise  # the status line is gone: the server cuts the connection
            await _problem(send, request_id)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER.lower().encode():
            given = value.decode("latin-1")
            if _GIVEN_ID.match(given):
                return given
    return str(ULID())


async def _problem(send: Send, request_id: str) -> None:
    body = json.dumps(
        {
            "type": "about:blank",
            "title": "Internal Server Error",
            "status": 500,
            "detail": "the controller failed to answer this request: tell ops its request "
            f"id, {request_id}; the controller's log says what went wrong",
            "request_id": request_id,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (REQUEST_ID_HEADER.lower().encode(), request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
