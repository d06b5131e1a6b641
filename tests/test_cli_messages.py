"""The commands say what happened and what to do: `fleet-agent check` shows progress before its
table, says "credentials accepted" only when the broker proves it checks them, words a broker
outage for what check is (no outbox), names an unreachable controller plainly, and counts a
config it cannot load as a failed check (exit 1); `fleet users add` refuses a vendor the fleet
does not know and a guessable password; `fleet serve` keeps APScheduler's per-run lines out of
its default log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.brokers import OwnMosquitto
from fleet.embedded_broker import free_port
from tests.procs import BIN

ROOT = Path(__file__).resolve().parents[1]
LAB_SITE = """\
site: {code: lab, name: Install lab, country: Malaysia, timezone: Asia/Kuala_Lumpur}
timetable:
  weekly:
    mon: ["08:00-10:00"]
agent: {id: lab-agent-1}
rooms:
  - id: lab-room-1
    name: Lab room
    devices:
      # SNMP only: a panel's reachability way would vouch for it, loopback answering ICMP.
      - {id: lab-panel-1, profile: snmp-projector, address: 127.0.0.1, port: %(port)d}
"""


def clean_env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    return {**env, "COLUMNS": "200", **more}


@pytest.fixture
def lab_config(tmp_path: Path) -> Path:
    sites = tmp_path / "site_configs"
    sites.mkdir()
    path = sites / "lab.yaml"
    path.write_text(LAB_SITE % {"port": free_port()})  # a closed loopback port
    return path


def test_check_shows_progress_first_and_does_not_vouch_for_an_open_broker(
    lab_config: Path, own_mosquitto: OwnMosquitto
) -> None:
    # The test's own Mosquitto lets anyone in: any password would do.
    url = f"mqtt://site-lab@127.0.0.1:{own_mosquitto.port}"
    check = subprocess.Popen(
        [
            str(BIN / "fleet-agent"),
            "check",
            "--config",
            str(lab_config),
            "--json",
            "--mqtt-url",
            url,
        ],
        env=clean_env(FLEET_MQTT_PASSWORD="the-right-one-maybe"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert check.stderr is not None
    first = check.stderr.readline()
    second = check.stderr.readline()
    # Said while the slow part (a device that does not answer) is still running.
    still_running = check.poll() is None
    out, rest = check.communicate(timeout=120)
    assert first.startswith("checking ") and str(lab_config) in first
    assert "checking the broker" in second and "1 devices (up to" in second
    assert still_running
    assert "devices: 0 of 1 answered" in rest
    assert check.returncode == 1  # the device failed
    broker = next(r for r in json.loads(out) if r["check"] == "broker")
    assert broker["status"] == "warn"
    assert "also takes a wrong password" in broker["detail"]
    assert "credentials accepted" not in broker["detail"]


def test_check_words_an_outage_and_a_wrong_controller_plainly(lab_config: Path) -> None:
    closed = free_port()
    result = subprocess.run(
        [
            str(BIN / "fleet-agent"),
            "check",
            "--config",
            str(lab_config),
            "--json",
            "--mqtt-url",
            f"mqtt://127.0.0.1:{closed}",
            "--controller",
            f"http://127.0.0.1:{closed}",
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    results = {r["check"]: r for r in json.loads(result.stdout)}
    broker = results["broker"]
    assert broker["status"] == "fail"
    assert "check sends nothing" in broker["detail"]
    assert "wait in the outbox" not in result.stdout + result.stderr
    clock = results["clock"]
    assert f"cannot reach the controller at http://127.0.0.1:{closed}/healthz" in clock["detail"]
    assert "urlopen error" not in clock["detail"] and "Errno" not in clock["detail"]
    assert result.returncode == 1


def test_check_counts_a_config_it_cannot_load_as_a_failed_check(
    tmp_path: Path, own_mosquitto: OwnMosquitto
) -> None:
    misnamed = tmp_path / "site.yaml"  # site code upm in a file not named upm.yaml
    misnamed.write_text((ROOT / "site_configs" / "upm.yaml").read_text())
    result = subprocess.run(
        [
            str(BIN / "fleet-agent"),
            "check",
            "--config",
            str(misnamed),
            "--json",
            "--mqtt-url",
            own_mosquitto.url,
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    results = json.loads(result.stdout)
    config = [r for r in results if r["check"] == "config"]
    assert config and config[0]["status"] == "fail"
    assert "differs from the file name" in config[0]["detail"]
    assert any(r["check"] == "broker" for r in results)  # the rest still checked


@pytest.fixture
def users_env(tmp_path: Path) -> dict[str, str]:
    return clean_env(FLEET_DATA_DIR=str(tmp_path / "data"))


def users_add(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "fleet"), "users", "add", *args, "--token-days", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["v1", "--role", "vendor", "--vendor", "Seewoo"], "did you mean 'Seewo'"),
        (["v2", "--role", "vendor", "--vendor", "Nobody"], "unknown vendor 'Nobody'"),
        (["o1", "--role", "ops", "--password", "1"], "at least 12"),
        (["o2", "--role", "ops", "--password", "password1234"], "too easy to guess"),
        (["o3", "--role", "ops", "--password", "o3o3o3o3o3o3o3"], "too easy to guess"),
        (["t1", "--role", "technician", "--site", "UPM"], "use --site upm"),
    ],
)
def test_users_add_refuses_what_would_give_a_useless_or_weak_user(
    users_env: dict[str, str], args: list[str], says: str
) -> None:
    result = users_add(users_env, *args)
    assert result.returncode == 2
    assert says in result.stderr, result.stderr


def test_users_add_takes_a_vendor_in_any_case_and_says_where(
    users_env: dict[str, str], tmp_path: Path
) -> None:
    result = users_add(users_env, "v3", "--role", "vendor", "--vendor", "seewo")
    assert result.returncode == 0, result.stderr
    assert "vendor: Seewo" in result.stdout  # as the fleet spells it
    assert f"sqlite:///{tmp_path / 'data' / 'fleet.db'}" in result.stderr


@pytest.mark.parametrize(("level", "shown"), [("info", False), ("debug", True)])
def test_apscheduler_run_lines_stay_out_of_the_default_log(level: str, shown: bool) -> None:
    probe = (
        "import logging; from fleet.cli import _logging; "
        f"_logging({level!r}); "
        "print(logging.getLogger('apscheduler.executors.default').isEnabledFor(logging.INFO), "
        "logging.getLogger('fleet').isEnabledFor(logging.INFO))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == [str(shown), "True"]


def test_programme_of_an_empty_database_says_which_and_what_to_do(
    users_env: dict[str, str], tmp_path: Path
) -> None:
    # `users add` migrates the data folder's database; nobody has loaded the sites into it.
    assert users_add(users_env, "o4", "--role", "ops").returncode == 0
    result = subprocess.run(
        [str(BIN / "fleet"), "programme"],
        env=users_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"no site has a programme in database sqlite:///{tmp_path / 'data'}" in result.stderr
    assert "FLEET_DATA_DIR" in result.stderr
