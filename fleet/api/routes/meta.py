"""Liveness and metrics: /healthz for probes, /metrics for Prometheus."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from fleet.api.deps import EngineDep
from fleet.api.schemas import Health
from fleet.auth.permissions import Allow
from fleet.metrics import render_metrics

router = APIRouter(tags=["meta"])
log = logging.getLogger(__name__)


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health}},
    dependencies=[Allow("public")],
)
def healthz(request: Request, engine: EngineDep) -> JSONResponse:
    database = "ok"
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        log.warning("healthz: database unreachable: %s", exc)
        database = f"unreachable: {type(exc).__name__}"
    source = getattr(request.app.state, "ingest_status", None)
    ingest = source.status() if source is not None else None
    healthy = database == "ok" and (ingest is None or ingest.get("ok", True))
    body = Health(status="ok" if healthy else "degraded", database=database, ingest=ingest)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if healthy else 503)


@router.get("/metrics", include_in_schema=False, dependencies=[Allow("public")])
def metrics(engine: EngineDep) -> Response:
    return Response(render_metrics(engine), media_type=CONTENT_TYPE_LATEST)
