"""Connection handlers of the agent's stream servers (the local artifact cache, the simulated
PJLink projectors and switched ports) end quietly when the process stops with a connection
still open: `asyncio.run` cancels their tasks, and on Python 3.11 the stream protocol then
logs each one's CancelledError as an error with a traceback (agent.streams)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from agent.streams import Handler, quiet_when_cancelled

AGENT = Path(__file__).resolve().parent.parent / "agent"


def told_when_stopped_with_a_connection_open(handler: Handler) -> list[str]:
    """Runs a server of `handler` in a loop of its own, connects, and returns from the loop's
    main while the handler still waits: what the loop's exception handler was told meanwhile,
    asyncio.run's cancelling of what is left included."""
    told: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(
            lambda _, context: told.append(f"{context['message']}: {context.get('exception')!r}")
        )
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, _ = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.readexactly(6) == b"hello\n"  # the handler runs, and now waits

    asyncio.run(main())
    return told


async def greet_then_wait(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"hello\n")
    await writer.drain()
    await asyncio.sleep(3600)  # a slow device's reply, or a download still going


def test_a_handler_cancelled_as_the_process_stops_logs_no_error() -> None:
    assert told_when_stopped_with_a_connection_open(quiet_when_cancelled(greet_then_wait)) == []


def test_every_stream_server_of_the_agent_wraps_its_handler() -> None:
    """A new server that does not is the same fault again."""
    servers = 0
    for path in AGENT.rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        calls = source.count("asyncio.start_server(")
        wrapped = len(re.findall(r"asyncio\.start_server\(\s*quiet_when_cancelled\(", source))
        assert calls == wrapped, f"{path}: {calls - wrapped} handler(s) not wrapped"
        servers += calls
    assert servers >= 3  # the artifact cache, the PJLink projector, the switched port
