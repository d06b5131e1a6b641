"""Logging in with a password (and a second factor where one is in force): the one check the
API's POST /api/v1/auth/token and the dashboard's login form both make.

Throttling: failed logins are counted per account and per client address, each against a
ladder of moving windows (by default 5 a minute, 20 an hour, 100 a day for an account), so a
guesser is slowed more the longer they go on: the wait (Retry-After) grows from a minute to an
hour to a day. Counting is the `limits` library's (its storage by URI: memory:// in one
process, redis:// shared by several API workers). A success clears the account's count.

Known clients: an account's own limit would let anyone lock its owner out by failing on
purpose. So a successful login also gets a known-client cookie, good for that account only
(OWASP's "device cookie"). A login that shows it is counted against that client alone, with
the account's ladder, and neither the account's nor the address's failures hold it up: a
technician keeps getting in on the phone that logged in before while a guesser elsewhere has
used up the account's limit, or the campus NAT's.

Timing: a refusal does the same work whoever was named. An unknown user name, a revoked user
or one without a password still has a password hash checked (a decoy's), so the answer's
time says nothing of who exists.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from prometheus_client import Counter
from sqlmodel import Session, select

from fleet.auth import second_factor
from fleet.auth.audit import record
from fleet.auth.models import User
from fleet.auth.passwords import spend_as_a_check, verify_and_update
from fleet.auth.permissions import REFUSALS

log = logging.getLogger(__name__)

THROTTLED = Counter(
    "fleet_login_throttled_total", "Logins refused without a check, too many failures", ["by"]
)
# Mirrors fleet.auth.users.USER_NAME_RE (not imported: users imports passwords, not login).
MAX_NAME = 64


class LoginRefused(Exception):
    """A login refused: its HTTP status, the message for the person, and for 429 the seconds
    to wait (Retry-After)."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        """`status` is the HTTP status (401, or 429 when throttled), `message` what the person
        reads, `retry_after` the seconds to wait, for a 429."""
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


WRONG = "wrong user name or password, or the user is revoked: check them, or ask ops"
KNOWN_CLIENT_COOKIE = "fleet_known_client"
KNOWN_CLIENT_MAX_AGE_S = 180 * 24 * 3600


def known_client_cookie(user: User, nonce: str | None = None) -> str:
    """The known-client cookie's value for `user`: `<nonce>.<HMAC-SHA256 hex>`. The key is the
    user's stored password hash, so a new password ends every cookie issued before (a revoked
    user cannot log in at all); whoever could read the hash could forge one, but a cookie only
    exempts from throttling, never from the password."""
    nonce = nonce or secrets.token_urlsafe(16)
    return f"{nonce}.{_client_mac(user, nonce)}"


def _client_mac(user: User, nonce: str) -> str:
    message = f"{user.id}:{nonce}".encode()
    key = (user.password_hash or "").encode()  # none: _known_client accepts no cookie
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _known_client(user: User | None, cookie: str | None) -> str | None:
    """The cookie's nonce when it was issued to `user` under the current password, else None."""
    if user is None or not user.password_hash or not cookie or len(cookie) > 200:
        return None
    nonce, _, mac = cookie.partition(".")
    if not nonce or not hmac.compare_digest(mac, _client_mac(user, nonce)):
        return None
    return nonce


class LoginThrottle:
    """Failed logins per account and per address, against ladders of limits such as
    "5/minute;20/hour;100/day" (the `limits` notation)."""

    def __init__(
        self, storage_uri: str = "memory://", account: str = "", address: str = ""
    ) -> None:
        """Counts kept in the `limits` storage at `storage_uri` (memory:// for one process,
        redis:// shared by workers); `account` and `address` are the ladders, empty for none."""
        self.limiter = MovingWindowRateLimiter(storage_from_string(storage_uri))
        self.account: list[RateLimitItem] = parse_many(account) if account else []
        self.address: list[RateLimitItem] = parse_many(address) if address else []

    def _ladders(
        self, name: str, address: str, client: str | None
    ) -> list[tuple[str, RateLimitItem, str]]:
        if client is not None:  # a known client: its own count, with the account's ladder
            return [("client", item, client) for item in self.account]
        return [("account", item, name.lower()) for item in self.account] + [
            ("address", item, address) for item in self.address
        ]

    def wait_s(self, name: str, address: str, client: str | None = None) -> tuple[str, int] | None:
        """(what is throttled, seconds to wait) when a limit is used up, else None. `client`
        is a verified known-client nonce: only its own count applies."""
        worst: tuple[str, int] | None = None
        for by, item, key in self._ladders(name, address, client):
            if not self.limiter.test(item, "login", by, key):
                reset = self.limiter.get_window_stats(item, "login", by, key).reset_time
                wait = max(1, math.ceil(reset - time.time()))
                if worst is None or wait > worst[1]:
                    worst = (by, wait)
        return worst

    def failed(self, name: str, address: str, client: str | None = None) -> None:
        """Count a failed login against the account and the address, or, for a known `client`,
        against that client alone."""
        for by, item, key in self._ladders(name, address, client):
            self.limiter.hit(item, "login", by, key)

    def succeeded(self, name: str, client: str | None = None) -> None:
        """Clear the account's failed logins, and the known `client`'s when given; the address
        keeps its count."""
        for item in self.account:
            self.limiter.clear(item, "login", "account", name.lower())
            if client is not None:
                self.limiter.clear(item, "login", "client", client)


@dataclass(frozen=True)
class LoggedIn:
    """A login that passed: who, whether they must set up a second factor before anything else,
    and the known-client cookie to set."""

    user: User
    # True when a second factor is required of this user and not yet set up: the session
    # may only set it up (fleet.auth.permissions refuses the rest).
    must_enrol_second_factor: bool
    # The known-client cookie to set (KNOWN_CLIENT_COOKIE), for KNOWN_CLIENT_MAX_AGE_S.
    known_client: str = ""


def log_in(
    session: Session,
    throttle: LoginThrottle,
    *,
    name: str,
    password: str,
    code: str | None,
    address: str,
    target: str,
    second_factor_roles: frozenset[str],
    known_client: str | None = None,
) -> LoggedIn:
    """Check a login, audit it and return who logged in; raises LoginRefused (401, or 429
    with Retry-After). A hash of an older scheme is replaced by its Argon2 rehash here.
    `known_client` is the KNOWN_CLIENT_COOKIE the request carried, if any."""
    user = None
    if 0 < len(name) <= MAX_NAME and "\x00" not in name:
        user = session.exec(select(User).where(User.name == name)).first()
    client = _known_client(user, known_client)
    throttled = throttle.wait_s(name, address, client)
    if throttled is not None:
        by, wait = throttled
        THROTTLED.labels(by).inc()
        log.warning("login of %r from %s throttled (%s) for %d s", name[:64], address, by, wait)
        raise LoginRefused(
            429,
            f"too many failed logins from this {by}: wait {wait} s and try again, or ask ops",
            retry_after=wait,
        )
    usable = user is not None and user.revoked_at is None and bool(user.password_hash)
    if user is None or not usable:
        spend_as_a_check(password)
        ok, new_hash = False, None
    else:
        ok, new_hash = verify_and_update(password, user.password_hash)
    password_ok = ok
    if ok and user is not None and not second_factor.check(session, user, code):
        ok = False
    if not ok or user is None:
        throttle.failed(name, address, client)
        if user is None:
            # A name nobody has: counted, not stored, so that guessing names cannot grow
            # the audit table (and the typed text, whatever it holds, is never written).
            REFUSALS.labels("login_unknown_user", "anonymous").inc()
        else:
            record(
                session,
                actor=user.name,
                role=user.role,
                action="login",
                target=f"{target} {address}",
                outcome="denied",
            )
            session.commit()
        # The same answer for an unknown user, a wrong password or a wrong code.
        # Only who gave the right password learns that a code was wrong or missing.
        message = WRONG
        if password_ok:
            message = (
                "the second factor is wrong or missing: give the 6-digit code your "
                "authenticator app shows now (or an unused recovery code)"
            )
        raise LoginRefused(401, message)
    if new_hash is not None:
        user.password_hash = new_hash  # PBKDF2 (or weaker Argon2) replaced at this login
        session.add(user)
    throttle.succeeded(name, client)
    record(session, actor=user.name, role=user.role, action="login", target=target)
    session.commit()
    session.refresh(user)
    required = user.role in second_factor_roles
    # After the rehash: the cookie is keyed by the hash now stored.
    cookie = known_client_cookie(user, client)
    return LoggedIn(user, required and not second_factor.is_active(session, user), cookie)
