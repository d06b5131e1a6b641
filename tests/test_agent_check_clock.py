"""`fleet-agent check`'s clock comparison against whatever answers at --controller: the Date
header of a real HTTP server on loopback, as RFC 9110 writes it, in RFC 5322's forms, or not
a date at all (a proxy's, a wrong URL's). Never a traceback: a verdict with its reason."""

from __future__ import annotations

import email.utils
import http.server
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from agent.check import check_clock


class Dated(http.server.BaseHTTPRequestHandler):
    date = ""

    def do_GET(self) -> None:
        self.send_response_only(200)
        self.send_header("Date", self.date)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def answering() -> Iterator[type[Dated]]:
    handler = type("Handler", (Dated,), {})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    handler.url = f"http://127.0.0.1:{httpd.server_address[1]}"  # type: ignore[attr-defined]
    yield handler
    httpd.shutdown()
    httpd.server_close()


def _now(offset: timedelta, zone: str) -> str:
    at = datetime.now(UTC) + offset
    text = email.utils.format_datetime(at, usegmt=True)
    return text.replace("GMT", zone)


# A date made from the clock when the test runs (never at collection: each parallel worker
# must collect the same ids), as an (offset, zone) pair; or a fixed header.
NOW, TWO_HOURS = timedelta(0), timedelta(hours=2)


@pytest.mark.parametrize(
    ("date", "status", "says"),
    [
        ((NOW, "GMT"), "ok", ""),
        ((NOW, "-0000"), "ok", ""),  # RFC 5322: UTC, the sender's own zone untold
        ((NOW, "+0000"), "ok", ""),
        ((TWO_HOURS, "GMT"), "fail", ""),
        ("garbage", "warn", "is not a date"),
        ("Mon, 31 Feb 2026 10:00:00 GMT", "warn", "is not a date"),
        ("Mon, 01 Dec 99999 10:00:00 GMT", "warn", "is not a date"),
        ("\x1b[2J", "warn", "is not a date"),
    ],
    ids=[
        "now",
        "now-0000",
        "now+0000",
        "two-hours-ahead",
        "garbage",
        "31-feb",
        "year-99999",
        "escape",
    ],
)
def test_any_date_header_gives_a_verdict(
    answering: type[Dated], date: str | tuple[timedelta, str], status: str, says: str
) -> None:
    answering.date = date if isinstance(date, str) else _now(*date)
    result = check_clock(answering.url)  # type: ignore[attr-defined]
    assert result.status == status, result
    assert says in result.detail and "\x1b" not in result.detail, result
