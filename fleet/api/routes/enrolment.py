"""Agent enrolment: ops or the site's technician makes a one-time token; the agent on site
trades it (once, before it expires) for its site config and a fresh broker credential.

The token is the agent's only proof, so the redeeming route is open (`agent`): a wrong,
used or expired token gets 401 and changes nothing. Re-enrolling rotates the credential.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

import yaml
from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from fleet.api.deps import SessionDep, SettingsDep
from fleet.api.params import Row32IdPath
from fleet.auth.audit import record
from fleet.auth.enrolment import (
    MAX_TTL_MINUTES,
    TokenNotFound,
    TokenSpent,
    enrol_command,
    make_enrolment_token,
    revoke_enrolment_token,
    token_state,
)
from fleet.auth.mqtt_auth import rotate_site_credential
from fleet.auth.permissions import REFUSALS, Allow, Caller, require_scope
from fleet.auth.tokens import TokenRefused, redeem_enrolment_token
from fleet.models import Site
from fleet.protocol.documents import read_yaml
from fleet.protocol.errors import ConfigErrors
from fleet.protocol.messages import SiteCode
from fleet.protocol.secret_refs import redact_site_config
from fleet.settings import Settings

router = APIRouter(prefix="/api/v1/enrolment", tags=["enrolment"])


class EnrolmentTokenIn(BaseModel):
    """Ops' or a technician's request for an agent enrolment token: the site, and a lifetime in
    minutes, never longer than the controller's own (which applies when left out)."""

    site: SiteCode
    ttl_minutes: int | None = Field(default=None, ge=1, le=MAX_TTL_MINUTES)


class EnrolmentTokenOut(BaseModel):
    """A new one-time enrolment token, shown this once: its site, expiry (UTC), and the
    `fleet-agent enroll` command a technician runs on site."""

    token: str
    site: str
    expires_at: datetime
    command: str


class EnrolIn(BaseModel):
    """What a site agent sends to enrol: its one-time enrolment token."""

    token: str = Field(max_length=100)


class MqttLogin(BaseModel):
    """The broker login of an enrolled agent: the broker URL, its site's user and new password,
    and the topic root."""

    url: str
    username: str
    password: str
    topic_root: str


class EnrolOut(BaseModel):
    """What an agent gets for its token: its site config (YAML, each device secret replaced by a
    `secret:NAME` reference), its broker login, and the names its secrets file must give."""

    site: str
    config_yaml: str
    mqtt: MqttLogin
    # Secrets the config refers to (secret:NAME) that the agent's secrets file must give.
    secrets_needed: list[str]


@router.post("/tokens", response_model=EnrolmentTokenOut, status_code=201)
def create_enrolment_token(
    body: EnrolmentTokenIn,
    caller: Annotated[Caller, Allow("enrolment:create")],
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
) -> EnrolmentTokenOut:
    # On the validated body, the site the token will be for, whatever the Content-Type said.
    require_scope(session, caller, sites=[body.site])
    if session.get(Site, body.site) is None:
        raise HTTPException(404, f"no site {body.site!r}: GET /api/v1/sites lists the codes")
    token, row = make_enrolment_token(
        session,
        caller,
        body.site,
        ttl=timedelta(seconds=settings.enrolment_ttl_s),
        ttl_minutes=body.ttl_minutes,
    )
    return EnrolmentTokenOut(
        token=token,
        site=body.site,
        expires_at=row.expires_at,
        command=enrol_command(str(request.base_url), token),
    )


class RevokedTokenOut(BaseModel):
    """An enrolment token just revoked: its id, site, expiry (now, UTC) and state."""

    id: int
    site: str
    expires_at: datetime
    state: str


@router.post("/tokens/{token_id}/revoke", response_model=RevokedTokenOut)
def revoke_token(
    token_id: Row32IdPath,
    caller: Annotated[Caller, Allow("enrolment:create")],
    session: SessionDep,
) -> RevokedTokenOut:
    """End an unused token now: ops any, a technician their sites' (another site's token
    answers as one that does not exist, 404). 409 when it was used or has expired."""
    try:
        row = revoke_enrolment_token(session, caller, token_id)
    except TokenNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except TokenSpent as exc:
        raise HTTPException(409, str(exc)) from None
    assert row.id is not None
    return RevokedTokenOut(
        id=row.id, site=row.site_code, expires_at=row.expires_at, state=token_state(row)
    )


@router.post("", response_model=EnrolOut, dependencies=[Allow("agent")])
def enrol(body: EnrolIn, request: Request, session: SessionDep, settings: SettingsDep) -> EnrolOut:
    try:
        row = redeem_enrolment_token(session, body.token)
    except TokenRefused as exc:
        session.rollback()
        if exc.reason in ("used", "expired"):
            # A real token used twice or late: worth an entry. A token nobody issued is
            # counted instead, so that guessing cannot grow the audit table.
            record(
                request.app.state.engine,
                actor="agent",
                action="enrol",
                target=request.client.host if request.client else "",
                outcome="denied",
                detail={"reason": exc.reason},
            )
        else:
            REFUSALS.labels(f"enrol_{exc.reason}", "anonymous").inc()
        raise HTTPException(401, str(exc)) from None
    site = session.get(Site, row.site_code)
    if site is None:  # the site was removed after the token was made
        session.rollback()
        raise HTTPException(404, f"site {row.site_code!r} is no longer registered: ask ops")
    config_yaml, needed = _site_config_for_agent(Path(site.config_path))
    username, password = rotate_site_credential(session, site.code)
    record(
        session,
        actor=f"agent:{site.code}",
        action="enrol",
        target=site.code,
        detail={"token_id": row.id, "created_by": row.created_by, "mqtt_user": username},
    )
    session.commit()
    return EnrolOut(
        site=site.code,
        config_yaml=config_yaml,
        mqtt=MqttLogin(
            url=agent_broker_url(settings),
            username=username,
            password=password,
            topic_root=settings.topic_root,
        ),
        secrets_needed=needed,
    )


def agent_broker_url(settings: Settings) -> str:
    """Where agents reach the broker: FLEET_AGENT_MQTT_URL, else the controller's own URL
    with its user and password removed (each agent logs in as its site)."""
    if settings.agent_mqtt_url:
        return settings.agent_mqtt_url
    parts = urlsplit(settings.mqtt_url)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _site_config_for_agent(path: Path) -> tuple[str, list[str]]:
    try:
        data = read_yaml(path)
    except ConfigErrors as exc:
        raise HTTPException(
            500, f"cannot read the site config {path.name} ({exc.errors[0].problem}): tell ops"
        ) from None
    data, needed = redact_site_config(data)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True), needed
