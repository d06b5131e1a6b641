"""Agent enrolment end to end, over real HTTP: a one-time token works once, the agent's config
and credential are written with mode 0600, re-enrolling rotates the credential, and the site
config reaches the agent without its secrets."""

from __future__ import annotations

import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine
from sqlmodel import Session, select

from agent.enrol import EnrolError, enrol
from agent.secrets import read_env_file
from fleet.api.app import create_app
from fleet.auth.models import AuditEntry, EnrolmentToken, MqttCredential
from fleet.auth.passwords import verify_mosquitto_hash
from fleet.auth.tokens import issue_enrolment_token
from fleet.embedded_broker import free_port
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR, load_site
from fleet.settings import Settings
from tests.fixtures_auth import Tokens
from tests.procs import BIN


@pytest.fixture
def controller(registered: Engine) -> Iterator[str]:
    settings = Settings(
        database_url=str(registered.url),
        mqtt_url="mqtts://fleet-controller@broker.test:8883?ca=/etc/ca.pem",
    )
    app = create_app(settings, registered)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def new_token(controller: str, tokens: Tokens, site: str, role: str = "technician") -> str:
    answer = httpx.post(
        f"{controller}/api/v1/enrolment/tokens", json={"site": site}, headers=tokens.headers(role)
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["command"].endswith(f"--token {body['token']}")
    return str(body["token"])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_token_works_once_and_writes_private_config(
    controller: str, tokens: Tokens, registered: Engine, tmp_path: Path
) -> None:
    token = new_token(controller, tokens, "upm")
    done = enrol(controller, token, tmp_path / "etc")
    assert done.site == "upm"
    assert mode(done.config_path) == mode(done.env_path) == 0o600
    assert load_site(done.config_path, DEFAULT_PROFILES_DIR).config.code == "upm"
    env = read_env_file(done.env_path)
    assert env["FLEET_MQTT_URL"] == "mqtts://site-upm@broker.test:8883?ca=/etc/ca.pem"
    with Session(registered) as session:
        credential = session.get(MqttCredential, "upm")
        assert credential is not None
        assert verify_mosquitto_hash(env["FLEET_MQTT_PASSWORD"], credential.password_hash)
        assert env["FLEET_MQTT_PASSWORD"] not in credential.password_hash
        stored = session.exec(select(EnrolmentToken)).one()
        assert token not in stored.token_hash and stored.used_at is not None

    with pytest.raises(EnrolError, match="already used"):
        enrol(controller, token, tmp_path / "again")
    assert not (tmp_path / "again").exists()
    with Session(registered) as session:
        outcomes = [(e.action, e.outcome) for e in session.exec(select(AuditEntry))]
    assert ("enrol", "ok") in outcomes and ("enrol", "denied") in outcomes


def test_re_enrolling_rotates_the_credential(
    controller: str, tokens: Tokens, registered: Engine, tmp_path: Path
) -> None:
    first = enrol(controller, new_token(controller, tokens, "upm"), tmp_path)
    old = read_env_file(first.env_path)["FLEET_MQTT_PASSWORD"]
    second = enrol(controller, new_token(controller, tokens, "upm", role="ops"), tmp_path)
    new = read_env_file(second.env_path)["FLEET_MQTT_PASSWORD"]
    assert old != new
    with Session(registered) as session:
        credential = session.get(MqttCredential, "upm")
        assert credential is not None
        assert verify_mosquitto_hash(new, credential.password_hash)
        assert not verify_mosquitto_hash(old, credential.password_hash)


def test_expired_or_malformed_tokens_are_refused(
    controller: str, registered: Engine, tmp_path: Path
) -> None:
    with Session(registered) as session:
        expired, _ = issue_enrolment_token(session, "upm", "test", ttl=timedelta(seconds=-1))
    with pytest.raises(EnrolError, match="expired"):
        enrol(controller, expired, tmp_path)
    with pytest.raises(EnrolError, match="should start with 'enrol_'"):
        enrol(controller, "fleet_not-an-enrolment-token", tmp_path)
    with Session(registered) as session:
        assert session.exec(select(MqttCredential)).all() == []


def test_vendor_cannot_make_enrolment_tokens(controller: str, tokens: Tokens) -> None:
    answer = httpx.post(
        f"{controller}/api/v1/enrolment/tokens",
        json={"site": "upm"},
        headers=tokens.headers("vendor"),
    )
    assert answer.status_code == 403


def test_site_config_reaches_the_agent_without_its_secrets(
    controller: str, tokens: Tokens, tmp_path: Path
) -> None:
    """ugb's projector has a PJLink password in the YAML: the agent gets a reference to it."""
    token = new_token(controller, tokens, "ugb", role="ops")
    answer = httpx.post(f"{controller}/api/v1/enrolment", json={"token": token})
    assert answer.status_code == 200
    assert "example-ugb" not in answer.text
    assert "secret:UGB_SC1_PROJECTOR_PASSWORD" in answer.json()["config_yaml"]
    assert answer.json()["secrets_needed"] == ["UGB_SC1_PROJECTOR_PASSWORD"]


def test_fleet_agent_enroll_command(controller: str, tokens: Tokens, tmp_path: Path) -> None:
    token = new_token(controller, tokens, "upm")
    command = [str(BIN / "fleet-agent"), "enroll", "--controller", controller]
    out = subprocess.run(
        [*command, "--token", token, "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "enrolled site upm" in out.stdout and mode(tmp_path / "upm.env") == 0o600
    again = subprocess.run(
        [*command, "--token", token, "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 1
    assert "already used" in again.stderr and token not in again.stderr
