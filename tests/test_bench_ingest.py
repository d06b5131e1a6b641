"""The ingest benchmark still runs (its quick form), so it does not rot between uses."""

from __future__ import annotations

import re

import pytest

from bench import ingest


def test_ingest_bench_quick_prints_its_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    assert ingest.main(["--quick", "--no-postgres"]) == 0
    out = capsys.readouterr().out
    ratios = [float(r) for r in re.findall(r"ratio ([0-9.]+)", out)]
    assert len(ratios) == 2, out
    assert all(r > 0 for r in ratios)
