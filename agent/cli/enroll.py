"""`fleet-agent enroll`: a new site's config and broker credential, with a one-time token."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agent.cli.options import fail

# What deploy/systemd/fleet-agent@.service reads for the instance fleet-agent@<site>.
UNIT_CONFIG_DIR = Path("/etc/fleet-agent")


def enroll(
    controller: Annotated[str, typer.Option(help="The controller's URL, https://fleet.example")],
    token: Annotated[
        str, typer.Option(envvar="FLEET_ENROL_TOKEN", help="The one-time enrolment token.")
    ],
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out-dir",
            help="Where to write <site>.yaml and <site>.env; the unit fleet-agent@<site> "
            "reads them from /etc/fleet-agent.",
        ),
    ] = UNIT_CONFIG_DIR,
    ca: Annotated[
        str | None, typer.Option(help="CA file for a controller with a private certificate.")
    ] = None,
    owner: Annotated[
        str | None,
        typer.Option(
            help="User to own both files [default: fleet-agent, the unit's user, where it "
            "exists and enroll runs as root; else whoever runs enroll]."
        ),
    ] = None,
) -> None:
    """Fetch this site's config and broker credential with a one-time token, and write them
    (mode 0600) where the systemd unit fleet-agent@<site> reads them."""
    from agent.enrol import UNIT_USER, EnrolError, default_owner, enrol

    owner = owner or default_owner()
    typer.echo(f"enrolling at {controller} ...", err=True)
    try:
        done = enrol(controller, token, out_dir, ca, owner)
    except EnrolError as exc:
        raise fail(str(exc), code=1) from None
    except OSError as exc:
        raise fail(
            f"cannot write to {out_dir} ({exc.strerror}): run as root for /etc/fleet-agent, "
            "or pass --out-dir"
        ) from None
    who = f"owner {owner}" if owner else "owner: you"
    typer.echo(
        f"enrolled site {done.site}: wrote {done.config_path} and {done.env_path} "
        f"(mode 0600, {who})"
    )
    if out_dir.resolve() == UNIT_CONFIG_DIR:
        typer.echo(f"start it: systemctl enable --now fleet-agent@{done.site}")
        if owner != UNIT_USER:
            typer.echo(
                f"note: the unit runs as user {UNIT_USER}, which cannot read these files: "
                f"create it (useradd --system --home /var/lib/fleet-agent {UNIT_USER}) and "
                "enroll again, or pass --owner",
                err=True,
            )
    else:
        typer.echo(
            f"the unit fleet-agent@{done.site} reads /etc/fleet-agent/{done.site}.yaml and "
            f".env; to run by hand: set -a; . {done.env_path}; set +a; "
            f"fleet-agent run --config {done.config_path}"
        )
    typer.echo(
        "the broker learns this credential when ops run `fleet mqtt-auth export` and reload "
        "Mosquitto; until then the agent's login is refused"
    )
    if done.secrets_missing:
        typer.echo(
            f"fill in {', '.join(done.secrets_missing)} in {done.env_path} before running",
            err=True,
        )
