"""Who is looking at the pages: the caller the page's permission let in, as the templates see it.

The page routes filter by `Viewer.sites` and `Viewer.vendor` (a vendor sees only its own
devices, a technician only their sites), and the menu shows only the pages the role may open.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from fleet.auth.permissions import POLICY


@dataclass(frozen=True)
class Viewer:
    """Who is looking at a page, as the templates and the page routes see it: name, role, and
    scope (`sites`, `vendor`)."""

    name: str
    role: str  # "ops", "technician", "vendor", or "anonymous" on a public page
    sites: frozenset[str] | None = None  # None: every site
    vendor: str | None = None  # set for a vendor: only that vendor's devices
    authenticated: bool = False

    def may(self, permission: str) -> bool:
        """Whether the role holds the permission (POLICY): the menu shows only such pages."""
        return self.role in POLICY.get(permission, frozenset())

    @property
    def scope(self) -> str:
        """The viewer's scope in words, for a page's refusals: a vendor's devices, a technician's
        sites, or every site."""
        if self.vendor is not None:
            return f"{self.vendor} devices"
        if self.sites is not None:
            return ", ".join(sorted(self.sites)) or "no sites"
        return "every site"


ANONYMOUS_OPS = Viewer(name="ops", role="ops")


async def current_viewer(request: Request) -> Viewer:
    """`viewer_of(request)` as a dependency (async: no I/O, so no hop to the thread pool)."""
    return viewer_of(request)


def viewer_of(request: Request) -> Viewer:
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
