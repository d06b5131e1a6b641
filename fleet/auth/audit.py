"""The audit log: who did what, when, and whether it was allowed.

Written for logins, enrolments, milestone edits, rollout actions, report downloads and every
refusal. An entry never holds a secret: no token, password or key goes into `detail`.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from fleet.auth.models import AuditEntry
from fleet.protocol.messages import CONTROL_RE, utcnow

log = logging.getLogger("fleet.audit")
MAX_TEXT = 1000


def record(
    where: Engine | Session,
    *,
    actor: str,
    action: str,
    role: str = "",
    target: str = "",
    outcome: str = "ok",
    detail: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    """Add an entry. With a Session, it joins the caller's transaction (committed with the
    change it describes); with an Engine, it commits on its own. Text from the request (a
    path, a user name typed at the login) is written with its control characters escaped and
    its length capped: PostgreSQL's text holds no NUL, and a log line must not be rewritten."""
    actor, action, target = _plain(actor), _plain(action), _plain(target)
    if detail is not None:
        detail = {k: _plain(v) if isinstance(v, str) else v for k, v in detail.items()}
    entry = AuditEntry(
        at=at or utcnow(),
        actor=actor,
        role=role,
        action=action,
        target=target,
        outcome=outcome,
        detail=detail,
    )
    log.info("audit: %s %s %s %s (%s)", actor, action, target, outcome, role or "-")
    if isinstance(where, Session):
        where.add(entry)
        return
    try:
        with Session(where) as session:
            session.add(entry)
            session.commit()
    except SQLAlchemyError as exc:
        # A refusal must still be refused when the audit table is unwritable: log and go on.
        log.error("audit entry not written (%s): %s %s %s", exc, actor, action, target)


def _plain(text: str, limit: int = MAX_TEXT) -> str:
    # Lone surrogates (from a path that was not UTF-8) cannot be stored as UTF-8 either.
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    escaped = CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"
