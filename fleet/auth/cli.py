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

    settings = Settings()
    # Says which database, so a user added to the wrong one is seen at once.
    typer.echo(f"fleet: {settings.where()}", err=True)
    engine = make_engine(settings.database_url)
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
    """Add a user (the first ops user: `fleet users add ops-lead --role ops`). A password must be
    at least 12 characters and hard to guess; a vendor must be one the fleet knows."""
    from fleet.auth.users import UserError, create_token, record_scope, register_user

    with _session() as session:
        if site:
            _sync_sites(session)
            site = [_site_code(session, code) for code in site]
        try:
            user = register_user(
                session,
                name,
                role,
                sites=site,
                vendor=vendor,
                password=password,
                profile_vendors=_profile_vendors(),
            )
        except UserError as exc:
            raise _fail(str(exc)) from None
        record_scope(session, user, "user.add", actor=f"cli:{_os_user()}", role="ops")
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


@users_app.command("change")
def users_change(
    name: str,
    role: Annotated[str | None, typer.Option(help="ops, technician or vendor.")] = None,
    site: Annotated[
        list[str] | None, typer.Option(help="A technician's site code (repeat for more).")
    ] = None,
    vendor: Annotated[str | None, typer.Option(help="A vendor user's vendor, e.g. Seewo.")] = None,
) -> None:
    """Give a user another role or scope (what PATCH /api/v1/users/NAME does). A new role
    drops the old one's scope and ends the user's login sessions; the last active ops user
    keeps the role."""
    from fleet.auth.users import UserError, change_user, record_scope

    with _session() as session:
        if site:
            _sync_sites(session)
            site = [_site_code(session, code) for code in site]
        try:
            user = change_user(
                session, name, role=role, sites=site, vendor=vendor,
                profile_vendors=_profile_vendors(),
            )  # fmt: skip
        except UserError as exc:
            raise _fail(str(exc)) from None
        record_scope(session, user, "user.change", actor=f"cli:{_os_user()}", role="ops")
        session.commit()
        typer.echo(f"{user.name} is now {user.role}" + _scope(user.sites, user.vendor))


@users_app.command("revoke")
def users_revoke(name: str) -> None:
    """Revoke a user and every token of theirs, at once (never the last active ops user)."""
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


# Debian's and the upstream package's user: Mosquitto started as root drops to it.
BROKER_USER = "mosquitto"


@mqtt_auth_app.command("export")
def mqtt_auth_export(
    out: Annotated[Path, typer.Option(help="Directory for `passwd` and `acl`.")],
    format: Annotated[str, typer.Option(help="Only mosquitto for now.")] = "mosquitto",
    owner: Annotated[
        str | None,
        typer.Option(
            help="User to own both files [default: mosquitto where it exists, the user "
            "Mosquitto drops to when started as root]."
        ),
    ] = None,
    group: Annotated[
        str | None, typer.Option(help="Group of both files [default: the owner's group].")
    ] = None,
    controller_user: Annotated[
        list[str] | None,
        typer.Option(
            help="A further controller user (repeat): one per ingest worker, each with the "
            "controller's password and ACL."
        ),
    ] = None,
) -> None:
    """Write the broker's password file and ACL file (mode 0600, owned by the broker's user):
    the controller's login (the user of FLEET_MQTT_URL, the password of FLEET_MQTT_PASSWORD)
    and each enrolled site's."""
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
    ids, owner_name = _file_owner(owner, group)
    login = ControllerLogin(address.username, address.password, tuple(controller_user or ()))
    with _session() as session:
        try:
            passwd, acl = export_mosquitto(session, out, login, settings.topic_root, ids)
        except ExportError as exc:
            raise _fail(str(exc)) from None
        except PermissionError:
            raise _fail(
                f"cannot give {out}/passwd and acl to {owner_name}: run the export as root, "
                "or pass --owner with the user Mosquitto runs as",
                1,
            ) from None
    whose = f"owner {owner_name}" if owner_name else "owner: you (no mosquitto user here)"
    typer.echo(
        f"wrote {passwd} and {acl} (mode 0600, {whose}): reload Mosquitto (kill -HUP) to apply them"
    )


def _file_owner(owner: str | None, group: str | None) -> tuple[tuple[int, int] | None, str]:
    """(uid, gid) to give the broker's files, and a name for them; (None, "") to keep the
    caller's: no --owner given and no mosquitto user on this host."""
    import grp
    import pwd

    name = owner or BROKER_USER
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        if owner is None:
            return None, ""
        raise _fail(f"no user {owner!r} on this host: pass --owner with an existing user") from None
    gid = user.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise _fail(f"no group {group!r} on this host: pass --group with one") from None
    return (user.pw_uid, gid), f"{name}:{group or grp.getgrgid(gid).gr_name}"


def _site_code(session: Session, code: str) -> str:
    """`code` itself, or a refusal that names the site meant when only its case differs
    (site codes are lowercase: `UPM` is `upm`)."""
    from sqlmodel import select

    from fleet.models import Site

    known = set(session.exec(select(Site.code)).all())
    if code not in known and code.lower() in known:
        raise _fail(f"unknown site {code!r}: site codes are lowercase, use --site {code.lower()}")
    return code


def _profile_vendors() -> set[str]:
    """The vendors the profiles folder names; none when its profiles do not load (`fleet
    serve` says why), the registry's names still standing."""
    from fleet.protocol.errors import ConfigErrors
    from fleet.protocol.profiles import load_profiles
    from fleet.settings import Settings

    try:
        return {p.vendor for p in load_profiles(Settings().profiles_dir).values()}
    except ConfigErrors:
        return set()


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
