"""The operator's moves on a rollout, by id: start, pause, resume, cancel.

The API and the rollouts page both come here, so a move means the same from either. The rules
of each move are `fleet.rollouts.campaigns`'; this finds the rollout and answers as the API
shows it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlmodel import Session

from fleet.rollouts.campaigns import cancel_rollout, pause_rollout, resume_rollout, start_rollout
from fleet.rollouts.models import Rollout
from fleet.rollouts.queries import rollout_out, rollout_row
from fleet.rollouts.schemas import RolloutOut

Move = Callable[[Session, int, datetime], RolloutOut]


def _move(
    session: Session,
    rollout_id: int,
    now: datetime,
    move: Callable[[Session, Rollout, datetime], None],
) -> RolloutOut:
    rollout = rollout_row(session, rollout_id)
    move(session, rollout, now)
    return rollout_out(session, rollout)


def start(
    session: Session, rollout_id: int, now: datetime, start_at: datetime | None = None
) -> RolloutOut:
    """Start a draft now, or schedule it for `start_at` when that is later. Raises
    RolloutNotFound, RolloutConflict (not a draft)."""
    return _move(session, rollout_id, now, lambda s, r, t: start_rollout(s, r, t, start_at))


def pause(session: Session, rollout_id: int, now: datetime) -> RolloutOut:
    """Raises RolloutNotFound, RolloutConflict (neither running nor scheduled)."""
    return _move(session, rollout_id, now, pause_rollout)


def resume(session: Session, rollout_id: int, now: datetime) -> RolloutOut:
    """Also the approval that lets a rollout paused after a wave go on. Raises
    RolloutNotFound, RolloutConflict (not paused)."""
    return _move(session, rollout_id, now, resume_rollout)


def cancel(session: Session, rollout_id: int, now: datetime) -> RolloutOut:
    """Raises RolloutNotFound, RolloutConflict (already ended)."""
    return _move(session, rollout_id, now, cancel_rollout)
