"""The memory benchmark still runs (its quick form), so it does not rot between uses."""

from __future__ import annotations

import re

import pytest

from bench import memory


def test_memory_bench_quick_reads_controller_and_agent_rss(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert memory.main(["--quick"]) == 0
    out = capsys.readouterr().out
    sizes = [float(mb) for mb in re.findall(r"RSS with [0-9,]+ devices: ([0-9.]+) MB", out)]
    assert len(sizes) == 2, out  # the controller, then the agent
    assert all(mb > 10 for mb in sizes)
    assert re.search(r"agent RSS .* ratio [0-9.]+", out), out
