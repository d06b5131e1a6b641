"""`free_port`, which the demo, the embedded broker and every test's server bind: a port no
outgoing connection can take between the choice and the bind."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

import fleet.embedded_broker
from fleet.embedded_broker import MQTT_PORT, free_port


def ranged(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str) -> None:
    """As if the kernel's ip_local_port_range read `text`."""
    path = tmp_path / "ip_local_port_range"
    path.write_text(text)
    monkeypatch.setattr(fleet.embedded_broker, "EPHEMERAL_RANGE", path)


def test_free_ports_lie_below_the_ephemeral_range_and_bind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ranged(monkeypatch, tmp_path, "32768\t60999\n")  # Linux's default
    ports = [free_port() for _ in range(200)]
    assert all(1024 <= p < 32768 for p in ports), sorted(set(ports))[:5]
    assert len(set(ports)) > 150  # spread, so that two callers seldom meet
    for port in ports[:20]:
        with socket.create_server(("127.0.0.1", port)):
            pass


def test_a_port_taken_below_the_range_is_not_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ranged(monkeypatch, tmp_path, "32768 60999")
    taken = []
    try:
        # Hold many of the ports it may give: what it gives is never one of them.
        for _ in range(300):
            s = socket.socket()
            s.bind(("127.0.0.1", free_port()))
            s.listen()
            taken.append(s)
        held = {s.getsockname()[1] for s in taken}
        for _ in range(100):
            assert free_port() not in held
    finally:
        for s in taken:
            s.close()


def test_never_the_mqtt_port(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The choices are 1024-1884, 1883 among them; on 127.0.0.2, where no system broker holds
    # it, 5,000 choices would take it about six times.
    ranged(monkeypatch, tmp_path, "1885 60999")
    assert MQTT_PORT not in {free_port("127.0.0.2") for _ in range(5000)}


@pytest.mark.parametrize("text", ["1050 60999", "", "not numbers", "\x00\xff"])
def test_a_range_too_low_or_unreadable_falls_back_to_the_kernel_s_choice(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str
) -> None:
    ranged(monkeypatch, tmp_path, text)
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        pass
    assert port != MQTT_PORT


def test_no_such_file_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fleet.embedded_broker, "EPHEMERAL_RANGE", tmp_path / "missing")
    with socket.create_server(("127.0.0.1", free_port())):
        pass
