"""Real processes for end-to-end and fault tests: `fleet serve`, `fleet-agent run` and
`fleet-agent simulate`, started as a user would, with their output kept for the report."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fleet.embedded_broker import free_port
from fleet.protocol.site_config import DEFAULT_SITES_DIR

T = TypeVar("T")
BIN = Path(sys.executable).parent


def sample_counts(database_url: str) -> tuple[int, int]:
    """Samples stored, and distinct (device, ts) among them: the two differ by duplicates."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            total = conn.execute(text("SELECT COUNT(*) FROM sample")).scalar_one()
            distinct = conn.execute(
                text("SELECT COUNT(*) FROM (SELECT DISTINCT device_id, ts FROM sample) AS d")
            ).scalar_one()
    finally:
        engine.dispose()
    return int(total), int(distinct)


def wait_for(
    condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1
) -> T:
    """Poll a condition until it gives something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except ProcessExited:
            raise
        except Exception as exc:  # the thing is not up yet
            last_error = exc
        else:
            if value:
                return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} ({last_error})")


def still_running(proc: Proc) -> None:
    """In a `wait_for` condition: a process that has exited will never answer, so fail at
    once with the end of what it said, not after the whole wait."""
    if not proc.alive():
        tail = "\n".join(proc.output().splitlines()[-30:])
        raise ProcessExited(f"{proc.name} exited ({proc.popen and proc.popen.returncode}):\n{tail}")


def traceback_in(output: str, limit: int = 30) -> str | None:
    """The first Python traceback in a process's output, from its header to its exception's
    line (a long one cut in the middle to `limit` lines, its innermost frames kept), or None
    if there is none."""
    at = output.find("Traceback (most recent call last):")
    if at < 0:
        return None
    lines = output[at:].splitlines()
    # Frames are indented; the exception's own line, which ends the traceback, is not.
    end = next((i for i, line in enumerate(lines[1:], 1) if line[:1].strip()), len(lines) - 1)
    block = lines[: end + 1]
    if len(block) > limit:
        block = [*block[:3], "  ...", *block[-(limit - 4) :]]
    return "\n".join(block)


class ProcessExited(AssertionError):
    """A process a test awaits ended instead."""


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        handle = self.log.open("ab")
        self.popen = subprocess.Popen(
            self.args,
            env=self.env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                if sig != signal.SIGKILL:
                    # Where it was stuck, into its log for the report: `fleet serve`,
                    # `fleet demo` and `fleet-agent run` print their threads' stacks on
                    # SIGUSR1 (faulthandler); the others just end, as they would anyway.
                    self.popen.send_signal(signal.SIGUSR1)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.popen.wait(1)
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Stack:
    """One site's agent, its simulated devices and a controller, all as real processes."""

    tmp: Path
    broker_url: str
    topic_root: str
    database_url: str
    site: str = "upm"
    profiles_dir: Path | None = None
    http_port: int = field(default_factory=free_port)
    client_id: str = field(default_factory=lambda: f"fleet-test-{uuid.uuid4().hex[:8]}")
    # The agent's own, kept across its restarts (its broker session holds commands) but not
    # agent-<site>-<agent id>: two tests' agents of one site on the shared Mosquitto would
    # each take the other's session over.
    agent_client_id: str = field(default_factory=lambda: f"agent-test-{uuid.uuid4().hex[:8]}")
    procs: list[Proc] = field(default_factory=list)
    # An ops token for the API, made once the controller has created its schema.
    ops_token: str | None = None

    def __post_init__(self) -> None:
        self.sites_dir = self.tmp / "site_configs"
        self.sites_dir.mkdir(exist_ok=True)
        shutil.copy(DEFAULT_SITES_DIR / f"{self.site}.yaml", self.sites_dir)
        self.config = self.sites_dir / f"{self.site}.yaml"
        self.address_map = self.tmp / "address-map.json"
        self.agent_data = self.tmp / "agent"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
        env.update(
            FLEET_DATABASE_URL=self.database_url,
            FLEET_MQTT_URL=self.broker_url,
            FLEET_TOPIC_ROOT=self.topic_root,
            FLEET_SITES_DIR=str(self.sites_dir),
            FLEET_DATA_DIR=str(self.tmp / "controller"),
            FLEET_MQTT_CLIENT_ID=self.client_id,
            FLEET_AGENT_CLIENT_ID=self.agent_client_id,
            FLEET_LOG_LEVEL="info",
            # Sessions of test controllers must not pile up on a shared broker.
            FLEET_MQTT_SESSION_EXPIRY_S="300",
            # Silence and the alert rules judged every second, not every 30 s: what a test
            # awaits from them comes as soon as it is due (a test may pass its own pace).
            FLEET_LIVENESS_EVERY_S="1",
            FLEET_ALERTS_EVERY_S="1",
            PYTHONUNBUFFERED="1",
        )
        if self.profiles_dir is not None:
            env["FLEET_PROFILES_DIR"] = str(self.profiles_dir)
        env.update(extra)
        return env

    def _proc(self, name: str, args: list[str], **env: str) -> Proc:
        proc = Proc(name, args, self.env(**env), self.tmp / f"{name}.log").start()
        self.procs.append(proc)
        return proc

    def simulate(self, *extra: str) -> Proc:
        proc = self._proc(
            "simulate",
            [
                str(BIN / "fleet-agent"),
                "simulate",
                "--config",
                str(self.config),
                "--address-map",
                str(self.address_map),
                *extra,
            ],
        )
        wait_for(self.address_map.exists, 30, "the simulator's address map")
        return proc

    def controller(self, **env: str) -> Proc:
        proc = self._proc(
            "controller", [str(BIN / "fleet"), "serve", "--port", str(self.http_port)], **env
        )

        def healthy() -> bool:
            still_running(proc)
            return self.get("/healthz") is not None

        wait_for(healthy, 60, "the controller's /healthz")
        if self.ops_token is None:
            from tests.fixtures_auth import ops_token_for

            self.ops_token = ops_token_for(self.database_url)
        return proc

    def agent(self, *extra: str) -> Proc:
        return self._proc(
            "agent",
            [
                str(BIN / "fleet-agent"),
                "run",
                "--config",
                str(self.config),
                "--mqtt-url",
                self.broker_url,
                "--topic-root",
                self.topic_root,
                "--address-map",
                str(self.address_map),
                "--data-dir",
                str(self.agent_data),
                *extra,
            ],
        )

    def agent_status(self) -> dict[str, Any]:
        """`fleet-agent status`, as a technician would run it beside the running agent."""
        out = subprocess.run(
            [
                str(BIN / "fleet-agent"),
                "status",
                "--config",
                str(self.config),
                "--data-dir",
                str(self.agent_data),
            ],
            env=self.env(),
            capture_output=True,
            check=True,
            timeout=30,
        )
        status: dict[str, Any] = json.loads(out.stdout)
        return status

    def get(self, path: str) -> Any:
        try:
            headers = {"Authorization": f"Bearer {self.ops_token}"} if self.ops_token else {}
            request = urllib.request.Request(self.base + path, headers=headers)
            with urllib.request.urlopen(request, timeout=5) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 503:  # /healthz while ingest is still connecting
                return None
            raise

    def job_last_run(self, job: str) -> float | None:
        """When (Unix time) the last run of the scheduled `job` that finished began, read off
        the controller's /metrics; None before its first."""
        with urllib.request.urlopen(self.base + "/metrics", timeout=5) as resp:
            body = resp.read().decode()
        pattern = rf'^fleet_job_last_success_timestamp_seconds\{{job="{job}"\}} (\S+)$'
        found = re.search(pattern, body, re.MULTILINE)
        return float(found.group(1)) if found else None

    def await_job_runs(self, job: str, runs: int = 1, timeout: float = 60) -> None:
        """Wait until `runs` runs of the scheduled `job` (fleet/scheduler.py), each begun after
        the one before and the first after this call, have finished: what a test asserts
        after them was judged by them, however loaded the machine. TimeoutError if not."""
        since = time.time()
        for n in range(1, runs + 1):

            def ran(after: float = since) -> float | None:
                last = self.job_last_run(job)
                return last if last is not None and last > after else None

            since = wait_for(ran, timeout, f"run {n} of the {job} job", interval=0.05)

    def stop_all(self) -> None:
        """Stops every process, the last started first; then fails if any of them printed a
        Python traceback in its life. An exception that escaped a job, a handler or a thread,
        or a race at shutdown (APScheduler submitting to its closed pool), is the product's
        fault even where the test's own checks passed, and an operator reads it in the log."""
        for proc in reversed(self.procs):
            proc.stop()
        printed = {
            proc.log: excerpt
            for proc in self.procs
            if (excerpt := traceback_in(proc.output())) is not None
        }
        assert not printed, "a process printed a traceback:\n" + "\n".join(
            f"--- {log} ---\n{excerpt}" for log, excerpt in printed.items()
        )

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.output()[-4000:]}" for p in self.procs)
