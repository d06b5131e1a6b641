"""What every `fleet-agent` command shares: its options, and how a bad input ends it (a
message on stderr that says the fix, and exit code 2), never a traceback."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from fleet.protocol.broker_url import BrokerAddress, BrokerUrlError, parse_mqtt_url
from fleet.protocol.errors import ConfigErrors
from fleet.protocol.site_config import LoadedSite, load_site

ConfigOpt = Annotated[
    Path, typer.Option("--config", "-c", help="The site config, e.g. site_configs/upm.yaml.")
]
MqttOpt = Annotated[
    str,
    typer.Option(
        "--mqtt-url",
        envvar="FLEET_MQTT_URL",
        help="Broker URL, mqtt[s]://user@host:port; the password from FLEET_MQTT_PASSWORD.",
    ),
]
DataDirOpt = Annotated[
    Path,
    typer.Option("--data-dir", envvar="FLEET_AGENT_DATA_DIR", help="Where the outbox lives."),
]
AddressMapOpt = Annotated[
    Path | None,
    typer.Option(
        "--address-map",
        help="JSON map of device id to loopback host:port, written by `fleet-agent simulate`.",
    ),
]
DEFAULT_MQTT = "mqtt://127.0.0.1:1883"
DEFAULT_DATA_DIR = Path("data/agent")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `error: message` on stderr; the Exit to raise with `code`."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def load_site_or_exit(config: Path) -> LoadedSite:
    """The site config at `config`, or every problem in it printed and exit 2."""
    try:
        return load_site(config)
    except ConfigErrors as exc:
        for err in exc.errors:
            typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


def broker_or_exit(url: str) -> BrokerAddress:
    """The broker a URL names, or the reason it is bad and exit 2."""
    try:
        return parse_mqtt_url(url)
    except BrokerUrlError as exc:
        raise fail(f"{exc}. Fix: pass --mqtt-url or set FLEET_MQTT_URL") from None


def address_map_or_exit(path: Path | None) -> dict[str, tuple[str, int]] | None:
    """Device id -> (host, port) from `fleet-agent simulate`'s JSON map; None without one."""
    if path is None:
        return None
    from agent.simulator import read_address_map

    try:
        return read_address_map(path)
    except (OSError, ValueError) as exc:
        raise fail(f"cannot read the address map {path}: {exc}") from None


def set_up_logging(level: str) -> None:
    """Log lines with time, level and logger at `level` (debug, info, warning, error)."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
