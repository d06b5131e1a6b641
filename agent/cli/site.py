"""`fleet-agent run`, `check`, `simulate` and `status`: the agent at work, and a technician's
look at it."""

from __future__ import annotations

import asyncio
import faulthandler
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from agent.cli.options import (
    DEFAULT_DATA_DIR,
    DEFAULT_MQTT,
    AddressMapOpt,
    ConfigOpt,
    DataDirOpt,
    MqttOpt,
    address_map_or_exit,
    broker_or_exit,
    fail,
    load_site_or_exit,
    set_up_logging,
)
from agent.poller import AddressMapError


def run(
    config: ConfigOpt,
    mqtt_url: MqttOpt = DEFAULT_MQTT,
    data_dir: DataDirOpt = DEFAULT_DATA_DIR,
    address_map: AddressMapOpt = None,
    topic_root: Annotated[str, typer.Option(envvar="FLEET_TOPIC_ROOT")] = "fleet/v1",
    max_batches_per_s: Annotated[
        float,
        typer.Option(
            min=0.01, help="Health batches in any one second at most (a backlog drains at this)."
        ),
    ] = 5.0,
    max_bytes_per_s: Annotated[
        int,
        typer.Option(
            min=1024,
            help="Bytes of health batches in any one second at most; a batch is never larger.",
        ),
    ] = 256 * 1024,
    linger: Annotated[
        float,
        typer.Option(
            help="Seconds a part-filled batch waits for more readings (not the first sweep's, "
            "nor those a command asked for: they go at once)."
        ),
    ] = 5.0,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics on 127.0.0.1 at this port."),
    ] = None,
    log_level: Annotated[str, typer.Option(envvar="FLEET_LOG_LEVEL")] = "info",
    client_id: Annotated[
        str | None,
        typer.Option(
            envvar="FLEET_AGENT_CLIENT_ID",
            help="MQTT client id; keep it stable so that the broker keeps the agent's session "
            "[default: agent-<site>-<agent id>].",
        ),
    ] = None,
    session_expiry: Annotated[
        int,
        typer.Option(
            envvar="FLEET_AGENT_SESSION_EXPIRY_S",
            min=0,
            help="Seconds the broker keeps commands for the agent while it is away; "
            "0 for a clean session.",
        ),
    ] = 7 * 24 * 3600,
) -> None:
    """Poll the site's devices and publish their health until stopped."""
    from agent.publisher import BrokerError
    from agent.runner import AgentOptions, SiteAgent, outbox_path

    set_up_logging(log_level)
    site = load_site_or_exit(config)
    broker = broker_or_exit(mqtt_url)
    options = AgentOptions(
        data_dir=data_dir,
        address_map=address_map_or_exit(address_map),
        topic_root=topic_root,
        max_batches_per_s=max_batches_per_s,
        max_bytes_per_s=max_bytes_per_s,
        linger_s=linger,
        client_id=client_id,
        session_expiry_s=session_expiry,
    )

    if metrics_port is not None:
        from agent.metrics import serve

        try:
            serve(metrics_port)
        except OSError as exc:
            raise fail(f"cannot serve metrics on 127.0.0.1:{metrics_port} ({exc})") from None

    # `kill -USR1` prints every thread's stack to the log (stderr): where a stuck agent is.
    faulthandler.register(signal.SIGUSR1, all_threads=True)

    async def main() -> None:
        try:
            agent = SiteAgent(site, broker, options)
        except AddressMapError as exc:
            raise fail(str(exc)) from None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.stop.set)
        logging.getLogger("agent").info(
            "site %s: polling %d devices, publishing to %s, outbox %s",
            site.config.code,
            len(agent.poller.targets),
            broker.display(),
            outbox_path(data_dir, site.config.code).resolve(),
        )
        try:
            await agent.run()
        except BrokerError as exc:
            raise fail(str(exc), code=3) from None

    asyncio.run(main())


def check(
    config: ConfigOpt,
    mqtt_url: MqttOpt = DEFAULT_MQTT,
    address_map: AddressMapOpt = None,
    controller: Annotated[
        str | None, typer.Option(help="Controller URL, to compare clocks.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check the config, the broker, each device and the clock. Exit 1 if any check fails
    (a config that cannot be loaded is a failed check too); progress goes to stderr."""
    from agent.check import run_checks, run_checks_without_config
    from fleet.protocol.errors import ConfigErrors
    from fleet.protocol.site_config import load_site

    def say(line: str) -> None:
        typer.echo(line, err=True)

    broker = broker_or_exit(mqtt_url)
    say(f"checking {config} ...")
    try:
        site = load_site(config)
    except ConfigErrors as exc:
        title = f"fleet-agent check: {config}"
        results = asyncio.run(
            run_checks_without_config(broker, controller, [str(e) for e in exc.errors])
        )
    else:
        title = f"fleet-agent check: {site.config.code}"
        try:
            results = asyncio.run(
                run_checks(site, broker, address_map_or_exit(address_map), controller, say)
            )
        except AddressMapError as exc:
            raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for column in ("check", "status", "detail"):
            table.add_column(column, overflow="fold")
        colour = {"ok": "green", "warn": "yellow", "fail": "red"}
        for r in results:
            table.add_row(r.name, f"[{colour[r.status]}]{r.status}[/]", r.detail)
        Console(
            width=max(100, os.get_terminal_size(0).columns if sys.stdin.isatty() else 140)
        ).print(table)
    if any(r.status == "fail" for r in results):
        raise typer.Exit(1)


def simulate(
    config: ConfigOpt,
    address_map_out: Annotated[
        Path | None,
        typer.Option("--address-map", help="Where to write the device → loopback port map."),
    ] = None,
    seed: int = 0,
    warm_up_s: Annotated[
        float,
        typer.Option(
            "--warm-up-s",
            min=0,
            max=3600,
            help="How long a simulated projector warms up and cools down, in seconds.",
        ),
    ] = 60.0,
    log_level: Annotated[str, typer.Option(envvar="FLEET_LOG_LEVEL")] = "info",
) -> None:
    """Simulated devices for a site, on loopback ports, until stopped."""
    from agent.simulator import start_site, write_address_map

    set_up_logging(log_level)
    site = load_site_or_exit(config)
    out = address_map_out or Path("data") / f"sim-{site.config.code}.json"

    async def main() -> None:
        simulated = await start_site(site, seed=seed, transition_s=warm_up_s)
        write_address_map(out, simulated.address_map)
        typer.echo(
            f"simulating {len(simulated.address_map)} devices of {site.config.code} on loopback; "
            f"address map in {out}. Run the agent with --address-map {out}. Ctrl-C stops."
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await simulated.close()

    asyncio.run(main())


def status(config: ConfigOpt, data_dir: DataDirOpt = DEFAULT_DATA_DIR) -> None:
    """Print the outbox's counters as JSON: taken, acknowledged, waiting, dropped, and the
    batches the broker refused, by reason code, with the fix."""
    from agent.outbox import read_status
    from agent.runner import outbox_path

    site = load_site_or_exit(config)
    path = outbox_path(data_dir, site.config.code)
    if not path.exists():
        raise fail(f"no outbox at {path}: has the agent run with --data-dir {data_dir}?")
    status = read_status(path)
    typer.echo(json.dumps({"site": site.config.code, **status.as_dict()}, indent=2))
