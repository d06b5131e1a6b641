"""Shared test helpers and fixtures: real brokers, real databases."""

from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.fixtures_db",
    "tests.fixtures_broker",
    "tests.fixtures_browser",
    "tests.fixtures_auth",
]


def need(what: str, reason: str) -> None:
    """Skip when `what` is missing on a developer's machine; fail in CI, where it must be."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} not available: {reason}")
    pytest.skip(f"{what} not available: {reason}")
