"""The soak benchmark still runs (its quick form), so it does not rot between uses."""

from __future__ import annotations

import re

import pytest

from bench import soak


def test_soak_quick_loses_and_duplicates_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert soak.main(["--quick"]) == 0
    out = capsys.readouterr().out
    found = re.search(r"published ([0-9,]+) readings .* lost (-?\d+), duplicated (-?\d+)", out)
    assert found, out
    assert int(found[1].replace(",", "")) > 0
    assert (found[2], found[3]) == ("0", "0"), out
    assert re.search(r"ingest lag .* ratio [0-9.]+", out), out
    assert re.search(r"controller RSS: .* ratio [0-9.]+", out), out


@pytest.mark.postgres
def test_soak_quick_on_postgres_loses_and_duplicates_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.fixtures_db import POSTGRES_URL, _postgres_admin

    _postgres_admin().close()  # skipped (failed under CI) when PostgreSQL is not there
    assert soak.main(["--quick", "--postgres", POSTGRES_URL]) == 0
    out = capsys.readouterr().out
    assert "on PostgreSQL" in out, out
    found = re.search(r"published ([0-9,]+) readings .* lost (-?\d+), duplicated (-?\d+)", out)
    assert found, out
    assert int(found[1].replace(",", "")) > 0
    assert (found[2], found[3]) == ("0", "0"), out
