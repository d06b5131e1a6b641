"""The dashboard: server-rendered pages at `/`, their CSS and JS, and the HTML 404."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleet.web import (
    alerts_page,
    device_page,
    enrolment_page,
    login_page,
    milestones_page,
    pages,
    power_forms,
    programme_page,
    reports_page,
    rollout_new_page,
    rollouts_page,
    silences_page,
    subscriptions_page,
    users_page,
)
from fleet.web.not_found import PageNotFound, http_error, malformed_path, page_not_found
from fleet.web.templating import STATIC_DIR
from fleet.web.words import N_


def install(app: FastAPI) -> None:
    """Add the pages to the controller's app (called by `fleet.api.app.create_app`)."""
    app.include_router(pages.router)
    app.include_router(device_page.router)
    app.include_router(power_forms.router)
    app.include_router(alerts_page.router)
    app.include_router(programme_page.router)
    # Before the rollouts page: /rollouts/new is not a rollout id.
    app.include_router(rollout_new_page.router)
    app.include_router(rollouts_page.router)
    app.include_router(reports_page.router)
    app.include_router(users_page.router)
    app.include_router(silences_page.router)
    app.include_router(subscriptions_page.router)
    app.include_router(milestones_page.router)
    app.include_router(enrolment_page.router)
    app.include_router(login_page.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_exception_handler(PageNotFound, page_not_found)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, malformed_path)
    # (label, path, the permission its page declares): each viewer sees the links it may open.
    app.state.web_nav = (
        (N_("Overview"), "/", "dashboard:read"),
        (N_("Alerts"), "/alerts", "dashboard:read"),
        (N_("Programme"), "/programme", "fleet:read"),
        (N_("Rollouts"), "/rollouts", "rollouts:read"),
        (N_("Reports"), "/reports", "reports:read"),
        (N_("Enrolment"), "/enrolment", "enrolment:create"),
        (N_("Users"), "/users", "users:read"),
        (N_("Silences"), "/silences", "silences:read"),
        (N_("E-mail"), "/subscriptions", "subscriptions:write"),
    )
