"""`free_port`, which the demo, the embedded broker and every test's server bind: a port no
outgoing connection can take between the choice and the bind."""

from __future__ import annotations

import socket

from fleet.embedded_broker import EPHEMERAL_RANGE, free_port


def test_free_ports_lie_below_the_ephemeral_range_and_bind() -> None:
    low, high = (int(v) for v in EPHEMERAL_RANGE.read_text().split())
    ports = [free_port() for _ in range(200)]
    assert all(1024 <= p < low for p in ports), sorted(set(ports))[:5]
    assert len(set(ports)) > 150  # spread, so that two callers seldom meet
    # An outgoing connection's local end comes from the ephemeral range: never one of them.
    with socket.create_server(("127.0.0.1", 0)) as server:
        clients = [socket.create_connection(server.getsockname()) for _ in range(50)]
        try:
            local = {c.getsockname()[1] for c in clients}
            assert all(low <= p <= high for p in local)
        finally:
            for c in clients:
                c.close()
    for port in ports[:20]:
        with socket.create_server(("127.0.0.1", port)):
            pass


def test_a_port_taken_below_the_range_is_not_given() -> None:
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
