"""`fleet demo`, as `make demo` runs it: every simulated device shows a fresh reading through
the API within 30 s of the start, the evening school's overdue training opens its
programme_overdue alert at once, and Ctrl-C stops everything cleanly. It keeps its data where
every command does (FLEET_DATA_DIR), so a user added afterwards logs in to the demo.

The other kinds of alert open minutes later, on the demo's fault schedule; they are awaited
in simulated time against the real rules in tests/test_demo_faults.py."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.simulator.fault_schedule import EVENING_CODE, EVENING_DEVICE
from fleet.protocol.site_config import load_sites
from tests.procs import BIN, Proc, still_running, wait_for


def get_json(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.loads(resp.read())


def test_demo_shows_every_device_within_30_s_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    started_at = datetime.now(UTC)
    started = time.monotonic()
    env = {
        "PATH": str(BIN) + ":/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
        "FLEET_DATA_DIR": str(tmp_path / "data"),
    }
    demo = Proc(
        "demo", [str(BIN / "fleet"), "demo", "--port", "0"], env=env, log=tmp_path / "demo.log"
    ).start()
    try:

        def printed_url() -> str | None:
            still_running(demo)
            m = re.search(r"controller\s+(http://\S+)/", demo.output())
            return m and m[1]

        url = wait_for(printed_url, 30, "the demo to print its URL")
        # The real sites and the demo's evening school (its open lab only when no site is in
        # class: read from what the demo said).
        expected = sum(len(s.config.devices()) for s in load_sites()) + 2
        if "open lab" in demo.output():
            expected += 1
        token = wait_for(
            lambda: (m := re.search(r"token\s+demo-ops: (\S+)", demo.output())) and m[1],
            5,
            "the demo to print the ops token",
        )

        def all_fresh() -> bool:
            page = get_json(f"{url}/api/v1/devices?limit={expected + 10}", token)
            seen = [d for d in page["items"] if d["last_seen_at"]]
            fresh = [d for d in seen if datetime.fromisoformat(d["last_seen_at"]) >= started_at]
            return page["total"] == expected and len(fresh) == expected

        remaining = 30 - (time.monotonic() - started)
        wait_for(all_fresh, max(remaining, 1), "a fresh reading from every simulated device")
        elapsed = time.monotonic() - started
        print(f"\n[demo] {expected} devices fresh through the API {elapsed:.1f} s after start")

        def overdue() -> bool:
            query = f"kind=programme_overdue&site={EVENING_CODE}&state=open"
            return bool(get_json(f"{url}/api/v1/alerts?{query}", token)["items"])

        wait_for(overdue, 60, "the evening school's programme_overdue alert")
        print(f"[demo] programme_overdue open {time.monotonic() - started:.1f} s after start")
        assert f"left_on {EVENING_DEVICE}" in demo.output()  # the plan, as the demo says it
        assert f"data folder {tmp_path / 'data'}" in demo.output()
        # The same rule for every command: a user added now is the demo's, and logs in.
        add = [str(BIN / "fleet"), "users", "add", "late-ops", "--role", "ops"]
        added = subprocess.run(
            [*add, "--password", "correct horse battery staple", "--token-days", "0"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert added.returncode == 0, added.stderr
        assert f"{tmp_path / 'data' / 'fleet.db'}" in added.stderr
        form = b"username=late-ops&password=correct+horse+battery+staple"
        login = urllib.request.urlopen(
            urllib.request.Request(f"{url}/api/v1/auth/token", data=form), timeout=10
        )
        assert login.status == 200
    finally:
        assert demo.popen is not None
        demo.popen.send_signal(signal.SIGINT)
        try:
            code = demo.popen.wait(20)
        except subprocess.TimeoutExpired:
            demo.popen.kill()
            raise
    output = demo.output()
    assert code == 0, output
    assert "stopping" in output
    assert "Traceback" not in output
