"""A MAXHUB panel over its LAN protocol and a reachability-only panel, end to end as real
processes: `fleet-agent simulate` serves them on loopback TCP (the MAXHUB one with split
replies and a busy period after power-on), `fleet-agent run` polls them through their
collector chains, a real Mosquitto carries the batch, `fleet serve`
stores it, and the API shows what each gave, which collectors answered and the state; in
class and outside it. `fleet-agent check` and `discover --chains` against the same panels."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet.protocol.site_config import DEFAULT_PROFILES_DIR
from tests.fixtures_broker import MOSQUITTO_ONLY, TestBroker
from tests.procs import BIN, Stack, wait_for

SITE = "usthb"  # a MAXHUB site: one panel over LAN control, one with LAN control off
LAN_PANEL = "usthb-sc1-panel-1"
PING_PANEL = "usthb-sc1-panel-2"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
TABLE_INPUTS = {"hdmi1", "slot-in-pc", "type-c1", "type-c2"}

# The collector chains and the states are what these pin, not the broker.
pytestmark = MOSQUITTO_ONLY


def make_stack(tmp_path: Path, broker: TestBroker, *, classes_all_day: bool) -> Stack:
    # Simulated panels that are never left off in class nor on after it: a certain state.
    profiles = tmp_path / "firmware_profiles"
    shutil.copytree(DEFAULT_PROFILES_DIR, profiles)
    for name in ("maxhub-panel", "maxhub-panel-unmanaged"):
        path = profiles / f"{name}.yaml"
        data = yaml.safe_load(path.read_text())
        data.setdefault("simulation", {}).update({"off_in_class_share": 0, "left_on_share": 0})
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    s = Stack(
        tmp_path,
        broker.url,
        broker.topic_root,
        f"sqlite:///{tmp_path / 'fleet.db'}",
        site=SITE,
        profiles_dir=profiles,
    )
    config = yaml.safe_load(s.config.read_text())
    weekly = {day: ["00:00-23:59"] for day in DAYS} if classes_all_day else {}
    config["timetable"] = {"weekly": weekly}
    s.config.write_text(yaml.safe_dump(config, sort_keys=False))
    return s


@pytest.fixture
def in_class(tmp_path: Path, broker: TestBroker) -> Iterator[Stack]:
    s = make_stack(tmp_path, broker, classes_all_day=True)
    yield s
    s.stop_all()


@pytest.fixture
def no_class(tmp_path: Path, broker: TestBroker) -> Iterator[Stack]:
    s = make_stack(tmp_path, broker, classes_all_day=False)
    yield s
    s.stop_all()


def detail_when(stack: Stack, device: str, ready: Any) -> dict[str, Any] | None:
    detail = stack.get(f"/api/v1/devices/{device}")
    last = detail.get("last_reading") or {}
    return dict(detail) if last and ready(last) else None


def test_lan_panel_and_reachability_panel_in_class_reach_the_api(in_class: Stack) -> None:
    stack = in_class
    stack.simulate()
    stack.controller()
    stack.agent()
    try:
        lan = wait_for(
            lambda: detail_when(stack, LAN_PANEL, lambda r: r.get("input")),
            60,
            "the MAXHUB panel's LAN reading",
        )
        ping = wait_for(
            lambda: detail_when(stack, PING_PANEL, lambda r: r.get("reachable")),
            60,
            "the reachability-only panel's reading",
        )
    except TimeoutError:
        pytest.fail(f"a panel's reading never arrived:\n{stack.logs()}")
    last = lan["last_reading"]
    assert last["reachable"] is True and last["power"] == "on", last
    assert last["input"] in TABLE_INPUTS
    assert last["collectors"] == {"maxhub-lan": True, "reachability": True}
    assert 0 <= last["metrics"]["volume_pct"] <= 100
    assert "temperature_c" not in last and "firmware" not in last  # the table is silent
    assert lan["state"] == "online", lan

    last = ping["last_reading"]
    assert last["collectors"] == {"reachability": True}
    assert last["power"] == "unknown" and last["metrics"]["rtt_ms"] >= 0
    assert ping["state"] == "online" and "power not reported" in ping["state_reason"], ping


def test_panels_off_outside_class_are_standby_not_unreachable(no_class: Stack) -> None:
    stack = no_class
    stack.simulate()
    stack.controller()
    stack.agent()
    try:
        details = [
            wait_for(
                lambda d=device: detail_when(stack, d, lambda r: "collectors" in r),  # type: ignore[misc]
                60,
                f"{device}'s reading",
            )
            for device in (LAN_PANEL, PING_PANEL)
        ]
    except TimeoutError:
        pytest.fail(f"a panel's reading never arrived:\n{stack.logs()}")
    for detail in details:
        assert detail["last_reading"]["reachable"] is False
        assert detail["state"] == "standby", detail
        assert "switched off (expected)" in detail["state_reason"]


def run_agent(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "fleet-agent"), *args],
        capture_output=True,
        text=True,
        timeout=90,
        env=stack.env(),
    )


def test_check_and_discover_show_which_ways_work(in_class: Stack) -> None:
    stack = in_class
    stack.simulate()
    common = ["--config", str(stack.config), "--address-map", str(stack.address_map)]
    out = run_agent(stack, "check", *common, "--mqtt-url", stack.broker_url, "--json")
    results = {r["check"]: r for r in json.loads(out.stdout)}
    lan = results[f"device {LAN_PANEL} (127.0.0.1)"]
    assert lan["status"] == "ok", out.stdout + out.stderr
    assert "maxhub-lan ok: power on, input" in lan["detail"]
    assert "reachability ok" in lan["detail"]
    ping = results[f"device {PING_PANEL} (127.0.0.1)"]
    assert ping["status"] == "ok" and ping["detail"].startswith("reachability ok")

    out = run_agent(stack, "discover", *common, "--chains")
    assert out.returncode == 0, out.stderr
    assert f"{LAN_PANEL} (maxhub-panel): maxhub-lan -> reachability" in out.stdout
    assert f"{PING_PANEL} (maxhub-panel-unmanaged): reachability" in out.stdout
    proposal = yaml.safe_load(out.stdout)
    assert proposal == {"agent": {"enable_collectors": []}}


def test_check_outside_class_warns_that_a_silent_panel_may_be_off(no_class: Stack) -> None:
    stack = no_class
    stack.simulate()
    common = ["--config", str(stack.config), "--address-map", str(stack.address_map)]
    out = run_agent(stack, "check", *common, "--mqtt-url", stack.broker_url, "--json")
    results = {r["check"]: r for r in json.loads(out.stdout)}
    for device in (LAN_PANEL, PING_PANEL):
        result = results[f"device {device} (127.0.0.1)"]
        assert result["status"] == "warn", result
        assert "Outside class hours: it may be switched off" in result["detail"]
        assert "refused" in result["detail"]  # the reason itself is still given
    assert out.returncode == 0, out.stdout  # warnings only: nothing failed
