"""The controller's web application. No MQTT here: the CLI adds ingest through the hooks.

Hooks: `lifespan_extras`, callables taking the app and returning a context manager entered at
startup and left at shutdown (in reverse order); and `app.state.ingest_status`, any object with
`status() -> dict` (an `Ingest`, or the subscriber), which /healthz reports (`"ok": False` in it
turns /healthz into 503).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager, ExitStack, asynccontextmanager
from typing import Any, Protocol

from fastapi import FastAPI
from sqlalchemy import Engine

import fleet
from fleet import web
from fleet.api.body_limit import BodyLimit
from fleet.api.browser_policy import CrossSiteRefusal, SecurityHeaders
from fleet.api.last_resort import LastResort
from fleet.api.routes import (
    alerts,
    audit,
    auth,
    commands,
    devices,
    docs,
    enrolment,
    events,
    firmware,
    meta,
    power_schedules,
    programme,
    reports,
    rollouts,
    silences,
    sites,
    subscriptions,
    users,
)
from fleet.auth.login import LoginThrottle
from fleet.db import make_engine
from fleet.settings import Settings

LifespanExtra = Callable[[FastAPI], AbstractContextManager[Any]]


class StatusSource(Protocol):
    """What /healthz asks of whoever runs ingest (`app.state.ingest_status`): an `Ingest`, or
    the subscriber."""

    def status(self) -> dict[str, Any]:
        """Ingest's state, reported by /healthz as `ingest`; `"ok": False` in it makes /healthz
        answer 503."""
        ...


def create_app(
    settings: Settings,
    engine: Engine | None = None,
    *,
    lifespan_extras: Sequence[LifespanExtra] = (),
) -> FastAPI:
    """The controller's app: the API routes, the dashboard pages, and the middleware (security
    headers, cross-site refusal, request ids). Without `engine`, one is made from
    `settings.database_url` and disposed of at shutdown; `lifespan_extras` are entered at startup
    and left at shutdown in reverse order."""
    own_engine = engine is None
    db = engine if engine is not None else make_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with ExitStack() as stack:
            for extra in lifespan_extras:
                stack.enter_context(extra(app))
            yield
        if own_engine:
            db.dispose()

    app = FastAPI(
        title="Classroom fleet controller",
        version=getattr(fleet, "__version__", "0"),
        lifespan=lifespan,
        # Ours instead (fleet.api.routes.docs): FastAPI's load Swagger UI from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = db
    app.state.ingest_status = None  # a StatusSource, set by whoever runs ingest
    app.state.login_throttle = LoginThrottle(
        settings.login_limits_storage, settings.login_limits_account, settings.login_limits_address
    )
    app.include_router(meta.router)
    app.include_router(docs.router)
    app.include_router(sites.router)
    app.include_router(events.router)
    app.include_router(devices.router)
    app.include_router(commands.router)
    app.include_router(power_schedules.router)
    app.include_router(alerts.router)
    app.include_router(subscriptions.router)
    app.include_router(silences.router)
    app.include_router(programme.router)
    app.include_router(firmware.router)
    app.include_router(rollouts.router)
    app.include_router(reports.router)
    app.include_router(auth.router)
    app.include_router(enrolment.router)
    app.include_router(audit.router)
    app.include_router(users.router)
    web.install(app)  # the dashboard pages at /, last: its 404 handler is for the pages
    app.add_middleware(CrossSiteRefusal)
    app.add_middleware(LastResort)
    # Outside the last resort: a body over its cap is answered before anything reads it.
    app.add_middleware(BodyLimit, limits={"/api/v1/programme.csv": programme.MAX_CSV_BYTES})
    # Outermost: the last resort's own 500 answer gets the headers too.
    app.add_middleware(SecurityHeaders)
    return app
