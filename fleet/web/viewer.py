"""Who is looking at the pages. LOGIN GOES HERE.

There is no authentication yet: everyone is `ops` and sees every site. When the API gains
its auth (a later issue), `current_viewer` reads the session or token the same way the API
does, and the page routes — which already take `ViewerDep` — filter by `Viewer.sites` and
`Viewer.vendor` (a vendor sees only its own devices, a technician only their sites).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request


@dataclass(frozen=True)
class Viewer:
    name: str
    role: str  # "ops", "technician" or "vendor" once login exists
    sites: frozenset[str] | None = None  # None: every site
    vendor: str | None = None  # set for a vendor: only that vendor's devices
    authenticated: bool = False


ANONYMOUS_OPS = Viewer(name="ops", role="ops")


def current_viewer(request: Request) -> Viewer:
    """The caller that the page's permission let in (fleet.auth.permissions), as a Viewer."""
    caller = getattr(request.state, "caller", None)
    if caller is None or getattr(caller, "is_anonymous", True):
        return Viewer(name="anonymous", role="anonymous")
    return Viewer(
        name=caller.name,
        role=caller.role,
        sites=caller.sites,
        vendor=caller.vendor,
        authenticated=True,
    )


ViewerDep = Annotated[Viewer, Depends(current_viewer)]
