"""The demo's users: one per role, each with a token the demo prints (a demo has no secrets
worth keeping; a real deployment makes its users with `fleet users add`)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine
from sqlmodel import Session, select

from fleet.auth.models import User
from fleet.auth.users import add_user, create_token

DEMO_PASSWORD = "demo"  # noqa: S105  (the demo's users only)
# (name, role, sites, vendor)
DEMO_USERS = (
    ("demo-ops", "ops", None, None),
    ("demo-tech-upm", "technician", ["upm"], None),
    ("demo-seewo", "vendor", None, "Seewo"),
)


def demo_tokens(engine: Engine, ttl: timedelta = timedelta(days=1)) -> dict[str, str]:
    """Make the demo users if missing and a fresh token for each: {user name: token}."""
    tokens: dict[str, str] = {}
    with Session(engine) as session:
        for name, role, sites, vendor in DEMO_USERS:
            if session.exec(select(User).where(User.name == name)).first() is None:
                add_user(session, name, role, sites=sites, vendor=vendor, password=DEMO_PASSWORD)
            tokens[name], _ = create_token(session, name, ttl=ttl, label="demo")
    return tokens
