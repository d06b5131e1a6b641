"""What a person does to an alert: acknowledge it, or resolve it by hand.

The API and the alerts page both come here, so they cannot disagree about what an
acknowledgement is.
"""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from fleet.alerts.models import AlertState
from fleet.alerts.queries import alert_row
from fleet.alerts.reconcile import enqueue, resolve
from fleet.alerts.schemas import AckIn, AlertOut, ResolveIn


class AlertAlreadyResolved(ValueError):
    """The alert is resolved: there is nothing left to acknowledge or resolve."""


def acknowledge(session: Session, alert_id: int, ack: AckIn, now: datetime) -> AlertOut:
    """Mark the alert acknowledged by `ack.by`, with the note, and commit; again on an
    acknowledged one replaces who and the note. Raises AlertNotFound, AlertAlreadyResolved."""
    alert = alert_row(session, alert_id)
    if alert.state == AlertState.resolved:
        raise AlertAlreadyResolved(
            f"alert {alert_id} is already resolved ({alert.resolution}): nothing to acknowledge"
        )
    alert.state = AlertState.acknowledged.value
    alert.acknowledged_at = now
    alert.acknowledged_by = ack.by
    alert.ack_note = ack.note or None
    alert.updated_at = now
    session.add(alert)
    session.commit()
    session.refresh(alert)
    return AlertOut.model_validate(alert)


def resolve_by_hand(
    session: Session, alert_id: int, body: ResolveIn, now: datetime, *, notify: bool
) -> AlertOut:
    """Resolve the alert as `body.by` with the note, and commit; with `notify`, queue the
    webhook's `alert.resolved`. Raises AlertNotFound, AlertAlreadyResolved."""
    alert = alert_row(session, alert_id)
    if alert.state == AlertState.resolved:
        raise AlertAlreadyResolved(f"alert {alert_id} is already resolved ({alert.resolution})")
    # If the condition is still there, the next evaluation opens a new alert for it.
    conn = session.connection()
    if resolve(conn, alert_id, now, by=body.by, note=body.note) and notify:
        enqueue(conn, "alert.resolved", alert_id, now)
    session.commit()
    return AlertOut.model_validate(alert_row(session, alert_id))
