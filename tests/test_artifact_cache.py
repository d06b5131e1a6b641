"""The agent's firmware download against servers that send more than it asked for: a release's
server (a vendor's, or whatever a URL names) that ignores the range or streams without end.
The agent keeps what it asked for and no more, says so, and the file it keeps is still
verified before any device gets it."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.artifact_cache import ArtifactCache

IMAGE = bytes(range(256)) * 1024  # 256 KiB
SHA256 = hashlib.sha256(IMAGE).hexdigest()
JUNK = b"\xee" * 65536


class Overflowing(http.server.BaseHTTPRequestHandler):
    """200 and the whole image whatever the Range, then junk: `endless` with no
    Content-Length and junk until the client goes, else a Content-Length 1 MiB too long."""

    endless = False

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if not self.endless:
            self.send_header("Content-Length", str(len(IMAGE) + 16 * len(JUNK)))
        self.end_headers()
        try:
            self.wfile.write(IMAGE)
            for _ in range(10_000 if self.endless else 16):  # 640 MiB: "without end" here
                self.wfile.write(JUNK)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent stopped reading, as it should

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(params=[False, True], ids=["too-long", "endless"])
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = type("Handler", (Overflowing,), {"endless": request.param})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/releases/image.bin"
    httpd.shutdown()
    httpd.server_close()


def test_a_server_sending_past_the_file_fills_no_disk(server: str, tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache", "upm")
    with pytest.raises(OSError, match=f"sent more than the {len(IMAGE)} bytes asked for"):
        asyncio.run(cache.fetch(server, SHA256, len(IMAGE)))
    assert cache.partial(SHA256).stat().st_size == len(IMAGE)
    assert cache.received_bytes == len(IMAGE)
    # The bytes kept are the file's: the next attempt verifies them and asks for nothing.
    done = asyncio.run(cache.fetch(server, SHA256, len(IMAGE)))
    assert done.read_bytes() == IMAGE and cache.received_bytes == len(IMAGE)
