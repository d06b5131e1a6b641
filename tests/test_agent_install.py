"""The site agent installed as a technician installs it: `fleet-agent enroll` against a real
controller writes exactly the files the shipped systemd unit reads, and the unit's ExecStart,
run as written with its EnvironmentFile loaded, publishes. Against a hostile controller,
enrolment writes nothing outside --out-dir and nothing that adds a line to the env file."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine

from agent.enrol import EnrolError, enrol
from agent.env_file import EnvFileError, env_line, parse_env_text, render_env_file
from agent.secrets import SecretMissing, Secrets
from bench.brokers import MosquittoMissing, OwnMosquitto
from fleet.api.app import create_app
from fleet.db import make_engine, migrate
from fleet.devices.registry import sync_registry
from fleet.embedded_broker import free_port
from fleet.protocol.enrolment import (
    ENROL_PREFIX,
    EnrolmentAnswerError,
    enrol_token_problem,
    inside,
    parse_enrolment_answer,
)
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR, load_sites
from fleet.settings import Settings
from tests.conftest import need
from tests.fixtures_auth import ops_headers
from tests.procs import BIN, wait_for

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "systemd" / "fleet-agent@.service"
WHOLE_TOKEN = ENROL_PREFIX + "A" * 43

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


def unit_settings(path: Path) -> dict[str, list[str]]:
    """The [Service] keys of a unit file, each with every value it is given."""
    section = ""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}{key}", []).append(value)
    return out


# --- a real controller with a site of loopback devices ------------------------------------------


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Engine, Path]]:
    """A migrated SQLite registry holding the one site `lab`, whose device is on loopback."""
    sites = tmp_path / "sites"
    sites.mkdir()
    # A closed loopback port: the device is unreachable, and the agent says so in a reading.
    (sites / "lab.yaml").write_text(LAB_SITE % {"port": free_port()})
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrate(engine)
    sync_registry(engine, load_sites(sites, DEFAULT_PROFILES_DIR))
    yield engine, sites
    engine.dispose()


def serve_app(app: Any) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, "the controller")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[OwnMosquitto]:
    own = OwnMosquitto(tmp_path / "broker")
    try:
        own.start()
    except MosquittoMissing as exc:
        need("mosquitto", f"{exc}; .ci/run expects it")
    yield own
    own.stop()


def test_enrolment_writes_what_the_unit_reads_and_its_execstart_publishes(
    lab: tuple[Engine, Path], broker: OwnMosquitto, tmp_path: Path
) -> None:
    engine, _ = lab
    root = f"t{uuid.uuid4().hex[:8]}/v1"
    settings_ = Settings(
        database_url=str(engine.url),
        mqtt_url=f"mqtt://fleet-controller@127.0.0.1:{broker.port}",
        topic_root=root,
    )
    headers = ops_headers(engine)
    controller = next(gen := serve_app(create_app(settings_, engine)))
    try:
        answer = httpx.post(
            f"{controller}/api/v1/enrolment/tokens",
            json={"site": "lab"},
            headers=headers,
        )
        assert answer.status_code == 201, answer.text
        etc = tmp_path / "etc" / "fleet-agent"
        enrolled = subprocess.run(
            [
                str(BIN / "fleet-agent"),
                "enroll",
                "--controller",
                controller,
                "--token",
                answer.json()["token"],
                "--out-dir",
                str(etc),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert enrolled.returncode == 0, enrolled.stderr
        assert "fleet-agent@lab" in enrolled.stdout
    finally:
        next(gen, None)

    # The unit, read as written: its instance is the site code.
    unit = unit_settings(UNIT)
    (env_file,) = unit["[Service]EnvironmentFile"]
    (exec_start,) = unit["[Service]ExecStart"]
    assert not env_file.startswith("-"), "a missing env file must stop the start"
    # Only the install prefixes move into the test's folders; every option stays as written.
    moved = {
        "/opt/fleet-agent/bin/": f"{BIN}/",
        "/etc/fleet-agent/": f"{etc}/",
        "/var/lib/fleet-agent": str(tmp_path / "var-lib"),
    }

    def as_installed(text: str) -> str:
        text = text.replace("%i", "lab")
        for old, new in moved.items():
            text = text.replace(old, new)
        return text

    env_path = Path(as_installed(env_file))
    assert env_path == etc / "lab.env" and env_path.exists()
    assert Path(as_installed("/etc/fleet-agent/%i.yaml")).exists()
    for path in etc.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path

    received: list[dict[str, Any]] = []
    listener = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    listener.on_message = lambda _c, _u, m: received.append(json.loads(m.payload))
    listener.connect("127.0.0.1", broker.port)
    listener.subscribe(f"{root}/lab/health", qos=1)
    listener.loop_start()
    # The EnvironmentFile loaded as a POSIX shell reads it (the same rules as systemd's for
    # double-quoted values), then ExecStart exactly as written.
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    (tmp_path / "var-lib").mkdir()
    agent = subprocess.Popen(
        [
            "sh",
            "-c",
            f'set -a; . "$1"; set +a; exec {as_installed(exec_start)}',
            "sh",
            str(env_path),
        ],
        env=clean_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        batch = wait_for(lambda: received and received[0], 60, "a health batch from the unit")
        assert batch["site"] == "lab"
        assert [r["device"] for r in batch["readings"]] == ["lab-panel-1"]
    finally:
        agent.terminate()
        out, _ = agent.communicate(timeout=30)
        listener.loop_stop()
        listener.disconnect()
    assert "polling 1 devices" in out, out
    # A device that does not answer is said, with why, not left to silence.
    assert "device lab-panel-1 at 127.0.0.1:" in out and "unreachable" in out, out
    assert "every device polled once: 0 of 1 answered; unreachable: lab-panel-1" in out, out


@pytest.mark.parametrize(
    ("unit", "instance", "binary"),
    [
        (UNIT, "fleet-agent@upm.service", "opt/fleet-agent/bin/fleet-agent"),
        (
            UNIT.with_name("fleet-controller.service"),
            "fleet-controller.service",
            "opt/fleet/bin/fleet",
        ),
    ],
)
def test_shipped_units_pass_systemd_analyze_verify(
    tmp_path: Path, unit: Path, instance: str, binary: str
) -> None:
    """systemd's own check of each shipped unit (the agent's template as instance `upm`), in
    a root of the test's own: the ExecStart binary must exist in it, and the system's units
    give the targets the unit names."""
    verify = shutil.which("systemd-analyze")
    if verify is None:
        need("systemd-analyze", "Debian's systemd package; .ci/run installs it")
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    shutil.copy(unit, root / "etc/systemd/system" / unit.name)
    program = root / binary
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    target = root / "etc/systemd/system" / instance
    result = subprocess.run(
        [str(verify), "verify", "--man=no", f"--root={root}", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # verify passes a misspelt key with a warning only: none may appear.
    assert unit.name.split("@")[0].removesuffix(".service") not in result.stderr, result.stderr


# --- a hostile controller ---------------------------------------------------------------------


def good_answer(**changes: Any) -> dict[str, Any]:
    config = (ROOT / "site_configs" / "upm.yaml").read_text()
    answer: dict[str, Any] = {
        "site": "upm",
        "config_yaml": config,
        "mqtt": {
            "url": "mqtts://broker.example:8883",
            "username": "site-upm",
            "password": "Zx9_kQ-2mPq7rLs4vWn8",
            "topic_root": "fleet/v1",
        },
        "secrets_needed": [],
    }
    for key, value in changes.items():
        if key in answer["mqtt"]:
            answer["mqtt"][key] = value
        else:
            answer[key] = value
    return answer


class Hostile:
    """A controller on loopback that answers every enrolment with `self.answer`."""

    def __init__(self) -> None:
        self.answer: Any = good_answer()
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = (
                    hostile.answer
                    if isinstance(hostile.answer, bytes)
                    else json.dumps(hostile.answer).encode()
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def hostile() -> Iterator[Hostile]:
    server = Hostile()
    yield server
    server.close()


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"site": "../escaped/evil"}, "site"),
        ({"site": "/etc/cron.d/evil"}, "site"),
        ({"site": "upm/../../evil"}, "site"),
        ({"password": "x\nLD_PRELOAD=/tmp/evil.so"}, "password"),
        ({"username": "site-upm\nLD_PRELOAD=/x"}, "username"),
        ({"url": "mqtt://broker.example\nLD_PRELOAD=/x"}, "url"),
        ({"url": "file:///etc/passwd"}, "url"),
        ({"topic_root": "fleet/#"}, "topic_root"),
        ({"secrets_needed": ["LD_PRELOAD=/tmp/x"]}, "secrets_needed"),
        ({"secrets_needed": ["A\nB"]}, "secrets_needed"),
        ({"config_yaml": "site: {code: usthb}"}, "config"),
        ({"config_yaml": ": : not yaml ["}, "config"),
        # Values PyYAML's own loader raised a bare ValueError or RecursionError for.
        ({"config_yaml": "site: {code: upm}\nprogramme: [{planned: 2026-13-40}]"}, "config"),
        ({"config_yaml": "[" * 5000}, "config"),
    ],
)
def test_hostile_answers_write_nothing(
    hostile: Hostile, tmp_path: Path, change: dict[str, Any], named: str
) -> None:
    out = tmp_path / "sandbox" / "etc"
    hostile.answer = good_answer(**change)
    with pytest.raises(EnrolError) as refused:
        enrol(hostile.url, WHOLE_TOKEN, out)
    assert named in str(refused.value)
    assert "nothing was written" in str(refused.value)
    assert files_under(tmp_path) == set()
    assert not (tmp_path / "escaped").exists()


def test_usthb_config_under_upm_is_refused(hostile: Hostile, tmp_path: Path) -> None:
    usthb = (ROOT / "site_configs" / "usthb.yaml").read_text()
    hostile.answer = good_answer(config_yaml=usthb)
    with pytest.raises(EnrolError, match="config of 'usthb'"):
        enrol(hostile.url, WHOLE_TOKEN, tmp_path)
    assert files_under(tmp_path) == set()


@pytest.mark.parametrize(
    "body",
    [
        b"<html>",
        b"\xff\xfe",
        b"[1, 2]",
        b"null",
        json.dumps({"site": "upm"}).encode(),
        b"[" * 100_000,  # past the json module's recursion limit
        b'{"a":' * 50_000,
    ],
)
def test_answers_that_are_not_enrolments_are_refused(
    hostile: Hostile, tmp_path: Path, body: bytes
) -> None:
    hostile.answer = body
    with pytest.raises(EnrolError, match="classroom-fleet controller"):
        enrol(hostile.url, WHOLE_TOKEN, tmp_path)
    assert files_under(tmp_path) == set()


def test_good_answer_is_written_quoted_and_reads_back(hostile: Hostile, tmp_path: Path) -> None:
    password = "Zx9_kQ-2mPq7\"rL$s4`vW\\n8'"
    hostile.answer = good_answer(password=password)
    done = enrol(hostile.url, WHOLE_TOKEN, tmp_path)
    text = done.env_path.read_text()
    assert all(
        line.startswith("#") or re.match(r'^[A-Z_]+="', line) or line.endswith("=")
        for line in text.splitlines()
    ), text
    shell = subprocess.run(
        ["sh", "-c", 'set -a; . "$1"; printf %s "$FLEET_MQTT_PASSWORD"', "sh", done.env_path],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert shell.stdout == password
    assert parse_env_text(text)["FLEET_MQTT_PASSWORD"] == password


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        # A technician's hand edit leaves a quote open.
        (b'PJLINK_PASSWORD="filled in by hand\n', "opens a quote it never closes"),
        # An editor that saves Latin-1 (or Windows-1252): a password with an accented letter.
        (
            "PJLINK_PASSWORD=mot-de-passe-été\n".encode("latin-1"),
            r"line \d+ is not UTF-8 \(byte 0xe9\): save the file as UTF-8",
        ),
    ],
    ids=["open-quote", "latin-1"],
)
def test_an_env_file_it_cannot_read_is_left_as_it_is(
    hostile: Hostile, tmp_path: Path, edit: bytes, says: str
) -> None:
    """Enrolling again must not drop the secrets a technician filled in by hand: an env file
    it cannot read is named, with why, and left as it is."""
    hostile.answer = good_answer()
    done = enrol(hostile.url, WHOLE_TOKEN, tmp_path)
    edited = done.env_path.read_bytes() + edit
    done.env_path.write_bytes(edited)
    with pytest.raises(EnrolError, match=f"cannot be read \\(.*{says}"):
        enrol(hostile.url, WHOLE_TOKEN, tmp_path)
    assert done.env_path.read_bytes() == edited


def test_a_secrets_file_that_is_not_utf8_is_named_not_a_traceback(tmp_path: Path) -> None:
    """The running agent reads its device secrets from the same file."""
    secrets_file = tmp_path / "upm.env"
    secrets_file.write_bytes("# secrets\nPJLINK_PASSWORD=\xe9t\xe9\n".encode("latin-1"))
    with pytest.raises(SecretMissing, match="line 2 is not UTF-8"):
        Secrets(environ={}, file=secrets_file).resolve("secret:PJLINK_PASSWORD", "a password")


def test_cli_refuses_a_truncated_token_before_the_network(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(BIN / "fleet-agent"),
            "enroll",
            "--controller",
            "http://127.0.0.1:9",
            "--token",
            "enrol_abc",
            "--out-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "cut short: 3 of its 43 characters" in result.stderr
    assert "cannot reach" not in result.stderr


@pytest.mark.parametrize(
    ("token", "says"),
    [
        ("enrol_abc", "cut short"),
        ("fleet_" + "A" * 43, "should start with 'enrol_'"),
        (WHOLE_TOKEN + "A", "too long"),
        (ENROL_PREFIX + "A" * 42 + " ", "characters other than"),
        (WHOLE_TOKEN, None),
    ],
)
def test_token_problems_say_what_is_wrong(token: str, says: str | None) -> None:
    problem = enrol_token_problem(token)
    assert (problem is None) if says is None else (says in (problem or ""))


# --- the env file's syntax ----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    values=st.dictionaries(
        st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True),
        st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=40),
        max_size=5,
    )
)
def test_env_file_round_trips_every_writable_value(values: dict[str, str]) -> None:
    text = render_env_file("comment", values, [])
    assert len(text.split("\n")) == len(values) + 2  # no value adds a line
    assert parse_env_text(text) == values


@given(
    before=st.text(max_size=10),
    bad=st.sampled_from(["\x00", "\n", "\r", "\x1e", "\x85", "\u2028", "\x7f", "\x1b"]),
    after=st.text(max_size=10),
)
def test_env_file_refuses_line_breaks_and_control_characters(
    before: str, bad: str, after: str
) -> None:
    value = before + bad + after
    with pytest.raises(EnvFileError, match="KEY"):
        env_line("KEY", value)


def test_env_file_reads_systemd_syntax() -> None:
    text = (
        '# comment\n; also a comment\nA=plain value  \nB="dq \\" \\$ \\\\ \\n"\n'
        "C='sq \\n $x'\nD=\"two\nlines\"\nnot a line\nE=esc\\ aped\n"
    )
    assert parse_env_text(text) == {
        "A": "plain value",
        "B": 'dq " $ \\ \\n',
        "C": "sq \\n $x",
        "D": "two\nlines",
        "E": "esc aped",
    }
    with pytest.raises(EnvFileError, match="never closes"):
        parse_env_text('A="open\n')


def test_shell_and_our_reader_agree_on_the_env_file(tmp_path: Path) -> None:
    values = {"P": "a\"b'c$d`e\\f g", "Q": "", "R": "ünïcødé 漢字", "S": " lead and trail "}
    path = tmp_path / "x.env"
    path.write_text(render_env_file("c", values, []))
    script = "; ".join(f'printf "%s\\0" "${k}"' for k in values)
    shell = subprocess.run(
        ["sh", "-c", f'set -a; . "$1"; {script}', "sh", str(path)],
        capture_output=True,
        timeout=10,
    )
    assert shell.stdout.decode().split("\0")[:-1] == list(values.values())


@settings(max_examples=300, deadline=None)
@given(
    site=st.one_of(
        st.text(max_size=40),
        st.from_regex(r"[a-z./\\-]{1,20}", fullmatch=True),
        st.sampled_from(["..", ".", "../x", "a/b", "upm\x00", "UPM", "upm\n", "u" * 33]),
    ),
    password=st.one_of(st.text(max_size=300), st.binary(max_size=40).map(repr)),
)
def test_whatever_the_contract_takes_stays_in_the_folder_and_on_one_line(
    site: str, password: str
) -> None:
    try:
        answer = parse_enrolment_answer(good_answer(site=site, password=password))
    except EnrolmentAnswerError as exc:
        assert str(exc)  # refused with its reason
        return
    folder = Path("/srv/enrol")
    for name in answer.file_names():
        assert inside(folder, name).parent == folder
    line = env_line("FLEET_MQTT_PASSWORD", answer.mqtt.password)
    assert "\n" not in line and parse_env_text(line)["FLEET_MQTT_PASSWORD"] == password
