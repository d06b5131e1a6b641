"""The agent's stop as a service manager sees it: SIGTERM ends it cleanly within its budget,
saying how long the stop took, and SIGUSR1 prints where each thread is without stopping it
(what a technician, or a test whose agent did not stop, reads to find where it was stuck).

Real processes: `fleet-agent simulate` and `fleet-agent run`, on the system Mosquitto."""

from __future__ import annotations

import re
import signal
import time
import uuid
from pathlib import Path

import pytest

from agent.runner import STOP_BUDGET_S
from bench.brokers import port_open
from tests.conftest import need
from tests.fixtures_broker import MOSQUITTO
from tests.procs import Stack, wait_for


@pytest.mark.timeout(120)
def test_sigusr1_shows_the_threads_and_sigterm_stops_within_the_budget(tmp_path: Path) -> None:
    if not port_open(*MOSQUITTO):
        need("Mosquitto at 127.0.0.1:1883", "started by .ci/run")
    root = f"t{uuid.uuid4().hex[:10]}/fleet/v1"
    stack = Stack(tmp_path, "mqtt://127.0.0.1:1883", root, f"sqlite:///{tmp_path / 'f.db'}")
    try:
        stack.simulate()
        agent = stack.agent()
        wait_for(lambda: "every device polled once" in agent.output(), 60, "the first sweep")
        assert agent.popen is not None
        agent.popen.send_signal(signal.SIGUSR1)
        wait_for(lambda: "most recent call first" in agent.output(), 10, "the threads' stacks")
        assert agent.alive()  # shown, not stopped
        started = time.monotonic()
        assert agent.stop(timeout=STOP_BUDGET_S + 5) == 0, agent.output()[-3000:]
        took = time.monotonic() - started
        said = re.search(r"stopped in ([\d.]+) s", agent.output())
        assert said is not None, agent.output()[-2000:]
        assert float(said[1]) <= STOP_BUDGET_S
        print(f"\n[agent] stopped in {took:.1f} s (it said {said[1]} s)")
    finally:
        stack.stop_all()
