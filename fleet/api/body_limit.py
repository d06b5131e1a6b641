"""A cap on request bodies, before any route reads one.

Starlette reads a JSON or form body whole into memory before the route's model can refuse
it, so without a cap one request of a few gigabytes, even an anonymous one (the login form,
the enrolment call), takes the controller's memory. The largest body a route's schema
admits is a few hundred KiB (a rollout's 1,000 sites, a form's 100,000 characters); the
programme CSV has its own, larger cap, and reads its body as a stream.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY_BYTES = 1024 * 1024


class BodyLimit:
    """ASGI middleware: `app.add_middleware(BodyLimit, limits={path: bytes})`. A request whose
    Content-Length is over its path's limit (else MAX_BODY_BYTES) is answered 413 (RFC 9110
    15.5.14) before its body is read; a chunked one is read up to the limit, then handed on
    whole, or answered 413 as soon as it passes it."""

    def __init__(
        self, app: ASGIApp, limit: int = MAX_BODY_BYTES, limits: Mapping[str, int] | None = None
    ) -> None:
        """Wrap `app`; `limit` bytes for every path but those `limits` names."""
        self.app = app
        self.limit = limit
        self.limits = dict(limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer 413; other than HTTP passes untouched."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.limit)
        headers = dict(scope.get("headers", []))
        length = headers.get(b"content-length")
        if length is not None:
            # The server (h11, httptools) refuses a malformed length and never reads past it.
            if length.strip().isdigit() and int(length) > limit:
                await _too_large(send, limit)
                return
            await self.app(scope, receive, send)
            return
        if b"transfer-encoding" not in headers:
            await self.app(scope, receive, send)  # no body at all
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went: the app hears of it below
            size += len(message.get("body", b""))
            if size > limit:
                await _too_large(send, limit)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps(
        {
            "type": "about:blank",
            "title": "Content Too Large",
            "status": 413,
            "detail": f"the request body is over {limit} bytes, more than any request here "
            "takes: send less",
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
