"""`fleet users`, `fleet tokens` and `fleet mqtt-auth`: the commands ops runs on the
controller's host (they talk to the database of FLEET_DATABASE_URL directly)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from sqlmodel import Session

users_app = typer.Typer(help="Users of the API and dashboard.", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens.", no_args_is_help=True)
mqtt_auth_app = typer.Typer(help="Broker credentials and ACLs.", no_args_is_help=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def _session() -> Iterator[Session]:
    from sqlalchemy.exc import SQLAlchemyError

    from fleet.db import make_engine, migrate
    from fleet.settings import Settings

    engine = make_engine(Settings().database_url)
    try:
        migrate(engine)  # `fleet users add` may be the very first command on a new host
        with Session(engine) as session:
            yield session
    except SQLAlchemyError as exc:
        raise _fail(
            f"database {engine.url.render_as_string(hide_password=True)} failed "
            f"({type(exc).__name__}): check FLEET_DATABASE_URL",
            1,
        ) from None
    finally:
        engine.dispose()


def _ttl(days: float) -> timedelta | None:
    return timedelta(days=days) if days > 0 else None


@users_app.command("add")
def users_add(
    name: str,
    role: Annotated[str, typer.Option(help="ops, technician or vendor.")],
    site: Annotated[
        list[str] | None, typer.Option(help="A technician's site code (repeat for more).")
    ] = None,
    vendor: Annotated[str | None, typer.Option(help="A vendor user's vendor, e.g. Seewo.")] = None,
    password: Annotated[
        str | None,
        typer.Option(envvar="FLEET_USER_PASSWORD", help="For login; none: token only."),
    ] = None,
    token_days: Annotated[
        float, typer.Option(help="Also print an API token valid this many days (0: none).")
    ] = 30,
) -> None:
    """Add a user (the first ops user: `fleet users add alice --role ops`)."""
    from fleet.auth.audit import record
    from fleet.auth.users import UserError, add_user, create_token

    with _session() as session:
        if site:
            _sync_sites(session)
        try:
            user = add_user(session, name, role, sites=site, vendor=vendor, password=password)
        except UserError as exc:
            raise _fail(str(exc)) from None
        record(session, actor=f"cli:{_os_user()}", action="user.add", target=name, role="ops")
        session.commit()
        typer.echo(f"added {user.role} {user.name}" + _scope(user.sites, user.vendor))
        if token_days > 0:
            token, row = create_token(session, name, ttl=_ttl(token_days), label="cli")
            typer.echo(f"API token (shown once, expires {row.expires_at:%Y-%m-%d}): {token}")


@users_app.command("list")
def users_list() -> None:
    """Users, their roles and scopes."""
    from fleet.auth.users import list_users

    with _session() as session:
        for user in list_users(session):
            state = "revoked" if user.revoked_at else "active"
            typer.echo(f"{user.name}\t{user.role}\t{state}{_scope(user.sites, user.vendor)}")


@users_app.command("revoke")
def users_revoke(name: str) -> None:
    """Revoke a user and every token of theirs, at once."""
    from fleet.auth.audit import record
    from fleet.auth.users import UserError, revoke_user

    with _session() as session:
        try:
            count = revoke_user(session, name)
        except UserError as exc:
            raise _fail(str(exc)) from None
        record(session, actor=f"cli:{_os_user()}", action="user.revoke", target=name, role="ops")
        session.commit()
        typer.echo(f"revoked {name} and {count} token(s)")


@tokens_app.command("create")
def tokens_create(
    user: Annotated[str, typer.Option(help="Whose token.")],
    days: Annotated[float, typer.Option(help="Valid this many days (0: no expiry).")] = 30,
    label: Annotated[str, typer.Option(help="What it is for, e.g. 'grafana'.")] = "",
) -> None:
    """Print a new API token for a user (shown once; only its hash is kept)."""
    from fleet.auth.audit import record
    from fleet.auth.users import UserError, create_token

    with _session() as session:
        try:
            token, row = create_token(session, user, ttl=_ttl(days), label=label)
        except UserError as exc:
            raise _fail(str(exc)) from None
        record(
            session,
            actor=f"cli:{_os_user()}",
            action="token.create",
            target=user,
            role="ops",
            detail={"token_id": row.id, "label": label},
        )
        session.commit()
        typer.echo(token)


@mqtt_auth_app.command("export")
def mqtt_auth_export(
    out: Annotated[Path, typer.Option(help="Directory for `passwd` and `acl`.")],
    format: Annotated[str, typer.Option(help="Only mosquitto for now.")] = "mosquitto",
) -> None:
    """Write the broker's password file and ACL file: the controller's login (the user of
    FLEET_MQTT_URL, the password of FLEET_MQTT_PASSWORD) and each enrolled site's."""
    from fleet.auth.mqtt_auth import ControllerLogin, ExportError, export_mosquitto
    from fleet.protocol.broker_url import BrokerUrlError, parse_mqtt_url
    from fleet.settings import Settings

    if format != "mosquitto":
        raise _fail(f"format {format!r} is not supported: use --format mosquitto")
    settings = Settings()
    try:
        address = parse_mqtt_url(settings.mqtt_url)
    except BrokerUrlError as exc:
        raise _fail(str(exc)) from None
    if not address.username or not address.password:
        raise _fail(
            "the controller's broker login is not set: put the user in FLEET_MQTT_URL "
            "(mqtt://fleet-controller@host:port) and the password in FLEET_MQTT_PASSWORD"
        )
    with _session() as session:
        try:
            passwd, acl = export_mosquitto(
                session,
                out,
                ControllerLogin(address.username, address.password),
                settings.topic_root,
            )
        except ExportError as exc:
            raise _fail(str(exc)) from None
    typer.echo(f"wrote {passwd} and {acl}: reload Mosquitto (kill -HUP) to apply them")


def _sync_sites(session: Session) -> None:
    """Load site_configs/ into the registry, as `fleet serve` does, so a technician can be
    given a site before the controller's first start."""
    from fleet.devices.registry import sync_registry
    from fleet.protocol.errors import ConfigErrors
    from fleet.protocol.site_config import load_sites
    from fleet.settings import Settings

    settings = Settings()
    try:
        sites = load_sites(settings.sites_dir, settings.profiles_dir)
    except ConfigErrors as exc:
        raise _fail("; ".join(str(e) for e in exc.errors)) from None
    engine = session.get_bind()
    sync_registry(engine, sites)  # type: ignore[arg-type]


def _scope(sites: list[str], vendor: str | None) -> str:
    if sites:
        return f"\tsites: {', '.join(sites)}"
    return f"\tvendor: {vendor}" if vendor else ""


def _os_user() -> str:
    return os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"
