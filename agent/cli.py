"""`fleet-agent`: run, check, simulate and status, for a site technician."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Annotated

import typer

from agent.poller import AddressMapError
from fleet.protocol.broker_url import BrokerAddress, BrokerUrlError, parse_mqtt_url
from fleet.protocol.errors import ConfigErrors
from fleet.protocol.messages import Topics
from fleet.protocol.site_config import LoadedSite, load_site

app = typer.Typer(
    help="The classroom-fleet site agent: polls classroom devices, reports to the controller.",
    no_args_is_help=True,
    add_completion=False,
)

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


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _load(config: Path) -> LoadedSite:
    try:
        return load_site(config)
    except ConfigErrors as exc:
        for err in exc.errors:
            typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


def _broker(url: str) -> BrokerAddress:
    try:
        return parse_mqtt_url(url)
    except BrokerUrlError as exc:
        raise _fail(f"{exc}. Fix: pass --mqtt-url or set FLEET_MQTT_URL") from None


def _address_map(path: Path | None) -> dict[str, tuple[str, int]] | None:
    if path is None:
        return None
    from agent.simulator import read_address_map

    try:
        return read_address_map(path)
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot read the address map {path}: {exc}") from None


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
def run(
    config: ConfigOpt,
    mqtt_url: MqttOpt = DEFAULT_MQTT,
    data_dir: DataDirOpt = DEFAULT_DATA_DIR,
    address_map: AddressMapOpt = None,
    topic_root: Annotated[str, typer.Option(envvar="FLEET_TOPIC_ROOT")] = "fleet/v1",
    max_batches_per_s: Annotated[
        float, typer.Option(help="Drain rate after an outage, batches per second.")
    ] = 5.0,
    linger: Annotated[
        float, typer.Option(help="Seconds a part-filled batch waits for more readings.")
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
    from agent.runner import AgentOptions, SiteAgent

    _logging(log_level)
    site = _load(config)
    broker = _broker(mqtt_url)
    options = AgentOptions(
        data_dir=data_dir,
        address_map=_address_map(address_map),
        topic_root=topic_root,
        max_batches_per_s=max_batches_per_s,
        linger_s=linger,
        client_id=client_id,
        session_expiry_s=session_expiry,
    )

    if metrics_port is not None:
        from agent.metrics import serve

        try:
            serve(metrics_port)
        except OSError as exc:
            raise _fail(f"cannot serve metrics on 127.0.0.1:{metrics_port} ({exc})") from None

    async def main() -> None:
        try:
            agent = SiteAgent(site, broker, options)
        except AddressMapError as exc:
            raise _fail(str(exc)) from None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.stop.set)
        logging.getLogger("agent").info(
            "site %s: polling %d devices, publishing to %s",
            site.config.code,
            len(agent.poller.targets),
            broker.display(),
        )
        try:
            await agent.run()
        except BrokerError as exc:
            raise _fail(str(exc), code=3) from None

    asyncio.run(main())


@app.command()
def check(
    config: ConfigOpt,
    mqtt_url: MqttOpt = DEFAULT_MQTT,
    address_map: AddressMapOpt = None,
    controller: Annotated[
        str | None, typer.Option(help="Controller URL, to compare clocks.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check the config, the broker, each device and the clock. Exit 1 if any check fails."""
    from agent.check import run_checks

    site = _load(config)
    broker = _broker(mqtt_url)
    try:
        results = asyncio.run(run_checks(site, broker, _address_map(address_map), controller))
    except AddressMapError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"fleet-agent check: {site.config.code}")
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


@app.command()
def simulate(
    config: ConfigOpt,
    address_map_out: Annotated[
        Path | None,
        typer.Option("--address-map", help="Where to write the device → loopback port map."),
    ] = None,
    seed: int = 0,
    log_level: Annotated[str, typer.Option(envvar="FLEET_LOG_LEVEL")] = "info",
) -> None:
    """Simulated devices for a site, on loopback ports, until stopped."""
    from agent.simulator import start_site, write_address_map

    _logging(log_level)
    site = _load(config)
    out = address_map_out or Path("data") / f"sim-{site.config.code}.json"

    async def main() -> None:
        simulated = await start_site(site, seed=seed)
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


@app.command()
def status(config: ConfigOpt, data_dir: DataDirOpt = DEFAULT_DATA_DIR) -> None:
    """Print the outbox's counters as JSON: taken, acknowledged, waiting, dropped."""
    from agent.outbox import read_status
    from agent.runner import outbox_path

    site = _load(config)
    path = outbox_path(data_dir, site.config.code)
    if not path.exists():
        raise _fail(f"no outbox at {path}: has the agent run with --data-dir {data_dir}?")
    status = read_status(path)
    typer.echo(json.dumps({"site": site.config.code, **status.as_dict()}, indent=2))


@app.command()
def discover(
    config: ConfigOpt,
    targets: Annotated[
        list[str],
        typer.Option(help="Addresses or CIDR ranges to probe (repeat, or comma-separate)."),
    ],
    ports: Annotated[
        list[str] | None,
        typer.Option(
            help="Ports per protocol, e.g. 'snmp=161 pjlink=4352,40003-40005'. "
            "Default: snmp=161 pjlink=4352."
        ),
    ] = None,
    community: Annotated[
        list[str] | None,
        typer.Option(help="SNMP communities to try (default: those of the site config)."),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=256)] = 32,
    timeout: Annotated[float, typer.Option(min=0.1, max=30, help="Seconds per probe.")] = 1.0,
    out: Annotated[
        Path | None, typer.Option(help="Write the draft devices section here, not stdout.")
    ] = None,
    force: Annotated[
        bool, typer.Option(help="Allow ranges of more than 1024 addresses (a /22).")
    ] = False,
    publish: Annotated[
        bool,
        typer.Option(
            help="Also send the findings to the controller (a discovery event on "
            "fleet/v1/<site>/events), for ops to see what is on the network."
        ),
    ] = False,
    mqtt_url: MqttOpt = DEFAULT_MQTT,
    topic_root: Annotated[str, typer.Option(envvar="FLEET_TOPIC_ROOT")] = "fleet/v1",
) -> None:
    """Find SNMP and PJLink devices on the listed targets; draft a devices section to review."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from agent import discover as discovery
    from agent import discovery_report
    from fleet.protocol.profiles import load_profiles
    from fleet.protocol.site_config import profiles_dir_for

    site = _load(config)
    try:
        hosts = discovery.parse_targets(targets, force=force)
        probes = discovery.plan_probes(hosts, discovery.parse_ports(ports or []))
    except discovery.DiscoveryError as exc:
        raise _fail(str(exc)) from None
    profiles = load_profiles(profiles_dir_for(config))
    communities, passwords = discovery.site_secrets(site)
    if community:
        communities = list(dict.fromkeys(community))
    # The bar goes to stderr, so that stdout is the draft alone.
    console = Console(stderr=True)
    with Progress(
        TextColumn("probing"), BarColumn(), MofNCompleteColumn(), console=console
    ) as progress:
        task = progress.add_task("probes", total=len(probes))
        findings = asyncio.run(
            discovery.discover(
                probes,
                profiles,
                communities=communities,
                passwords=passwords,
                concurrency=concurrency,
                timeout=timeout,
                on_done=lambda _probe: progress.advance(task),
            )
        )
    draft = discovery_report.draft_devices_yaml(findings, site, profiles, targets)
    if out is None:
        typer.echo(draft, nl=False)
    else:
        out.write_text(draft, encoding="utf-8")
    console.print(
        f"{len(findings)} of {len(probes)} probes answered"
        + (f"; draft written to {out}" if out else "")
    )
    if publish:
        event = discovery_report.discovery_event(findings, site, targets, len(probes))
        topic = Topics(topic_root).events(site.config.code)
        error = asyncio.run(_publish_once(_broker(mqtt_url), site, topic, event.to_json()))
        if error:
            raise _fail(f"the findings were not sent: {error}. The draft above is complete.")
        console.print(f"findings sent to the controller on {topic}")


async def _publish_once(
    broker: BrokerAddress, site: LoadedSite, topic: str, payload: bytes
) -> str | None:
    """Publish one message at QoS 1 and wait for the broker's PUBACK; the error, if any."""
    from agent.publisher import BrokerError, MqttLink, NotConnected
    from agent.reach import diagnose

    # A refused port or a bad certificate is said at once, not after the connect timeout.
    why = await asyncio.to_thread(diagnose, broker)
    if why:
        return f"cannot reach {broker.display()}: {why}"
    client_id = f"discover-{site.config.code}-{uuid.uuid4().hex[:8]}"
    link = MqttLink(broker, client_id=client_id)
    try:
        await link.start(first_connect_timeout=10)
    except BrokerError as exc:
        return str(exc)
    try:
        if not await link.wait_connected(5):
            why = await asyncio.to_thread(diagnose, broker)
            return f"cannot reach {broker.display()}: {why or 'no MQTT answer'}"
        await link.publish(topic, payload, timeout=15)
    except (NotConnected, TimeoutError) as exc:
        return f"{broker.display()} did not acknowledge it: {exc}"
    finally:
        await link.close()
    return None


@app.command()
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
        raise _fail(str(exc), code=1) from None
    except OSError as exc:
        raise _fail(f"cannot write to {out_dir} ({exc.strerror}): pass --out-dir") from None
    typer.echo(
        f"enrolled site {done.site}: config {done.config_path}, credentials {done.env_path}\n"
        f"run: set -a; . {done.env_path}; set +a; fleet-agent run --config {done.config_path}"
    )
    if done.secrets_missing:
        typer.echo(
            f"fill in {', '.join(done.secrets_missing)} in {done.env_path} before running",
            err=True,
        )


def main() -> None:
    app()
