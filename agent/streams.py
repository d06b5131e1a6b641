"""asyncio stream servers' connection handlers that end quietly when their server stops."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def quiet_when_cancelled(handler: Handler) -> Handler:
    """`handler`, for `asyncio.start_server`, made to end without an error when its task is
    cancelled: when the process stops, `asyncio.run` cancels the connections still open.

    On Python 3.11 the stream protocol's done callback calls `task.exception()` on such a
    cancelled task, which raises, and the loop logs "Exception in callback" with a traceback
    for every open connection (CPython gh-113538, fixed in 3.12.2 by closing the transport
    instead, which is what this does). Any other exception is the handler's to deal with."""

    @functools.wraps(handler)
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except asyncio.CancelledError:
            writer.transport.close()

    return handle
