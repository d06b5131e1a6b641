"""The API benchmark still runs (its quick form), so it does not rot between uses."""

from __future__ import annotations

import re

import pytest

from bench import api


def test_api_bench_quick_prints_p95_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    assert api.main(["--quick"]) == 0
    out = capsys.readouterr().out
    ratios = [float(r) for r in re.findall(r"ratio p95 ([0-9.]+)", out)]
    assert len(ratios) == 5, out  # sites, dashboard, filtered devices, first page, by cursor
    assert all(r > 0 for r in ratios)
