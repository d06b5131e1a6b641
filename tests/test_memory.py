"""fleet.memory.frozen_startup: the collector paused while a process builds what it keeps,
what was built frozen after, and the collector as it was before."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from fleet.memory import frozen_startup


@pytest.fixture(autouse=True)
def collector_as_found() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_what_is_built_at_start_is_frozen_and_collection_resumes() -> None:
    gc.enable()
    before = gc.get_freeze_count()
    with frozen_startup():
        assert not gc.isenabled()
        kept = [{"n": n} for n in range(10_000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= before + len(kept)


def test_a_start_that_fails_still_resumes_collection() -> None:
    gc.enable()
    with pytest.raises(RuntimeError, match="no database"), frozen_startup():
        raise RuntimeError("no database")
    assert gc.isenabled()


def test_a_collector_switched_off_before_stays_off() -> None:
    gc.disable()
    with frozen_startup():
        pass
    assert not gc.isenabled()
