"""`fleet-agent enroll`: a new site's config and broker credential, with a one-time token."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agent.cli.options import fail


def enroll(
    controller: Annotated[str, typer.Option(help="The controller's URL, https://fleet.example")],
    token: Annotated[
        str, typer.Option(envvar="FLEET_ENROL_TOKEN", help="The one-time enrolment token.")
    ],
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="Where to write <site>.yaml and <site>.env.")
    ] = Path("/etc/fleet-agent"),
    ca: Annotated[
        str | None, typer.Option(help="CA file for a controller with a private certificate.")
    ] = None,
) -> None:
    """Fetch this site's config and broker credential with a one-time token (mode 0600)."""
    from agent.enrol import EnrolError, enrol

    try:
        done = enrol(controller, token, out_dir, ca)
    except EnrolError as exc:
        raise fail(str(exc), code=1) from None
    except OSError as exc:
        raise fail(f"cannot write to {out_dir} ({exc.strerror}): pass --out-dir") from None
    typer.echo(
        f"enrolled site {done.site}: config {done.config_path}, credentials {done.env_path}\n"
        f"run: set -a; . {done.env_path}; set +a; fleet-agent run --config {done.config_path}"
    )
    if done.secrets_missing:
        typer.echo(
            f"fill in {', '.join(done.secrets_missing)} in {done.env_path} before running",
            err=True,
        )
