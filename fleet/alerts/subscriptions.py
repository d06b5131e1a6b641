"""E-mail subscriptions to alerts, each user's own: list, add, remove. What
`/api/v1/alert-subscriptions` and the subscriptions page both do, with the same checks and the
same audit entries. A technician subscribes to their own sites only; a vendor names no site
(its subscriptions cover alerts about its own devices, wherever they are: fleet.alerts.notices
applies that when it picks recipients)."""

from __future__ import annotations

from sqlmodel import Session, col, select

from fleet.alerts.models import AlertSubscription
from fleet.alerts.schemas import SubscriptionIn
from fleet.auth.audit import record
from fleet.auth.permissions import Caller
from fleet.protocol.messages import utcnow

MAX_PER_USER = 50


class SubscriptionRefused(ValueError):
    """`status` 404: the site is unknown or outside the caller's sites; 409: the caller has
    MAX_PER_USER already. The message says what to do."""

    def __init__(self, status: int, message: str) -> None:
        """`status`: the HTTP status the API answers with (404 or 409); `message`: what to do."""
        super().__init__(message)
        self.status = status


class SubscriptionNotFound(LookupError):
    """No subscription of the caller's has that id (another user's: the same words)."""


def mine(session: Session, caller: Caller) -> list[AlertSubscription]:
    """The caller's own subscriptions, oldest first."""
    return list(
        session.exec(
            select(AlertSubscription)
            .where(AlertSubscription.user_name == caller.name)
            .order_by(col(AlertSubscription.id))
        )
    )


def subscribe(session: Session, caller: Caller, body: SubscriptionIn) -> AlertSubscription:
    """Add one for the caller, audit `subscription.create`, commit. Raises
    SubscriptionRefused."""
    from fleet.models import Site

    # A vendor names no site (a site's business is not its own): may_see_site refuses it.
    if body.site is not None and (
        session.get(Site, body.site) is None or not caller.may_see_site(body.site)
    ):
        raise SubscriptionRefused(404, f"no site {body.site!r}: GET /api/v1/sites lists the codes")
    count = len(
        session.exec(
            select(AlertSubscription.id).where(AlertSubscription.user_name == caller.name)
        ).all()
    )
    if count >= MAX_PER_USER:
        raise SubscriptionRefused(
            409, f"{caller.name} has {count} subscriptions, the most one user may have: remove one"
        )
    row = AlertSubscription(
        user_name=caller.name,
        email=body.email,
        site_code=body.site,
        min_severity=body.min_severity.value,
        created_at=utcnow(),
    )
    session.add(row)
    record(
        session,
        actor=caller.name,
        role=caller.role,
        action="subscription.create",
        target=body.site or "*",
        detail={"min_severity": body.min_severity.value},
    )
    session.commit()
    session.refresh(row)
    return row


def unsubscribe(session: Session, caller: Caller, subscription_id: int) -> None:
    """Remove one of the caller's own, audit `subscription.delete`, commit. Raises
    SubscriptionNotFound, for another user's too."""
    row = session.get(AlertSubscription, subscription_id)
    if row is None or row.user_name != caller.name:
        raise SubscriptionNotFound(f"no subscription {subscription_id} of yours")
    session.delete(row)
    record(
        session,
        actor=caller.name,
        role=caller.role,
        action="subscription.delete",
        target=str(subscription_id),
    )
    session.commit()
