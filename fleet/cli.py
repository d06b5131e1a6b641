"""`fleet`: the controller's commands for ops."""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fleet.protocol.errors import ConfigErrors

if TYPE_CHECKING:
    from fleet.settings import Settings

app = typer.Typer(
    help="The classroom-fleet controller: registry, ingest, alerts, rollouts, reports.",
    no_args_is_help=True,
    add_completion=False,
)


def _logging(level: str) -> None:
    """Log lines with time, level and logger at `level`. APScheduler says "Running job" and
    "executed successfully" at INFO for every run of every job (the ingest and rollout ticks
    run each second): those stay under WARNING unless `level` is debug."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("apscheduler").setLevel(logging.WARNING)


def _config_errors(exc: ConfigErrors) -> typer.Exit:
    for err in exc.errors:
        typer.echo(f"error: {err}", err=True)
    return typer.Exit(2)


@app.command()
def serve(
    host: Annotated[str, typer.Option(envvar="FLEET_HOST", help="Address to listen on.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(envvar="FLEET_PORT")] = 8000,
    role: Annotated[
        str | None,
        typer.Option(
            help="all (default), api, ingest or scheduler: one part of a scaled-out "
            "controller (FLEET_ROLE)."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(envvar="FLEET_LOG_LEVEL")] = "info",
    profiles: Annotated[
        Path | None,
        typer.Option(
            help="Folder of firmware profiles (FLEET_PROFILES_DIR) [default: those shipped "
            "with the package]."
        ),
    ] = None,
    sites: Annotated[
        Path | None,
        typer.Option(
            help="Folder of site configs (FLEET_SITES_DIR) [default: /etc/fleet/sites, or "
            "site_configs/ in a source checkout]."
        ),
    ] = None,
) -> None:
    """Run the controller: API, dashboard and MQTT ingest.

    Configured by FLEET_DATABASE_URL, FLEET_MQTT_URL, FLEET_DATA_DIR and the other FLEET_*
    variables (see the README).
    """
    from fleet.memory import frozen_startup, limit_arenas

    limit_arenas()  # before uvicorn, the scheduler and paho start their threads
    # `kill -USR1` prints every thread's stack to stderr: where a stuck controller is.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    with frozen_startup():
        import uvicorn
        from pydantic import ValidationError

        from fleet.devices.registry import RegistryError
        from fleet.protocol.broker_url import BrokerUrlError
        from fleet.service import build_controller
        from fleet.settings import Settings

        _logging(log_level)
        try:
            settings = Settings()
            given = {"role": role, "profiles_dir": profiles, "sites_dir": sites}
            chosen = {k: v for k, v in given.items() if v is not None}
            if chosen:
                settings = Settings.model_validate({**settings.model_dump(), **chosen})
            _say_where(settings)
            controller = build_controller(settings)
        except ValidationError as exc:
            typer.echo(f"error: bad FLEET_* setting: {exc}", err=True)
            raise typer.Exit(2) from None
        except ConfigErrors as exc:
            raise _config_errors(exc) from None
        except (BrokerUrlError, RegistryError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    uvicorn.run(controller.app, host=host, port=port, log_level=log_level.lower())


def _say_where(settings: Settings) -> None:
    """One line on stderr: the database, data folder, site configs and profiles in use."""
    typer.echo(
        f"fleet: {settings.where()}; sites {settings.sites_dir}; profiles {settings.profiles_dir}",
        err=True,
    )


@app.command()
def demo(
    data_dir: Annotated[
        Path,
        typer.Option(
            envvar="FLEET_DATA_DIR",
            help="The data folder, as for every command: the database (unless "
            "FLEET_DATABASE_URL) and the agents' outboxes.",
        ),
    ] = Path("data"),
    port: Annotated[int, typer.Option(help="HTTP port; a free one if taken.")] = 8000,
    log_level: Annotated[str, typer.Option(envvar="FLEET_LOG_LEVEL")] = "warning",
    faults: Annotated[
        bool, typer.Option(help="Devices fail and a site goes offline on a schedule.")
    ] = True,
) -> None:
    """Everything on one machine: embedded broker, SQLite, controller, agents, simulated
    devices. Prints the URL; Ctrl-C stops it all."""
    from fleet.memory import frozen_startup

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # as `fleet serve`
    with frozen_startup():  # the import is most of the demo's start (fleet.service)
        from fleet.demo import DemoOptions, run_demo

    _logging(log_level)
    try:
        asyncio.run(run_demo(DemoOptions(data_dir=data_dir, port=port, faults=faults)))
    except ConfigErrors as exc:
        raise _config_errors(exc) from None


@app.command()
def programme(
    as_of: Annotated[
        str | None, typer.Option(help="Judge lateness on this day (YYYY-MM-DD); default today.")
    ] = None,
    csv: Annotated[bool, typer.Option("--csv", help="Print the CSV export instead.")] = False,
) -> None:
    """The installation programme: each site's current milestone, the next planned, what is
    late. Reads the database of FLEET_DATABASE_URL (or FLEET_DATA_DIR)."""
    from datetime import date

    from rich.console import Console
    from sqlalchemy.exc import SQLAlchemyError
    from sqlmodel import Session

    from fleet.db import make_engine
    from fleet.programme.csv_records import export_programme_csv
    from fleet.programme.overview import programme_overview
    from fleet.programme.table import programme_table
    from fleet.protocol.messages import utcnow
    from fleet.settings import Settings

    try:
        day = date.fromisoformat(as_of) if as_of else None
    except ValueError:
        typer.echo(f"error: --as-of {as_of!r} is not a date: write YYYY-MM-DD", err=True)
        raise typer.Exit(2) from None
    settings = Settings()
    engine = make_engine(settings.database_url)
    try:
        with Session(engine) as session:
            if csv:
                typer.echo(export_programme_csv(session), nl=False)
                return
            overview = programme_overview(session, utcnow(), day)
    except SQLAlchemyError as exc:
        typer.echo(
            f"error: cannot read the programme from {engine.url!r} ({type(exc).__name__}): "
            "check FLEET_DATABASE_URL, and run `fleet serve` once to create the schema",
            err=True,
        )
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    Console().print(programme_table(overview))
    if not overview:
        typer.echo(
            f"no site has a programme in {settings.where()}: is this the database you meant? "
            "Set FLEET_DATA_DIR or FLEET_DATABASE_URL as for `fleet serve` (or `fleet demo`), "
            "which loads the programme from the site configs",
            err=True,
        )


def _add_auth_commands() -> None:
    from fleet.auth.cli import mqtt_auth_app, tokens_app, users_app

    app.add_typer(users_app, name="users")
    app.add_typer(tokens_app, name="tokens")
    app.add_typer(mqtt_auth_app, name="mqtt-auth")


_add_auth_commands()


def main() -> None:
    app()
