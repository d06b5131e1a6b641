"""Shared test helpers and fixtures: real brokers, real databases."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = [
    "tests.fixtures_db",
    "tests.fixtures_broker",
    "tests.fixtures_browser",
    "tests.fixtures_auth",
]

# The biggest units of work in `make test` (`--durations=0`, summed by file, on 2026-11-30),
# biggest first. They start first, so that none is left running alone on one worker at the
# end while the others idle; then the other files as collected, and last SPREAD's, whose tests
# fill the workers in.
LONG_FIRST = (
    # Single tests of a minute or more: each is a unit no worker can share (the demo at its
    # real pace, 2 minutes; the API fuzz, about 45 s a role and database).
    "test_demo_faults.py",
    "test_api_fuzz.py",
    # Files that run whole in one worker (a browser, or a stack started once for the file),
    # from about 150 s down to 60 s.
    "test_web_silences.py",
    "test_web_power.py",
    "test_auth.py",
    "test_web_rollout_create.py",
    "test_web_milestones.py",
    "test_alert_hold.py",
    "test_faults.py",
    "test_users_api.py",
    "test_web_users.py",
    "test_web_attacks.py",
    "test_notices_api.py",
    "test_controller_install.py",
    "test_web_accessibility.py",
    "test_reports_output.py",
    "test_bench_memory.py",
    "test_bench_ingest.py",
    "test_web_attention.py",
    "test_docs_offline.py",
)

# Files whose tests share no module-scoped fixture (no browser, no controller started once for
# the file) and hold nothing fixed (ports, topic roots, schemas are each test's own): with
# `--dist loadfile` each of their tests may go to any worker. Every other file runs whole in
# one worker, so its module fixtures start once. They come last, the files of the longest
# single tests first (measured in a fresh clone's `make test`, 2026-12-01): a run ends on
# tests of a second or less, not on a 25 s rollout started when the others had finished.
SPREAD = (
    "test_api_fuzz.py",  # 61 s (first anyway: LONG_FIRST)
    "test_rollout_cancel.py",  # 26 s
    "test_rollout_processes.py",
    "test_faults.py",
    "test_cli_messages.py",
    "test_power_commands.py",
    "test_retained_state.py",
    "test_notices_api.py",
    "test_panels_end_to_end.py",
    "test_end_to_end.py",
    "test_agent_session.py",
    "test_bench_soak.py",
    "test_email.py",
    "test_login_security.py",  # 7 s
    "test_snmp_field.py",  # 4 s
    "test_broker_as_packaged.py",
    "test_api_bounds.py",
    "test_paging.py",
    "test_reports.py",
    "test_enrolment.py",
    "test_exports.py",
    "test_job_rows.py",
    "test_programme.py",
    "test_programme_api.py",
    "test_ingest.py",
    "test_programme_words.py",  # under 1 s
)


class _Unanswered(logging.Handler):
    """Keeps the last resort's records: each is a request no handler answered (a 500)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def no_request_fails_unseen(request: pytest.FixtureRequest) -> Iterator[None]:
    """A controller running in the test's own process (TestClient) answers what no handler
    answered with a 500 and logs it: a test that does not look at that status would pass
    over it. Any such failure fails the test, but in a test marked `provokes_500`. (The
    controllers the tests start as processes are checked by their logs: Stack.stop_all.)"""
    logger = logging.getLogger("fleet.api.last_resort")
    handler = _Unanswered()
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    if handler.records and request.node.get_closest_marker("provokes_500") is None:
        first = handler.records[0]
        cause = f": {first.exc_info[1]!r}" if first.exc_info else ""
        pytest.fail(
            f"{len(handler.records)} request(s) failed with a 500 the test did not expect: "
            f"{first.getMessage()}{cause}"
        )


def need(what: str, reason: str) -> None:
    """Skip when `what` is missing on a developer's machine; fail in CI, where it must be."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} not available: {reason}")
    pytest.skip(f"{what} not available: {reason}")


def pytest_configure(config: pytest.Config) -> None:
    """In a parallel worker, its servers' ports come from its own part of the range: a test
    chooses a port seconds before its controller binds it, and another worker's choice
    meanwhile must not be the same (fleet.embedded_broker.share_ports)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    if worker.startswith("gw"):
        from fleet.embedded_broker import share_ports

        share_ports(int(worker[2:]), int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))


def pytest_collection_finish(session: pytest.Session) -> None:
    """What collection built (every test module, the product, Hypothesis, Schemathesis,
    Playwright) lives as long as the worker: frozen out of the collector's sight, and young
    objects collected ten times less often. Measured on the in-process API tests (api_bounds,
    users_api, auth, login_security): 42.6 s of CPU as Python sets it, 40.5 s frozen, 36.3 s
    frozen with these thresholds."""
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """LONG_FIRST's files first, in its order; then the others as collected; SPREAD's last, in
    its order."""
    rank = {name: n for n, name in enumerate(LONG_FIRST)}
    spread = {name: n for n, name in enumerate(SPREAD)}

    def order(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        if name in rank:
            return (0, rank[name])
        return (1, -1) if name not in spread else (2, spread[name])

    items.sort(key=order)


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
