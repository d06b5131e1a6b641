"""The link benchmark still runs (its quick form), and what it measures still holds what the
code and the README were sized from: a reading of any shipped profile under the size the
batch_size check counts (TYPICAL_READING_BYTES), the broker's queue holding what it was
configured to, a drained outbox back to an empty one's size, the send rate within its cap."""

from __future__ import annotations

import re

import pytest

from bench import link
from bench.brokers import mosquitto_binary
from tests.conftest import need


@pytest.mark.timeout(180)
def test_link_bench_quick_measures_within_its_limits(capsys: pytest.CaptureFixture[str]) -> None:
    if mosquitto_binary() is None:
        need("mosquitto", "bench.link measures the shipped broker's queue; .ci/run expects it")
    assert link.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"largest profile mean \d+; limit TYPICAL_READING_BYTES \d+; .*: met", out), (
        out
    )
    ratios = {
        int(n): float(r) for n, r in re.findall(r"^(\d)\. .*?ratio ([0-9.]+)", out, re.M | re.S)
    }
    assert set(ratios) == {1, 2, 3, 4, 5}, out
    assert ratios[1] <= 1.0 and ratios[2] < 1.0
    assert 0.9 <= ratios[3] <= 1.2, "the broker held about what max_queued_bytes says"
    assert ratios[4] <= 2.0, "a drained outbox is back to about an empty one's size"
    assert ratios[5] <= 1.0 and "MISSED" not in out
    assert re.search(r"the queue holds [0-9.]+ hours", out), out
