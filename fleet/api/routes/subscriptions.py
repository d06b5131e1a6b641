"""E-mail subscriptions to alerts: each user lists, adds and removes their own. A technician
subscribes to their own sites only, a vendor to alerts about its own devices (and names no
site); a site outside the caller's scope answers as an unknown one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Response
from sqlmodel import select

from fleet.alerts.models import AlertSubscription
from fleet.alerts.schemas import SubscriptionIn, SubscriptionOut
from fleet.api.deps import SessionDep
from fleet.api.params import Row32IdPath
from fleet.auth.audit import record
from fleet.auth.permissions import Allow, Caller
from fleet.models import Site
from fleet.protocol.messages import utcnow

router = APIRouter(prefix="/api/v1/alert-subscriptions", tags=["alerts"])

MAX_PER_USER = 50


@router.get("", response_model=list[SubscriptionOut])
def list_subscriptions(
    session: SessionDep, caller: Annotated[Caller, Allow("subscriptions:write")]
) -> list[SubscriptionOut]:
    """The caller's own subscriptions, oldest first."""
    rows = session.exec(
        select(AlertSubscription)
        .where(AlertSubscription.user_name == caller.name)
        .order_by(AlertSubscription.id)  # type: ignore[arg-type]
    ).all()
    return [SubscriptionOut.model_validate(r) for r in rows]


@router.post("", response_model=SubscriptionOut, status_code=201)
def subscribe(
    body: SubscriptionIn,
    session: SessionDep,
    caller: Annotated[Caller, Allow("subscriptions:write")],
) -> SubscriptionOut:
    """Add one; 404 for a site that is unknown or outside the caller's sites, 409 past
    MAX_PER_USER."""
    if body.site is not None:
        site = session.get(Site, body.site)
        # A vendor names no site (a site's business is not its own): its subscriptions cover
        # its devices wherever they are, as if it had named none.
        if site is None or not caller.may_see_site(body.site):
            raise HTTPException(404, f"no site {body.site!r}: GET /api/v1/sites lists the codes")
    count = len(
        session.exec(
            select(AlertSubscription.id).where(AlertSubscription.user_name == caller.name)
        ).all()
    )
    if count >= MAX_PER_USER:
        raise HTTPException(
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
    return SubscriptionOut.model_validate(row)


@router.delete("/{subscription_id}", status_code=204)
def unsubscribe(
    subscription_id: Row32IdPath,
    session: SessionDep,
    caller: Annotated[Caller, Allow("subscriptions:write")],
) -> Response:
    """Remove one of the caller's own; another user's answers 404 like a missing one."""
    row = session.get(AlertSubscription, subscription_id)
    if row is None or row.user_name != caller.name:
        raise HTTPException(404, f"no subscription {subscription_id} of yours")
    session.delete(row)
    record(
        session,
        actor=caller.name,
        role=caller.role,
        action="subscription.delete",
        target=str(subscription_id),
    )
    session.commit()
    return Response(status_code=204)
