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
from fleet.protocol.messages import utcnow

log = logging.getLogger("fleet.audit")


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
    change it describes); with an Engine, it commits on its own."""
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


def audit_request(request: Any, action: str, target: str = "", **detail: Any) -> None:
    """An entry for the caller of this request (set by the Permission dependency)."""
    caller = getattr(request.state, "caller", None)
    record(
        request.app.state.engine,
        actor=getattr(caller, "name", "anonymous"),
        role=getattr(caller, "role", ""),
        action=action,
        target=target,
        detail=detail or None,
    )
