"""`fleet-agent enroll`: trade a one-time enrolment token for this site's config and broker
credential, and write them where `fleet-agent run` finds them, readable by the owner only.

Writes `<dir>/<site>.yaml` (the site config, secrets as `secret:NAME` references) and
`<dir>/<site>.env` (FLEET_MQTT_URL, FLEET_MQTT_PASSWORD, FLEET_AGENT_SECRETS_FILE and the
device secrets to fill in), both mode 0600. Enrolling again rotates the broker password and
keeps the device secrets already filled in. Standard library only: the agent has no httpx.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from agent.secrets import SECRETS_FILE_ENV, read_env_file

ENROL_PATH = "/api/v1/enrolment"
_MANAGED = ("FLEET_MQTT_URL", "FLEET_MQTT_PASSWORD", "FLEET_TOPIC_ROOT", SECRETS_FILE_ENV)


class EnrolError(Exception):
    """Enrolment failed: what happened and what to do."""


@dataclass(frozen=True)
class Enrolled:
    site: str
    config_path: Path
    env_path: Path
    mqtt_url: str
    secrets_missing: list[str]


def fetch_enrolment(controller: str, token: str, ca_file: str | None = None) -> dict[str, object]:
    url = controller.rstrip("/") + ENROL_PATH
    request = urllib.request.Request(  # noqa: S310  (the technician's own --controller)
        url,
        data=json.dumps({"token": token}).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    context = ssl.create_default_context(cafile=ca_file) if url.startswith("https") else None
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:  # noqa: S310  (the technician's own --controller)
            body: dict[str, object] = json.loads(response.read())
            return body
    except urllib.error.HTTPError as exc:
        detail = _detail(exc)
        if exc.code == 401:
            raise EnrolError(f"the controller refused the token: {detail}") from None
        raise EnrolError(f"the controller answered {exc.code} at {url}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise EnrolError(
            f"cannot reach the controller at {url} ({reason}): check --controller and the "
            "site's link (and --ca for a private certificate authority)"
        ) from None


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read()).get("detail", exc.reason))
    except (ValueError, AttributeError):
        return str(exc.reason)


def enrol(controller: str, token: str, out_dir: Path, ca_file: str | None = None) -> Enrolled:
    answer = fetch_enrolment(controller, token, ca_file)
    try:
        site = str(answer["site"])
        config_yaml = str(answer["config_yaml"])
        mqtt = answer["mqtt"]
        assert isinstance(mqtt, dict)
        needed = [str(n) for n in answer.get("secrets_needed") or []]  # type: ignore[attr-defined]
        mqtt_url = _with_user(str(mqtt["url"]), str(mqtt["username"]))
        password, topic_root = str(mqtt["password"]), str(mqtt["topic_root"])
    except (KeyError, AssertionError, TypeError) as exc:
        raise EnrolError(
            f"the controller's answer lacks {exc}: is {controller} a classroom-fleet controller "
            "of the same version?"
        ) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / f"{site}.yaml"
    env_path = out_dir / f"{site}.env"
    kept = read_env_file(env_path) if env_path.exists() else {}
    lines = [
        f"# Written by `fleet-agent enroll` for site {site}. Mode 0600: it holds secrets.",
        f"FLEET_MQTT_URL={mqtt_url}",
        f"FLEET_MQTT_PASSWORD={password}",
        f"FLEET_TOPIC_ROOT={topic_root}",
        f"{SECRETS_FILE_ENV}={env_path.resolve()}",
    ]
    others = {k: v for k, v in kept.items() if k not in _MANAGED}
    lines += [f"{k}={v}" for k, v in others.items()]
    missing = [name for name in needed if not others.get(name)]
    if missing:
        lines.append("# Device secrets the site config refers to: fill these in.")
        lines += [f"{name}=" for name in missing]
    write_private(config_path, config_yaml)
    write_private(env_path, "\n".join(lines) + "\n")
    return Enrolled(site, config_path, env_path, mqtt_url, missing)


def _with_user(url: str, username: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{quote(username, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def write_private(path: Path, text: str) -> None:
    """Write with mode 0600 from the first byte, replacing any older file whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
