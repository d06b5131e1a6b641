"""`fleet-agent enroll`: trade a one-time enrolment token for this site's config and broker
credential, and write them where `fleet-agent run` finds them, readable by the owner only.

Writes `<dir>/<site>.yaml` (the site config, secrets as `secret:NAME` references) and
`<dir>/<site>.env` (FLEET_MQTT_URL, FLEET_MQTT_PASSWORD, FLEET_AGENT_SECRETS_FILE and the
device secrets to fill in, in systemd's EnvironmentFile syntax), both mode 0600: with the
default `/etc/fleet-agent`, exactly the two files `deploy/systemd/fleet-agent@.service` reads
for the instance `fleet-agent@<site>`. Enrolling again rotates the broker password and keeps
the device secrets already filled in. Standard library only: the agent has no httpx.
"""

from __future__ import annotations

import json
import os
import pwd
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import ValidationError

from agent.env_file import EnvFileError, env_line, read_env_file, render_env_file
from agent.secrets import SECRETS_FILE_ENV
from fleet.protocol.enrolment import (
    EnrolmentAnswer,
    EnrolmentAnswerError,
    enrol_token_problem,
    inside,
    parse_enrolment_answer,
)
from fleet.protocol.messages import CONTROL_RE, describe_validation_error

ENROL_PATH = "/api/v1/enrolment"
# The user deploy/systemd/fleet-agent@.service runs as.
UNIT_USER = "fleet-agent"
_MANAGED = ("FLEET_MQTT_URL", "FLEET_MQTT_PASSWORD", "FLEET_TOPIC_ROOT", SECRETS_FILE_ENV)


class EnrolError(Exception):
    """Enrolment failed: what happened and what to do."""


@dataclass(frozen=True)
class Enrolled:
    """What enrolment wrote: the site code, the config and env file paths, the broker URL (with the
    site's user) and the device secrets still to fill in the env file."""

    site: str
    config_path: Path
    env_path: Path
    mqtt_url: str
    secrets_missing: list[str]


MAX_ANSWER_BYTES = 8 * 1024 * 1024


def fetch_enrolment(controller: str, token: str, ca_file: str | None = None) -> object:
    """POST the token to the controller's enrolment URL; its JSON answer, unchecked (see
    `fleet.protocol.enrolment`). Raises EnrolError saying what went wrong and what to do."""
    if urlsplit(controller).scheme not in ("http", "https") or not urlsplit(controller).netloc:
        raise EnrolError(
            f"--controller {controller[:80]!r} is not an http(s) URL: pass the controller's "
            "address, e.g. https://fleet.example"
        )
    url = controller.rstrip("/") + ENROL_PATH
    request = urllib.request.Request(  # noqa: S310  (http(s) checked above)
        url,
        data=json.dumps({"token": token}).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    context = ssl.create_default_context(cafile=ca_file) if url.startswith("https") else None
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:  # noqa: S310  (http(s) checked above)
            data = response.read(MAX_ANSWER_BYTES + 1)
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
    if len(data) > MAX_ANSWER_BYTES:
        raise EnrolError(f"the controller's answer at {url} is over 8 MiB: nothing was written")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise EnrolError(
            f"the controller's answer at {url} is not JSON: is {controller} a classroom-fleet "
            "controller?"
        ) from None


def _detail(exc: urllib.error.HTTPError) -> str:
    """The controller's `detail`, made safe to print (no terminal control codes), capped."""
    try:
        text = str(json.loads(exc.read(64 * 1024)).get("detail", exc.reason))
    except (ValueError, AttributeError, RecursionError):
        text = str(exc.reason)
    return CONTROL_RE.sub("?", text.replace("\n", " "))[:500]


def enrol(
    controller: str,
    token: str,
    out_dir: Path,
    ca_file: str | None = None,
    owner: str | None = None,
) -> Enrolled:
    """Redeem `token` at `controller` and write `<out_dir>/<site>.yaml` and `<site>.env`.

    The token's shape is checked before the network, and the controller's whole answer against
    the contract (`fleet.protocol.enrolment`) before any of it reaches a path or a file: a site
    code that is not one (`../escaped/evil`), a password with a line break, a config that is not
    this site's are refused with EnrolError, and nothing is written. `owner` (a user name) gets
    both files, as the unit that reads them runs as that user; None keeps the caller's.
    Raises EnrolError (what happened, what to do) or OSError (cannot write)."""
    problem = enrol_token_problem(token)
    if problem:
        raise EnrolError(problem)
    raw = fetch_enrolment(controller, token, ca_file)
    try:
        answer = parse_enrolment_answer(raw)
    except EnrolmentAnswerError as exc:
        raise EnrolError(
            f"the controller's answer is off the contract, so nothing was written ({exc}): is "
            f"{controller} a classroom-fleet controller of the same version?"
        ) from None
    site = answer.site
    _check_site_config(answer)
    mqtt_url = _with_user(answer.mqtt.url, answer.mqtt.username)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_name, env_name = answer.file_names()
    config_path = inside(out_dir, config_name)
    env_path = inside(out_dir, env_name)
    try:
        kept = read_env_file(env_path) if env_path.exists() else {}
    except EnvFileError as exc:
        # Rewriting it would lose the device secrets a technician filled in: say where instead.
        raise EnrolError(
            f"{env_path} cannot be read ({exc}), so nothing was written: the device secrets "
            "in it would be lost. Fix that line (or move the file away) and enrol again"
        ) from None
    managed = {
        "FLEET_MQTT_URL": mqtt_url,
        "FLEET_MQTT_PASSWORD": answer.mqtt.password,
        "FLEET_TOPIC_ROOT": answer.mqtt.topic_root,
        SECRETS_FILE_ENV: str(env_path.resolve()),
    }
    others = {k: v for k, v in kept.items() if k not in _MANAGED and _writable(v)}
    missing = [name for name in answer.secrets_needed if not others.get(name)]
    trailer = ["# Device secrets the site config refers to: fill these in."] if missing else []
    trailer += [f"{name}=" for name in missing]
    try:
        text = render_env_file(
            f"Written by `fleet-agent enroll` for site {site}. Mode 0600: it holds secrets.\n"
            "systemd's EnvironmentFile syntax: values double-quoted, \\ \" $ ` escaped.",
            {**managed, **others},
            trailer,
        )
    except EnvFileError as exc:
        raise EnrolError(f"cannot write {env_path}: {exc}") from None
    uid_gid = _owner_ids(owner)
    write_private(config_path, answer.config_yaml, uid_gid)
    write_private(env_path, text, uid_gid)
    return Enrolled(site, config_path, env_path, mqtt_url, missing)


def _writable(value: str) -> bool:
    try:
        env_line("K", value)
    except EnvFileError:
        return False
    return True


def _check_site_config(answer: EnrolmentAnswer) -> None:
    """The config must be a site config of this very site: the agent will run it."""
    import yaml

    from fleet.protocol.documents import parse_yaml
    from fleet.protocol.site_config import SiteConfig

    try:
        data = parse_yaml(answer.config_yaml)
        config = SiteConfig.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        what = describe_validation_error(exc) if isinstance(exc, ValidationError) else exc
        raise EnrolError(
            f"the controller sent a site config the agent cannot read ({str(what)[:300]}): "
            "nothing was written; ask ops to check the site's config on the controller"
        ) from None
    if config.site.code != answer.site:
        raise EnrolError(
            f"the controller enrolled site {answer.site!r} but sent the config of "
            f"{config.site.code!r}: nothing was written; ask ops"
        )


def default_owner() -> str | None:
    """The user the shipped unit runs as (`fleet-agent`), when this host has it and this
    process may give files away (root); else None, keeping the caller's ownership."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(UNIT_USER)
    except KeyError:
        return None
    return UNIT_USER


def _owner_ids(owner: str | None) -> tuple[int, int] | None:
    if owner is None:
        return None
    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        raise EnrolError(
            f"no user {owner!r} on this host: create it (useradd --system {owner}) "
            "or pass --owner with an existing user"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _with_user(url: str, username: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{quote(username, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def write_private(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    """Write with mode 0600 from the first byte, owned by `owner` (uid, gid) when given,
    replacing any older file whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
        if owner is not None:
            os.fchown(out.fileno(), *owner)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
