"""`fleet-agent`: run, check, simulate, status, discover and enroll, for a site technician.

One module per concern: `site` (the agent at work), `discover`, `enroll`; `options` holds what
they share.
"""

from __future__ import annotations

import typer

from agent.cli import discover, enroll, site

app = typer.Typer(
    help="The classroom-fleet site agent: polls classroom devices, reports to the controller.",
    no_args_is_help=True,
    add_completion=False,
)
app.command()(site.run)
app.command()(site.check)
app.command()(site.simulate)
app.command()(site.status)
app.command()(discover.discover)
app.command()(enroll.enroll)


def main() -> None:
    """The `fleet-agent` console script."""
    app()
