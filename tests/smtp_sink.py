"""A real SMTP server on loopback for tests (aiosmtpd): keeps every message it accepted."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from typing import Any

from aiosmtpd.controller import Controller

from fleet.embedded_broker import free_port


class Sink:
    """The messages accepted, each with the envelope's recipients."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.messages.append(
                (list(envelope.rcpt_tos), message_from_bytes(envelope.content, policy=default))
            )
        return "250 OK"

    def received(self) -> list[tuple[list[str], EmailMessage]]:
        with self._lock:
            return list(self.messages)

    def to(self, address: str) -> list[EmailMessage]:
        return [m for rcpt, m in self.received() if address in rcpt]


@contextmanager
def running_sink(port: int | None = None) -> Iterator[tuple[Sink, int]]:
    """An SMTP server on 127.0.0.1:`port` (a free one if None) for the block."""
    sink = Sink()
    port = port or free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()
