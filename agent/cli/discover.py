"""`fleet-agent discover`: find a site's devices on the network and draft its devices section."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Annotated

import typer

from agent.cli.options import (
    DEFAULT_MQTT,
    AddressMapOpt,
    ConfigOpt,
    MqttOpt,
    address_map_or_exit,
    broker_or_exit,
    fail,
    load_site_or_exit,
)
from fleet.protocol.broker_url import BrokerAddress
from fleet.protocol.messages import Topics
from fleet.protocol.site_config import LoadedSite


def discover(
    config: ConfigOpt,
    targets: Annotated[
        list[str] | None,
        typer.Option(help="Addresses or CIDR ranges to probe (repeat, or comma-separate)."),
    ] = None,
    chains: Annotated[
        bool,
        typer.Option(
            help="Instead: try every collector each configured device's profile lists and "
            "propose the chain (and agent.enable_collectors) from what answered."
        ),
    ] = False,
    address_map: AddressMapOpt = None,
    ports: Annotated[
        list[str] | None,
        typer.Option(
            help="Ports per protocol, e.g. 'snmp=161 pjlink=4352,40003-40005 maxhub-lan=4664'. "
            "Default: snmp=161 pjlink=4352 maxhub-lan=4664."
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
    """Find SNMP, PJLink and MAXHUB LAN devices on the listed targets; draft a devices section
    to review. With --chains: which collectors answer each configured device."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from agent import discover as discovery
    from agent import discovery_report
    from fleet.protocol.profiles import load_profiles
    from fleet.protocol.site_config import profiles_dir_for

    site = load_site_or_exit(config)
    if chains:
        from agent.chain_probe import probe_chains, proposals_yaml
        from agent.poller import AddressMapError

        try:
            proposals = asyncio.run(probe_chains(site, address_map_or_exit(address_map)))
        except AddressMapError as exc:
            raise fail(str(exc)) from None
        typer.echo(proposals_yaml(site, proposals), nl=False)
        return
    if not targets:
        raise fail("no targets. Fix: pass --targets 192.0.2.0/24 (or addresses), or --chains")
    try:
        hosts = discovery.parse_targets(targets, force=force)
        probes = discovery.plan_probes(hosts, discovery.parse_ports(ports or []))
    except discovery.DiscoveryError as exc:
        raise fail(str(exc)) from None
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
        error = asyncio.run(publish_once(broker_or_exit(mqtt_url), site, topic, event.to_json()))
        if error:
            raise fail(f"the findings were not sent: {error}. The draft above is complete.")
        console.print(f"findings sent to the controller on {topic}")


async def publish_once(
    broker: BrokerAddress, site: LoadedSite, topic: str, payload: bytes
) -> str | None:
    """Publish one message at QoS 1 and wait for the broker's PUBACK; the error, if any."""
    from agent.publisher import BrokerError, MqttLink, NotConnected, PublishRefused
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
        return f"{broker.display()} did not acknowledge it: {exc or 'no PUBACK in time'}"
    except PublishRefused as exc:
        return str(exc)
    finally:
        await link.close()
    return None
