"""Roles, scopes and the one dependency every route declares: `Permission("devices:read")`.

A route says what it needs by name; POLICY says which roles have it. The dependency then
checks the caller's scope against what the request names that the route will use: a site
code in the path (`{code}`, `{site}`), a device or alert id in the path, and every `site` and
`vendor` value of the query string. A request body is never read here: how a body is parsed
(its Content-Type, in any case) is the route's business, so a route whose validated body names
a site, vendor or device checks it with `require_scope` on the parsed model, the very values it
then uses. A `device` in the query filters a list that each route already narrows to the
caller's scope, so another tenant's device there answers as a made-up id does. Out of scope is
403, except for things whose existence is itself a secret (another vendor's device, another
site's alert): those are 404, with the same words as a real 404. Every refusal is logged and
written to the audit log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import OAuth2PasswordBearer
from prometheus_client import Counter
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from fleet.auth.audit import record
from fleet.auth.tokens import SETUP_SESSION, VERIFIED, TokenRefused, resolve_api_token
from fleet.protocol.messages import DEVICE_ID_PATTERN, INT64_MAX, SITE_CODE_PATTERN

log = logging.getLogger(__name__)
REFUSALS = Counter(
    "fleet_auth_refused_total",
    "Requests refused, by reason and by whether a known user or nobody made them",
    ["reason", "caller"],
)

SESSION_COOKIE = "fleet_token"
ANYONE = "anyone"  # no token needed
ROLES = ("ops", "technician", "vendor")

# Permission -> the roles that hold it. Technicians and vendors hold theirs within their scope.
POLICY: dict[str, frozenset[str]] = {
    # Open: probes, Prometheus, login, and what agents fetch with their own proof (an
    # enrolment token; a firmware artifact named by its SHA-256).
    "public": frozenset({ANYONE, *ROLES}),
    "agent": frozenset({ANYONE, *ROLES}),
    "authenticated": frozenset(ROLES),
    "fleet:read": frozenset({"ops"}),  # fleet-wide views: programme, firmware
    # The dashboard's overview and alerts pages, each filtered to the caller's scope.
    "dashboard:read": frozenset(ROLES),
    "sites:read": frozenset({"ops", "technician"}),
    "devices:read": frozenset({"ops", "technician", "vendor"}),
    # Power and input commands: ops, and technicians on their own sites; vendors never.
    "devices:command": frozenset({"ops", "technician"}),
    # Vendors: the alerts about their own devices only (never a site's, nor another make's).
    "alerts:read": frozenset({"ops", "technician", "vendor"}),
    "alerts:write": frozenset({"ops", "technician"}),
    # E-mail subscriptions: everyone, each their own, within their scope.
    "subscriptions:write": frozenset(ROLES),
    # Silences mute a site's notifications: a site's business, never a vendor's.
    "silences:read": frozenset({"ops", "technician"}),
    "silences:write": frozenset({"ops", "technician"}),
    "programme:read": frozenset({"ops", "technician"}),
    "programme:write": frozenset({"ops"}),
    "reports:read": frozenset({"ops", "vendor"}),
    "firmware:read": frozenset({"ops"}),
    "rollouts:read": frozenset({"ops"}),
    "rollouts:write": frozenset({"ops"}),
    "enrolment:create": frozenset({"ops", "technician"}),
    "audit:read": frozenset({"ops"}),
    # Users, their roles and scopes: ops alone (a technician cannot widen their own sites).
    "users:read": frozenset({"ops"}),
    "users:write": frozenset({"ops"}),
}

# Permissions whose every use is written to the audit log (refusals of any are, anyway).
AUDITED = frozenset(
    {
        "programme:write",
        "rollouts:write",
        "alerts:write",
        "reports:read",
        "devices:command",
        "silences:write",
        "subscriptions:write",
        "users:write",
    }
)

# Path parameters that name a site, and query keys that name a site or a vendor.
_SITE_PATH = ("code", "site", "site_code")
_SITE_KEYS = ("site", "site_code")
_VENDOR_KEYS = ("vendor",)

_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)
_SITE_CODE = re.compile(SITE_CODE_PATTERN)

bearer_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)


@dataclass(frozen=True)
class Caller:
    """Who is asking. `sites` None means every site; `vendor` None means every vendor."""

    name: str
    role: str
    sites: frozenset[str] | None = None
    vendor: str | None = None
    token_id: int | None = None
    # A login session of a user who must set up a second factor first: it may do only that
    # (routes of the `authenticated` permission: /api/v1/auth/...).
    setup_only: bool = False

    @property
    def is_anonymous(self) -> bool:
        """Whether nobody was checked: the caller of a route open to anyone."""
        return self.role == ANYONE

    def may_see_site(self, code: str) -> bool:
        """Whether the caller may see site `code`'s own business: a technician their sites,
        ops every site, a vendor user none."""
        if self.role == "vendor":
            return False  # vendors see devices, never a site's own business
        return self.sites is None or code in self.sites

    def may_see_vendor(self, vendor: str) -> bool:
        """Whether the caller may see `vendor`'s devices (in any case): a vendor user only its
        own, anyone else every vendor's."""
        return self.vendor is None or self.vendor.lower() == vendor.lower()

    def may_see_device(self, site_code: str, vendor: str) -> bool:
        """Whether the caller may see a device of site `site_code` made by `vendor`: a vendor
        user by the make, anyone else by the site."""
        if self.role == "vendor":
            return self.may_see_vendor(vendor)
        return self.sites is None or site_code in self.sites


ANONYMOUS = Caller(name="anonymous", role=ANYONE)


class Refused(Exception):
    """A request refused: its HTTP status, the message for the caller, one word for the
    audit, and whose token it was when that is known though the caller is not let in."""

    def __init__(self, status: int, message: str, reason: str, actor: str | None = None) -> None:
        """`status` is 401, 403 or 404, `message` what the caller reads, `reason` one word for
        the audit and the refusal counter, `actor` the token's user when known."""
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.actor = actor


# The request's database session (fleet.api.deps.get_session), kept on `request.state` under
# this name so that the audit of a refused change can end its transaction first.
REQUEST_SESSION = "db_session"


class Permission:
    """The dependency: `caller: Annotated[Caller, Allow("devices:read")]`, or
    `dependencies=[Allow("rollouts:write")]` when the route needs no Caller."""

    def __init__(self, name: str) -> None:
        """The dependency for permission `name`; raises ValueError when POLICY has no such
        permission."""
        if name not in POLICY:
            raise ValueError(f"unknown permission {name!r}: add it to POLICY in {__name__}")
        self.name = name
        self.roles = POLICY[name]

    def __repr__(self) -> str:
        return f"Permission({self.name!r})"

    async def __call__(
        self, request: Request, token: Annotated[str | None, Depends(bearer_scheme)] = None
    ) -> AsyncIterator[Caller]:
        """Yield the caller let in: anonymous on an open route, else the user of the bearer
        token (or the session cookie). A refusal is counted, logged and audited, then raised as
        HTTPException: 401, 403, or 404 for what the caller may not know exists. An AUDITED
        permission's use is audited once the route has run."""
        if ANYONE in self.roles:
            request.state.caller = ANONYMOUS
            yield ANONYMOUS
            return
        token = token or request.cookies.get(SESSION_COOKIE)
        engine: Engine = request.app.state.engine
        try:
            # A token verified moments ago, of a caller with no scope to check (ops), needs
            # no database: answered here, without a trip through the thread pool.
            caller = self._known(token)
            if caller is None:
                caller = await run_in_threadpool(self._check, engine, request, token)
        except Refused as refusal:
            await run_in_threadpool(self._refused, engine, request, refusal)
            headers = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else None
            raise HTTPException(refusal.status, refusal.message, headers=headers) from None
        request.state.caller = caller
        if self.name not in AUDITED:
            yield caller
            return
        # Changes (and report downloads) are audited once the route has run: who, what, when.
        try:
            yield caller
        except HTTPException as exc:
            await run_in_threadpool(
                self._done, engine, request, caller, f"failed {exc.status_code}"
            )
            raise
        except Exception as exc:
            # A page's own refusal that is not an HTTPException (fleet.web's PageNotFound, a
            # 404 page) is audited as the API's 404 is: a probe of others' ids leaves a trace.
            status = getattr(exc, "status_code", None)
            if isinstance(status, int):
                await run_in_threadpool(self._done, engine, request, caller, f"failed {status}")
            raise
        # A page that answers a refused change itself (a 409 shown on the page) says so.
        outcome = getattr(request.state, "audit_outcome", "ok")
        await run_in_threadpool(self._done, engine, request, caller, outcome)

    def _done(self, engine: Engine, request: Request, caller: Caller, outcome: str) -> None:
        if outcome != "ok":
            # The refused change's own writes, flushed and not committed, are dropped before
            # its entry is written: on SQLite they hold the database's one write lock until the
            # request's session closes, after the answer, and the entry would wait
            # busy_timeout (10 s) for it and then be lost. A refused change keeps nothing.
            session = getattr(request.state, REQUEST_SESSION, None)
            if isinstance(session, Session):
                session.rollback()
        route = request.scope.get("route")
        record(
            engine,
            actor=caller.name,
            role=caller.role,
            action=f"{self.name.split(':')[0]}.{getattr(route, 'name', 'request')}",
            target=f"{request.method} {request.url.path}",
            outcome=outcome,
            detail={k: str(v) for k, v in request.path_params.items()} or None,
        )

    def _known(self, token: str | None) -> Caller | None:
        caller = VERIFIED.get(token)
        if not isinstance(caller, Caller) or caller.role not in self.roles:
            return None  # unknown, or to be refused: the full check says why, and audits it
        if caller.sites is not None or caller.vendor is not None:
            return None  # a scoped caller: the request's names are checked in the database
        if caller.setup_only and self.name != "authenticated":
            return None  # to be refused, with the reason, by the full check
        return caller

    def _check(self, engine: Engine, request: Request, token: str | None) -> Caller:
        with Session(engine) as session:
            caller = VERIFIED.get(token)
            if not isinstance(caller, Caller):
                try:
                    bearer = resolve_api_token(session, token)
                except TokenRefused as exc:
                    raise Refused(401, str(exc), exc.reason, actor=exc.user) from None
                user = bearer.user
                caller = Caller(
                    name=user.name,
                    role=user.role,
                    sites=frozenset(user.sites) if user.role == "technician" else None,
                    vendor=user.vendor if user.role == "vendor" else None,
                    token_id=bearer.token.id,
                    setup_only=bearer.token.kind == SETUP_SESSION,
                )
                assert token is not None  # resolve_api_token refuses a missing one
                VERIFIED.put(token, caller, bearer.token.expires_at)
            request.state.caller = caller  # so that a refusal below names who was refused
            if caller.role not in self.roles:
                raise Refused(
                    403,
                    f"a {caller.role} may not use this ({self.name}): ask ops",
                    "role",
                )
            if caller.setup_only and self.name != "authenticated":
                raise Refused(
                    403,
                    "a second factor is required of your role: set it up (POST "
                    "/api/v1/auth/totp, then /api/v1/auth/totp/confirm) and log in again",
                    "second_factor",
                )
            check_scope(session, caller, request)
        return caller

    def _refused(self, engine: Engine, request: Request, refusal: Refused) -> None:
        caller: Caller = getattr(request.state, "caller", ANONYMOUS)
        target = f"{request.method} {request.url.path}"
        actor = caller.name if caller is not ANONYMOUS else refusal.actor
        REFUSALS.labels(refusal.reason, "anonymous" if actor is None else "user").inc()
        if actor is None:
            # Nobody to hold to account, and a flood of bad tokens must not grow the audit
            # table: counted (fleet_auth_refused_total) and logged at debug, not stored.
            log.debug("refused %s anonymously: %s [%s]", target, refusal.reason, self.name)
            return
        log.warning(
            "refused %s for %s (%s): %s [%s]",
            target,
            actor,
            caller.role,
            refusal.reason,
            self.name,
        )
        record(
            engine,
            actor=actor,
            role=caller.role,
            action=self.name,
            target=target,
            outcome="denied",
            detail={"status": refusal.status, "reason": refusal.reason},
        )


def Allow(name: str) -> Any:
    """The dependency a route names to require `name`. Its audit entry is written before the
    response is sent (FastAPI's `scope="function"`): with the default scope, the code after
    `yield` ran once the answer was on its way, so a client reading the audit log right after
    a change (a page's next view, a script) could miss it, and a process stopped between
    the two left the change unaudited."""
    return Depends(Permission(name), scope="function")


def check_scope(session: Session, caller: Caller, request: Request) -> None:
    """Refuse (Refused) when the path or query names a site, vendor, device or alert outside
    the caller's scope. Every value of a repeated query key is checked."""
    if caller.sites is None and caller.vendor is None:
        return
    sites = [str(request.path_params[k]) for k in _SITE_PATH if k in request.path_params]
    vendors: list[str] = []
    for key, value in request.query_params.multi_items():
        if key in _SITE_KEYS:
            sites.append(value)
        elif key in _VENDOR_KEYS:
            vendors.append(value)
    devices = [str(request.path_params["device_id"])] if "device_id" in request.path_params else []
    _refuse_outside(session, caller, sites=sites, vendors=vendors, devices=devices)
    if "alert_id" in request.path_params:
        _check_alert(session, caller, request.path_params["alert_id"])


def require_scope(
    session: Session,
    caller: Caller,
    *,
    sites: Iterable[str] = (),
    vendors: Iterable[str] = (),
    devices: Iterable[str] = (),
) -> None:
    """For a route whose validated body names sites, vendors or devices: raise HTTPException
    (403, or 404 for a device, in a real 404's words) when one is outside the caller's scope,
    audited like any refusal. Call it with the parsed model's values, the ones the route uses."""
    try:
        _refuse_outside(session, caller, sites=sites, vendors=vendors, devices=devices)
    except Refused as refusal:
        REFUSALS.labels(refusal.reason, "user").inc()
        log.warning("refused body of %s (%s): %s", caller.name, caller.role, refusal.message)
        session.rollback()
        record(
            session,
            actor=caller.name,
            role=caller.role,
            action="scope",
            target="request body",
            outcome="denied",
            detail={"status": refusal.status, "reason": refusal.reason},
        )
        session.commit()
        raise HTTPException(refusal.status, refusal.message) from None


def _refuse_outside(
    session: Session,
    caller: Caller,
    *,
    sites: Iterable[str],
    vendors: Iterable[str],
    devices: Iterable[str],
) -> None:
    if caller.sites is None and caller.vendor is None:
        return
    for site in sites:
        if not _SITE_CODE.match(site):
            continue  # no site has such a code (`UPM`): the route's validation says what is wrong
        if not caller.may_see_site(site) and caller.role != "vendor":
            raise Refused(
                403, f"{caller.name} may not see site {site!r}: outside your sites", "scope"
            )
    for vendor in vendors:
        if not caller.may_see_vendor(vendor):
            raise Refused(
                403, f"{caller.name} may see {caller.vendor} only, not {vendor!r}", "scope"
            )
    for device_id in devices:
        _check_device(session, caller, device_id)


def no_device_detail(device_id: str) -> str:
    """The one answer for a device that does not exist and for one outside the caller's
    scope: the two must read the same, or other tenants' ids could be enumerated."""
    return f"no device {device_id!r}: GET /api/v1/devices lists the registered ids"


def _check_device(session: Session, caller: Caller, device_id: str) -> None:
    from fleet.models import Device

    if not _DEVICE_ID.match(device_id):
        return  # no device has such an id (nor can PostgreSQL look up a NUL): the route says so
    device = session.get(Device, device_id)
    if device is not None and not caller.may_see_device(device.site_code, device.vendor):
        # The same words as a device that does not exist: its existence is not ours to tell.
        raise Refused(404, no_device_detail(device_id), "scope")


def _check_alert(session: Session, caller: Caller, alert_id: Any) -> None:
    from fleet.alerts.models import Alert

    try:
        number = int(alert_id)
    except (TypeError, ValueError):
        return  # the route's own validation answers 422
    if not 1 <= number <= INT64_MAX:
        return  # no alert has such an id; the route's bounds answer 422
    alert = session.get(Alert, number)
    if alert is None:
        return
    if caller.role == "vendor":
        from fleet.models import Device

        device = session.get(Device, alert.device_id) if alert.device_id else None
        visible = device is not None and caller.may_see_vendor(device.vendor)
    else:
        visible = caller.may_see_site(alert.site_code)
    if not visible:
        raise Refused(404, f"no alert {number}: GET /api/v1/alerts lists them", "scope")
