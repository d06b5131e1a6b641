"""Shared test helpers and fixtures: real brokers, real databases."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = [
    "tests.fixtures_db",
    "tests.fixtures_broker",
    "tests.fixtures_browser",
    "tests.fixtures_auth",
]

# The files that took longest in `make test` (`--durations`, summed by file), longest first.
# They start first, so that none is left running alone on one worker at the end while the
# other workers idle; the rest follow in the order collected.
LONG_FIRST = (
    "test_api_fuzz.py",
    "test_notices_api.py",
    "test_faults.py",
    "test_end_to_end.py",
    "test_login_security.py",
    "test_programme_api.py",
    "test_api_bounds.py",
    "test_email.py",
    "test_enrolment.py",
    "test_panels_end_to_end.py",
    "test_controller_install.py",
    "test_cli_messages.py",
    "test_demo_faults.py",
    "test_broker_as_packaged.py",
    "test_bench_soak.py",
)

# Files whose tests share no module-scoped fixture (no browser, no controller started once for
# the file) and hold nothing fixed (ports, topic roots, schemas are each test's own): with
# `--dist loadfile` each of their tests may go to any worker. Every other file runs whole in
# one worker, so its module fixtures start once.
SPREAD = frozenset(
    {
        "test_agent_session.py",
        "test_api_bounds.py",
        "test_api_fuzz.py",
        "test_bench_soak.py",
        "test_broker_as_packaged.py",
        "test_cli_messages.py",
        "test_email.py",
        "test_end_to_end.py",
        "test_enrolment.py",
        "test_exports.py",
        "test_faults.py",
        "test_ingest.py",
        "test_job_rows.py",
        "test_login_security.py",
        "test_notices_api.py",
        "test_paging.py",
        "test_panels_end_to_end.py",
        "test_power_commands.py",
        "test_programme.py",
        "test_programme_api.py",
        "test_retained_state.py",
        "test_rollout_cancel.py",
        "test_rollout_processes.py",
    }
)


def need(what: str, reason: str) -> None:
    """Skip when `what` is missing on a developer's machine; fail in CI, where it must be."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} not available: {reason}")
    pytest.skip(f"{what} not available: {reason}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files of LONG_FIRST first, in its order; the others after them as collected."""
    rank = {name: n for n, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile`, but the tests of SPREAD's files each a unit of their own, and units
    handed out in the order collected (LONG_FIRST's) rather than the biggest files first.
    Not xdist's loadgroup: with pytest 9 it no longer sees the groups it is given."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return nodeid if Path(path).name in SPREAD else path

    config.option.loadscopereorder = False
    return FileScheduling(config, log)
