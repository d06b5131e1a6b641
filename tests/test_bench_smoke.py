"""The agent poll benchmark still runs (its quick form), so it does not rot between uses."""

from __future__ import annotations

import re

import pytest

from bench import agent_poll


def test_agent_poll_bench_quick_prints_a_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    assert agent_poll.main(["--quick"]) == 0
    out = capsys.readouterr().out
    match = re.search(r"ratio \(ours / limit, throughput\): ([0-9.]+)", out)
    assert match, out
    assert float(match.group(1)) > 0
    assert "20 polls (20 answered)" in out
