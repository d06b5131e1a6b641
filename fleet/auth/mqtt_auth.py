"""Broker credentials: one per site, made (and rotated) at enrolment, and their export as a
Mosquitto password file and ACL file.

A site's credential may publish only its own site's agent topics (never `cmd`) and read only
its own `cmd`; the controller's credential reads and writes everything under the topic root.
The controller keeps only Mosquitto's hash of each site's password.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session, col, select

from fleet.auth.models import MqttCredential
from fleet.auth.passwords import mosquitto_hash
from fleet.protocol.messages import utcnow

SITE_USER_PREFIX = "site-"
# What a site agent publishes, under <root>/<site>/ (fleet/protocol.py's Topics).
SITE_WRITES = ("agent/state", "health", "devices/+/health", "events", "cmd/ack")
SITE_READS = ("cmd",)
# A controller user goes into `passwd` (`user:hash`) and into an ACL line (`user NAME`): a colon,
# a space or a line break there would write a login or a grant nobody asked for.
BROKER_USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class ExportError(ValueError):
    """The broker's files cannot be written as asked: the message says why and what to do."""


def site_username(site_code: str) -> str:
    """The broker user name of a site's agent: `site-<code>`."""
    return f"{SITE_USER_PREFIX}{site_code}"


def rotate_site_credential(session: Session, site_code: str) -> tuple[str, str]:
    """A new password for the site's broker user (the old one stops working at the next
    export). Returns (username, password); the password is not kept. Joins the caller's
    transaction."""
    password = secrets.token_urlsafe(24)
    row = session.get(MqttCredential, site_code)
    if row is None:
        row = MqttCredential(
            site_code=site_code,
            username=site_username(site_code),
            password_hash=mosquitto_hash(password),
            rotated_at=utcnow(),
        )
    else:
        row.password_hash = mosquitto_hash(password)
        row.rotated_at = utcnow()
    session.add(row)
    return row.username, password


@dataclass(frozen=True)
class ControllerLogin:
    """The controller's broker login; `more_users` share its password and ACL, one per
    further controller process (each ingest worker), since the shipped broker config makes a
    client's id its user name (`use_username_as_clientid`) and two processes on one user
    would take each other's session."""

    username: str
    password: str
    more_users: tuple[str, ...] = ()

    @property
    def users(self) -> tuple[str, ...]:
        """Every broker user of the controller's processes, its own first."""
        return (self.username, *self.more_users)


def acl_text(topic_root: str, controller_user: str | tuple[str, ...], site_codes: list[str]) -> str:
    """Mosquitto's ACL file: each controller user reads and writes the whole root; each
    site's user writes its agent topics and reads its `cmd`, nothing else."""
    users = (controller_user,) if isinstance(controller_user, str) else controller_user
    lines = [
        "# Written by `fleet mqtt-auth export`: regenerate, do not edit.",
        "# Anything not granted here is denied (and anonymous access is off).",
    ]
    for user in users:
        lines += ["", f"user {user}", f"topic readwrite {topic_root}/#"]
    for code in site_codes:
        lines += ["", f"user {site_username(code)}"]
        lines += [f"topic write {topic_root}/{code}/{suffix}" for suffix in SITE_WRITES]
        lines += [f"topic read {topic_root}/{code}/{suffix}" for suffix in SITE_READS]
    return "\n".join(lines) + "\n"


def export_mosquitto(
    session: Session,
    out_dir: Path,
    controller: ControllerLogin,
    topic_root: str,
    owner: tuple[int, int] | None = None,
) -> tuple[Path, Path]:
    """Write `passwd` and `acl` into out_dir, mode 0600, owned by `owner` (uid, gid) when
    given: Mosquitto started as root reads them after it has dropped to its own user.
    Returns their paths. Raises ExportError for a controller user that is also a site's or
    that the files cannot hold (a colon, a blank, a line break: see BROKER_USER_RE),
    PermissionError when the files cannot be given to `owner` (not root)."""
    for user in controller.users:
        if not BROKER_USER_RE.fullmatch(user):
            raise ExportError(
                f"the controller's MQTT user {user[:80]!r} cannot be written to the broker's "
                "files: use letters, digits and . _ @ - (up to 64, starting with a letter or "
                "digit), in FLEET_MQTT_URL and in each --controller-user"
            )
    rows = session.exec(select(MqttCredential).order_by(col(MqttCredential.site_code))).all()
    site_users = {r.username for r in rows}
    clash = [u for u in controller.users if u in site_users]
    if clash:
        raise ExportError(
            f"the controller's MQTT user {clash[0]!r} is also a site's: pick "
            "another user name in FLEET_MQTT_URL"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    controller_hash = mosquitto_hash(controller.password)
    entries = [f"{user}:{controller_hash}" for user in controller.users]
    entries += [f"{r.username}:{r.password_hash}" for r in rows]
    passwd = out_dir / "passwd"
    acl = out_dir / "acl"
    _write_private(passwd, "\n".join(entries) + "\n", owner)
    _write_private(acl, acl_text(topic_root, controller.users, [r.site_code for r in rows]), owner)
    return passwd, acl


def _write_private(path: Path, text: str, owner: tuple[int, int] | None) -> None:
    """Create with mode 0600 from the start, given to `owner` before it takes the name: never
    a moment when others can read it, nor one when the broker finds a file it cannot read."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            if owner is not None:
                os.fchown(out.fileno(), *owner)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
