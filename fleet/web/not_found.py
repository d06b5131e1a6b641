"""Unknown pages and ids, and pages refused: a proper HTML 404 or 403 for people, the usual
JSON for the API."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import (
    http_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleet.web.templating import render

API_PREFIXES = ("/api/", "/docs", "/openapi.json", "/redoc", "/metrics", "/healthz", "/static/")


class PageRefused(HTTPException):
    """A page's own refusal (a form naming a site outside the caller's): the 403 page. An
    HTTPException, so that the permission's audit records the post as failed 403."""

    def __init__(self, what: str) -> None:
        """`what` is the reason the 403 page shows."""
        super().__init__(403, what)


class PageNotFound(Exception):
    """A page's own 404 (a site, device, alert or token that does not exist): the HTML 404 page
    says what is missing and where to look instead."""

    status_code = 404  # how fleet.auth.permissions audits a post it refuses

    def __init__(self, what: str, hint: str = "") -> None:
        """`what` says what is missing ("There is no site 'x'."), `hint` where to look instead,
        or nothing."""
        super().__init__(what)
        self.what = what
        self.hint = hint


async def page_not_found(request: Request, exc: Exception) -> Response:
    """The exception handler for PageNotFound: the HTML 404 page with its `what` and `hint`."""
    assert isinstance(exc, PageNotFound)
    return render(request, "not_found.html", status_code=404, what=exc.what, hint=exc.hint)


async def http_error(request: Request, exc: Exception) -> Response:
    """A 404 for a path no route knows, and a 403 refused by a page's permission (a role or a
    scope that does not open it): a page for people, JSON for the API and tools."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 401 and not request.url.path.startswith(API_PREFIXES):
        # A page without a login: to the login form, and back here after it.
        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
    if exc.status_code == 403 and not request.url.path.startswith(API_PREFIXES):
        # A permission's refusal (fleet.auth.permissions) of a page or a form's post: what
        # the API says, on a page, not as JSON in the browser.
        return render(request, "refused.html", status_code=403, what=str(exc.detail))
    if exc.status_code == 404 and not request.url.path.startswith(API_PREFIXES):
        alert_id = request.path_params.get("alert_id")
        if alert_id is not None and str(alert_id).isdigit():
            # As fleet.web.alerts_page answers an alert that does not exist.
            return render(
                request,
                "not_found.html",
                status_code=404,
                what=f"There is no alert {int(alert_id)}.",
                hint="",
            )
        device_id = request.path_params.get("device_id")
        if device_id is not None:
            # Refused as out of scope (fleet.auth.permissions): the same page as a device that
            # does not exist (fleet.web.device_page), so that ids cannot be enumerated.
            return render(
                request,
                "not_found.html",
                status_code=404,
                what=f"There is no device {device_id!r}.",
                hint="Open its site from the overview to find it.",
            )
        return render(
            request,
            "not_found.html",
            status_code=404,
            what=f"There is no page at {request.url.path}.",
            hint="",
        )
    return await http_exception_handler(request, exc)


def _writable(value: Any) -> Any:
    """`value` with every lone surrogate in its text (strings nested in lists, tuples and
    dicts) as U+FFFD. A JSON body may escape one (`"\\ud800"`, valid JSON); pydantic refuses it
    and FastAPI echoes the refused input in its 422, which then cannot be encoded as UTF-8:
    the answer was a 500 for any route with a JSON body."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_writable(k): _writable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_writable(v) for v in value]
    return value


async def malformed_path(request: Request, exc: Exception) -> Response:
    """A page's URL with an id no row can have (`/silences/0/expire`, `/alerts/x/ack`, a
    device id out of pattern), edited by hand: the 404 page, as an id that does not exist,
    not the API's JSON in the browser; a form or query value out of its bounds there is a
    422 page naming each field and why. The API answers as before (422 JSON)."""
    assert isinstance(exc, RequestValidationError)
    if request.url.path.startswith(API_PREFIXES):
        # FastAPI's own answer, with each refused value it echoes made writable as UTF-8.
        return JSONResponse(
            status_code=422, content={"detail": jsonable_encoder(_writable(exc.errors()))}
        )
    errors = exc.errors()
    in_path = bool(errors) and all(e.get("loc", ("",))[0] == "path" for e in errors)
    if not in_path:
        # A form field past its bound (a forged or pasted form): a page with the reasons.
        reasons = [f"{e.get('loc', ('',))[-1]}: {e.get('msg', '')}"[:300] for e in errors[:10]]
        return render(request, "form_refused.html", status_code=422, reasons=reasons)
    return render(
        request,
        "not_found.html",
        status_code=404,
        what=f"There is no page at {request.url.path}.",
        hint="",
    )
