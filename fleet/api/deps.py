"""Dependencies shared by the routes, declared once as types."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlmodel import Session

from fleet.auth.permissions import REQUEST_SESSION
from fleet.settings import Settings

# The dependencies that do no I/O are `async def`: FastAPI runs a plain `def` dependency in the
# thread pool, a hop there and back on every request for a dictionary look-up.


async def get_engine(request: Request) -> Engine:
    """The controller's database engine (`app.state.engine`), as EngineDep."""
    engine: Engine = request.app.state.engine
    return engine


async def get_session(
    request: Request, engine: Annotated[Engine, Depends(get_engine)]
) -> AsyncIterator[Session]:
    """A database session for one request, as SessionDep: kept on `request.state` for the
    permission's audit, closed once the answer is sent."""
    # Async, though Session is not: making one does no I/O (it connects on first use, in the
    # route's thread), so a request need not hop to the thread pool to make and close it.
    session = Session(engine)
    # Closed once the answer is sent; the permission's audit of a refused change, written
    # before that, first ends its transaction here (fleet.auth.permissions.REQUEST_SESSION).
    setattr(request.state, REQUEST_SESSION, session)
    try:
        yield session
    finally:
        session.close()


async def get_settings(request: Request) -> Settings:
    """The controller's settings (`app.state.settings`), as SettingsDep."""
    settings: Settings = request.app.state.settings
    return settings


EngineDep = Annotated[Engine, Depends(get_engine)]
SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
