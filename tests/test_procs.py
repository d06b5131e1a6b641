"""The end-to-end harness's own promise (tests.procs): a stack that is stopped fails its test
if any of its processes printed a traceback, and passes if none did."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.procs import Proc, Stack, traceback_in


def _stack(tmp_path: Path, *programs: str) -> Stack:
    stack = Stack(tmp_path, "mqtt://127.0.0.1:1", "fleet/test", "sqlite://")
    for n, program in enumerate(programs):
        proc = Proc(f"p{n}", [sys.executable, "-c", program], {}, tmp_path / f"p{n}.log")
        stack.procs.append(proc.start())
        assert proc.popen is not None
        proc.popen.wait(30)  # each has ended, its output written, before the stack stops
    return stack


def test_a_traceback_in_any_process_log_fails_the_stop(tmp_path: Path) -> None:
    stack = _stack(
        tmp_path,
        "print('a clean start')",
        "import logging; logging.basicConfig()\n"
        "try:\n    raise RuntimeError('cannot schedule new futures after shutdown')\n"
        "except RuntimeError:\n    logging.exception('Error submitting job')\n"
        "print('and a clean exit')",
    )
    with pytest.raises(AssertionError) as refused:
        stack.stop_all()
    said = str(refused.value)
    assert "p1.log" in said and "p0.log" not in said
    assert "RuntimeError: cannot schedule new futures after shutdown" in said


def test_processes_that_printed_no_traceback_stop_cleanly(tmp_path: Path) -> None:
    _stack(tmp_path, "print('ok')", "import sys; sys.exit(3)").stop_all()


def test_a_long_traceback_is_cut_in_the_middle_keeping_its_exception() -> None:
    frames = [f'  File "m{n}.py", line {n}, in f{n}\n    f{n + 1}()' for n in range(40)]
    output = "\n".join(
        ["starting", "Traceback (most recent call last):", *frames, "ValueError: deep", "after"]
    )
    excerpt = traceback_in(output)
    assert excerpt is not None
    lines = excerpt.splitlines()
    assert len(lines) == 30
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: deep" and "after" not in excerpt
    assert 'File "m39.py"' in excerpt and "starting" not in excerpt
    assert traceback_in("INFO all well\nERROR: no traceback here") is None
