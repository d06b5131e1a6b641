"""Users and bearer tokens for API tests: one per role of the permission matrix.

`ops_headers(engine)` is what an existing API test adds to call the API as ops."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import Engine
from sqlmodel import Session

from fleet.auth import passwords
from fleet.auth.users import add_user, create_token

PASSWORD = "correct horse battery"
T = TypeVar("T")


@pytest.fixture(autouse=True, scope="session")
def quick_password_hashes() -> Iterator[None]:
    """Users the tests make hash their password with Argon2id at its cheapest (one pass over
    1 MiB), not the product's 64 MiB and three passes: the same code in a fraction of the
    time. A hash carries its parameters, so checking a password is unchanged; test_auth checks
    the product's own parameters."""
    quick = passwords.password_context(Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(passwords, "PASSWORDS", quick)
        patch.setattr(passwords, "_DECOY", None)
        yield


@dataclass(frozen=True)
class Tokens:
    ops: str
    technician: str  # of upm
    vendor: str  # Seewo

    def headers(self, role: str) -> dict[str, str]:
        token = getattr(self, role, None)
        return {"Authorization": f"Bearer {token}"} if token else {}


def user_token(
    engine: Engine,
    name: str,
    role: str,
    *,
    sites: list[str] | None = None,
    vendor: str | None = None,
    ttl: timedelta | None = timedelta(hours=1),
) -> str:
    with Session(engine) as session:
        add_user(session, name, role, sites=sites, vendor=vendor, password=PASSWORD)
        token, _ = create_token(session, name, ttl=ttl)
    return token


def ops_headers(engine: Engine, name: str = "test-ops") -> dict[str, str]:
    return {"Authorization": f"Bearer {user_token(engine, name, 'ops')}"}


@pytest.fixture
def tokens(registered: Engine) -> Tokens:
    """ops, a technician of upm and a Seewo vendor, in the registered database."""
    return Tokens(
        ops=user_token(registered, "ops-centre", "ops"),
        technician=user_token(registered, "tech-upm", "technician", sites=["upm"]),
        vendor=user_token(registered, "vendor-seewo", "vendor", vendor="Seewo"),
    )


def ops_token_for(database_url: str, name: str = "stack-ops") -> str:
    """An ops token in the database of a controller running as its own process."""
    from fleet.db import make_engine

    engine = make_engine(database_url)
    try:
        return user_token(engine, name, "ops", ttl=timedelta(hours=6))
    finally:
        engine.dispose()


def sign_in(page: object, base: str, token: str) -> None:
    """Give a Playwright page the login cookie, as POST /api/v1/auth/token would."""
    page.context.add_cookies([{"name": "fleet_token", "value": token, "url": base}])  # type: ignore[attr-defined]


def read_at_answer(app: Any, read: Callable[[], T]) -> tuple[Any, list[T]]:
    """`app` wrapped so that `read()` runs when each answer starts (its
    `http.response.start`), before the client has any of it: what the app wrote before
    answering, such as an audit entry. Returns the wrapped ASGI app and the list each
    reading is appended to, in the order the answers started."""
    readings: list[T] = []

    async def watched(scope: Any, receive: Any, send: Any) -> None:
        async def send_watched(message: Any) -> None:
            if message["type"] == "http.response.start":
                readings.append(read())
            await send(message)

        await app(scope, receive, send_watched)

    return watched, readings
