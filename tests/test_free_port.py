"""`free_port`, which the demo, the embedded broker and every test's server bind: a port no
outgoing connection can take between the choice and the bind, which this process did not give
lately, and which a process given another part of the range (`share_ports`) never gives."""

from __future__ import annotations

import socket
from collections import deque
from pathlib import Path

import pytest

import fleet.embedded_broker
from fleet.embedded_broker import MQTT_PORT, free_port, share_ports


@pytest.fixture(autouse=True)
def whole_range(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test from the whole range and nothing given yet, as a lone process starts (this
    test worker's own part and memory are put back afterwards)."""
    monkeypatch.setattr(fleet.embedded_broker, "_share", (0, 1))
    monkeypatch.setattr(
        fleet.embedded_broker, "_given", deque(maxlen=fleet.embedded_broker._RECENT)
    )


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


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["tcp", "udp"])
def test_a_port_taken_below_the_range_is_not_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: int
) -> None:
    ranged(monkeypatch, tmp_path, "32768 60999")
    taken = []
    try:
        # Hold many of the ports it may give: what it gives is never one of them, even once
        # it has forgotten giving them.
        for _ in range(300):
            s = socket.socket(socket.AF_INET, kind)
            s.bind(("127.0.0.1", free_port(kind=kind)))
            if kind == socket.SOCK_STREAM:
                s.listen()
            taken.append(s)
        held = {s.getsockname()[1] for s in taken}
        monkeypatch.setattr(fleet.embedded_broker, "_given", deque(maxlen=1000))
        for _ in range(100):
            assert free_port(kind=kind) not in held
    finally:
        for s in taken:
            s.close()


def test_never_the_mqtt_port(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The choices are 1024-1884, 1883 among them; on 127.0.0.2, where no system broker holds
    # it, the draws until all 860 others are given take it many times (then the kernel's).
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


def test_ports_chosen_and_not_yet_bound_are_not_given_twice(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # 500 draws from 12,000 ports without that memory would repeat one about ten times.
    ranged(monkeypatch, tmp_path, "32768 60999")
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)


def test_processes_sharing_the_range_never_choose_the_same_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Six test workers, as `make test` runs them, each choosing ports its servers bind
    seconds later: a CI run failed when two chose 21281 (EADDRINUSE in one's controller)."""
    ranged(monkeypatch, tmp_path, "32768 60999")
    chosen: list[set[int]] = []
    for worker in range(6):
        share_ports(worker, 6)
        monkeypatch.setattr(fleet.embedded_broker, "_given", deque(maxlen=1000))
        chosen.append({free_port() for _ in range(300)})
    for worker, ports in enumerate(chosen):
        assert len(ports) == 300
        assert all(20768 <= p < 32768 for p in ports)
        for other in chosen[worker + 1 :]:
            assert not ports & other


@pytest.mark.parametrize(("index", "parts"), [(-1, 6), (6, 6), (0, 0)])
def test_a_part_outside_the_parts_is_refused(index: int, parts: int) -> None:
    with pytest.raises(ValueError, match="want 0 <= index < parts"):
        share_ports(index, parts)
