"""The monthly report benchmark still runs (its quick form), so it does not rot between uses."""

from __future__ import annotations

import re

import pytest

from bench import report_month


def test_report_month_bench_quick_prints_a_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    assert report_month.main(["--quick"]) == 0
    out = capsys.readouterr().out
    match = re.search(r"ratio \(ours / limit, wall time\): ([0-9.]+)", out)
    assert match, out
    assert float(match.group(1)) > 0
    assert "50 devices x 7 days" in out
    assert "peak memory of the report" in out
