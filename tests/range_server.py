"""A firmware download server on 127.0.0.1, as a vendor's would be: one file, served whole or
in byte ranges (HTTP Range), with each request kept. It can drop its first response part-way,
either closing the connection early (a link that ends) or resetting it (a link that breaks)."""

from __future__ import annotations

import http.server
import re
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Literal

Drop = Literal["close", "reset"]
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Served:
    range: str | None
    status: int
    sent: int


class RangeServer:
    def __init__(
        self,
        data: bytes,
        path: str = "/releases/image.bin",
        drop_first_at: int | None = None,
        drop: Drop = "close",
    ) -> None:
        self.data = data
        self.path = path
        self.drop_first_at = drop_first_at
        self.drop = drop
        self.requests: list[Served] = []
        self.dropped = threading.Event()
        # A reset throws away what the agent had not read yet: the test sets this once the
        # agent holds the bytes sent, so that the resume point is known.
        self.may_reset = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._serve(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{self.path}"

    def __enter__(self) -> RangeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def _serve(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        if handler.path != self.path:
            handler.send_error(404)
            return
        size = len(self.data)
        header = handler.headers.get("Range")
        first, last, status = 0, size - 1, 200
        if header:
            match = _RANGE.match(header)
            if not match or int(match.group(1)) >= size:
                handler.send_response(416)
                handler.send_header("Content-Range", f"bytes */{size}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                self._record(header, 416, 0)
                return
            first = int(match.group(1))
            last = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            status = 206
        body = self.data[first : last + 1]
        handler.send_response(status)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Accept-Ranges", "bytes")
        if status == 206:
            handler.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        handler.end_headers()
        with self._lock:
            cut = self.drop_first_at if not self.dropped.is_set() else None
            if cut is not None:
                self.dropped.set()
        if cut is None:
            handler.wfile.write(body)
            self._record(header, status, len(body))
            return
        handler.wfile.write(body[:cut])
        handler.wfile.flush()
        self._record(header, status, min(cut, len(body)))
        handler.close_connection = True
        if self.drop == "reset":
            self.may_reset.wait(30)
            # SO_LINGER 0: close sends RST, as a broken link would look to the agent.
            handler.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        handler.connection.close()

    def _record(self, header: str | None, status: int, sent: int) -> None:
        with self._lock:
            self.requests.append(Served(header, status, sent))
