"""The subscriptions page, "my e-mail notifications": every role lists its own, adds one (a
site, or every site it may see, and the least severity) and deletes one.

What it does is what `/api/v1/alert-subscriptions` does (fleet.alerts.subscriptions: the same
checks, the same audit entries): a technician subscribes to their own sites only, a vendor to
alerts about its own devices and names no site. A form's values the API would refuse are said
on the page (422) and nothing is added; a site outside the caller's is the 403 page.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlmodel import Session, col, select

from fleet.alerts import subscriptions
from fleet.alerts.models import Severity
from fleet.alerts.schemas import SubscriptionIn
from fleet.alerts.subscriptions import SubscriptionNotFound, SubscriptionRefused
from fleet.api.deps import SessionDep
from fleet.api.params import Row32IdPath
from fleet.auth.permissions import Allow, Caller
from fleet.models import Site
from fleet.web.not_found import PageNotFound, PageRefused
from fleet.web.templating import render
from fleet.web.viewer import Viewer, ViewerDep

router = APIRouter(include_in_schema=False)

EVERY_SITE = ""  # the form's value for "every site I may see"
MAX_FORM_TEXT = 1_000_000  # taken whole, so that too long is told on the page (422)


@router.get("/subscriptions", response_class=HTMLResponse)
def subscriptions_page(
    request: Request,
    session: SessionDep,
    caller: Annotated[Caller, Allow("subscriptions:write")],
    viewer: ViewerDep,
) -> HTMLResponse:
    return _page(request, session, caller, viewer, {})


def _page(
    request: Request,
    session: Session,
    caller: Caller,
    viewer: Viewer,
    form: dict[str, str],
    *,
    problem: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    codes = session.exec(select(Site.code).order_by(col(Site.code))).all()
    return render(
        request,
        "subscriptions.html",
        status_code=status_code,
        viewer=viewer,
        mine=subscriptions.mine(session, caller),
        sites=[c for c in codes if caller.may_see_site(c)],
        severities=[s.value for s in Severity],
        form=form,
        problem=problem,
    )


@router.post("/subscriptions", name="subscribe")
def subscribe_from_page(
    request: Request,
    session: SessionDep,
    caller: Annotated[Caller, Allow("subscriptions:write")],
    viewer: ViewerDep,
    email: Annotated[str, Form(max_length=MAX_FORM_TEXT)] = "",
    site: Annotated[str, Form(max_length=MAX_FORM_TEXT)] = EVERY_SITE,
    min_severity: Annotated[str, Form(max_length=MAX_FORM_TEXT)] = "warning",
) -> Response:
    """The form: what `POST /api/v1/alert-subscriptions` does, audited alike; 303 to the
    list."""
    form = {"email": email, "site": site, "min_severity": min_severity}
    code = site.strip()
    if code != EVERY_SITE and (
        caller.role == "vendor" or (caller.sites is not None and code not in caller.sites)
    ):
        # Whether or not such a site exists: nobody learns of sites that are not theirs.
        raise PageRefused(
            f"{caller.name} may subscribe only to alerts within their scope: {viewer.scope}"
        )

    def refuse(reason: str, status: int = 422) -> HTMLResponse:
        request.state.audit_outcome = f"failed {status}"
        return _page(request, session, caller, viewer, form, problem=reason, status_code=status)

    try:
        body = SubscriptionIn(
            email=email.strip(),
            site=code or None,
            min_severity=min_severity,
        )
    except ValidationError as exc:
        return refuse("; ".join(f"{e['loc'][-1]}: {e['msg']}" for e in exc.errors()))
    try:
        subscriptions.subscribe(session, caller, body)
    except SubscriptionRefused as exc:
        session.rollback()
        # 404 from the API: an unknown site (ops only reach here with one); said on the page.
        return refuse(str(exc), 409 if exc.status == 409 else 422)
    return RedirectResponse("/subscriptions", status_code=303)


@router.post("/subscriptions/{subscription_id}/delete", name="unsubscribe")
def unsubscribe_from_page(
    subscription_id: Row32IdPath,
    session: SessionDep,
    caller: Annotated[Caller, Allow("subscriptions:write")],
) -> Response:
    """The page's delete button (a form cannot send DELETE): what `DELETE
    /api/v1/alert-subscriptions/{id}` does, audited alike."""
    try:
        subscriptions.unsubscribe(session, caller, subscription_id)
    except SubscriptionNotFound:
        raise PageNotFound(
            f"There is no subscription {subscription_id} of yours.",
            "The page lists yours.",
        ) from None
    return RedirectResponse("/subscriptions", status_code=303)
