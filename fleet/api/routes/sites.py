"""Sites: the fleet at a glance, and one site's rooms and devices."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Response
from pydantic import TypeAdapter

from fleet.api.deps import SessionDep
from fleet.api.params import SiteCodePath
from fleet.api.responses import prevalidated
from fleet.auth.permissions import Allow, Caller
from fleet.sites.queries import SiteNotFound, site_detail, site_summaries
from fleet.sites.schemas import SiteDetail, SiteSummary

router = APIRouter(prefix="/api/v1/sites", tags=["sites"])
SITE_SUMMARIES = TypeAdapter(list[SiteSummary])


@router.get("", response_model=list[SiteSummary])
def list_sites(
    session: SessionDep, caller: Annotated[Caller | None, Allow("sites:read")] = None
) -> Response:
    return prevalidated(SITE_SUMMARIES.dump_json(site_summaries(session, caller)))


@router.get("/{code}", response_model=SiteDetail, dependencies=[Allow("sites:read")])
def get_site(code: SiteCodePath, session: SessionDep) -> SiteDetail:
    try:
        return site_detail(session, code)
    except SiteNotFound as exc:
        raise HTTPException(404, str(exc)) from None
