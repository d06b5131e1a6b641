"""The audit step of `make test` (tests/dependency_audit.py) fails on a known vulnerability and
says so, without failing, when the vulnerability database is out of reach. pip-audit's answer
is given here as it prints it: the database itself cannot be had on this machine."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from tests import dependency_audit


def answer(monkeypatch: pytest.MonkeyPatch, dependencies: list[dict[str, Any]]) -> None:
    out = json.dumps({"dependencies": dependencies, "fixes": []})

    def run(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        assert command[1:3] == ["-m", "pip_audit"]
        return subprocess.CompletedProcess(command, 1, out, "")

    monkeypatch.setattr(subprocess, "run", run)


def test_a_known_vulnerability_fails_and_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    vuln = {"id": "PYSEC-0000-1", "fix_versions": ["2.0"], "aliases": [], "description": ""}
    answer(
        monkeypatch,
        [
            {"name": "good", "version": "1.0", "vulns": []},
            {"name": "bad", "version": "1.0", "vulns": [vuln]},
        ],
    )
    assert dependency_audit.main() == 1
    assert "VULNERABLE bad 1.0: PYSEC-0000-1 (fixed in 2.0)" in capsys.readouterr().out


def test_an_unreachable_database_is_said_and_fails_only_when_strict(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    skipped = [{"name": "x", "skip_reason": "Dependency not found on PyPI"}]
    answer(monkeypatch, skipped)
    monkeypatch.delenv("FLEET_AUDIT_STRICT", raising=False)
    assert dependency_audit.main() == 0
    assert "NOT DONE" in capsys.readouterr().err
    monkeypatch.setenv("FLEET_AUDIT_STRICT", "1")
    assert dependency_audit.main() == 1


def test_a_clean_audit_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    answer(monkeypatch, [{"name": "good", "version": "1.0", "vulns": []}])
    assert dependency_audit.main() == 0
