"""E-mail subscriptions to alerts: each user lists, adds and removes their own. A technician
subscribes to their own sites only, a vendor to alerts about its own devices (and names no
site); a site outside the caller's scope answers as an unknown one. The checks and the audit
are fleet.alerts.subscriptions', shared with the subscriptions page."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Response

from fleet.alerts import subscriptions
from fleet.alerts.schemas import SubscriptionIn, SubscriptionOut
from fleet.alerts.subscriptions import SubscriptionNotFound, SubscriptionRefused
from fleet.api.deps import SessionDep
from fleet.api.params import Row32IdPath
from fleet.auth.permissions import Allow, Caller

router = APIRouter(prefix="/api/v1/alert-subscriptions", tags=["alerts"])


@router.get("", response_model=list[SubscriptionOut])
def list_subscriptions(
    session: SessionDep, caller: Annotated[Caller, Allow("subscriptions:write")]
) -> list[SubscriptionOut]:
    """The caller's own subscriptions, oldest first."""
    return [SubscriptionOut.model_validate(r) for r in subscriptions.mine(session, caller)]


@router.post("", response_model=SubscriptionOut, status_code=201)
def subscribe(
    body: SubscriptionIn,
    session: SessionDep,
    caller: Annotated[Caller, Allow("subscriptions:write")],
) -> SubscriptionOut:
    """Add one; 404 for a site that is unknown or outside the caller's sites, 409 past
    fleet.alerts.subscriptions.MAX_PER_USER."""
    try:
        row = subscriptions.subscribe(session, caller, body)
    except SubscriptionRefused as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return SubscriptionOut.model_validate(row)


@router.delete("/{subscription_id}", status_code=204)
def unsubscribe(
    subscription_id: Row32IdPath,
    session: SessionDep,
    caller: Annotated[Caller, Allow("subscriptions:write")],
) -> Response:
    """Remove one of the caller's own; another user's answers 404 like a missing one."""
    try:
        subscriptions.unsubscribe(session, caller, subscription_id)
    except SubscriptionNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return Response(status_code=204)
