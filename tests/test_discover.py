"""`fleet-agent discover` over loopback: simulated SNMP panels and PJLink projectors are found
and mapped to the right profiles; the probe list never strays beyond the targets."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from typer.testing import CliRunner

from agent.cli import app
from agent.discover import (
    DiscoveryError,
    Probe,
    discover,
    parse_ports,
    parse_targets,
    plan_probes,
    site_secrets,
)
from agent.discovery_report import draft_devices_yaml
from agent.simulator import PjlinkQuirks, SimulatedSite, start_site
from fleet.api.app import create_app
from fleet.embedded_broker import free_port
from fleet.ingest.pipeline import Ingest
from fleet.ingest.subscriber import Subscriber
from fleet.protocol.broker_url import parse_mqtt_url
from fleet.protocol.profiles import Profile, load_profiles
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR, DeviceConfig, LoadedSite, check_site
from fleet.settings import Settings
from tests.fixtures_auth import ops_headers, user_token
from tests.fixtures_broker import TestBroker
from tests.procs import wait_for

LAB_PROJECTOR = {
    "id": "lab-projector",
    "vendor": "Lab",
    "model": "LP-100 (test)",
    "kind": "projector",
    "protocol": "pjlink",
    "match": {"pjlink_inf1": "^lab$", "pjlink_inf2": r"^LP-\d+"},
}


def site_config() -> dict[str, Any]:
    return {
        "site": {"code": "lab", "name": "Test lab", "country": "Nowhere", "timezone": "UTC"},
        "rooms": [
            {
                "id": "lab-room-1",
                "name": "Room 1",
                "devices": [
                    {"id": "lab-panel", "profile": "seewo-panel", "address": "192.0.2.1"},
                    {"id": "lab-pc", "profile": "mib2-device", "address": "192.0.2.2"},
                    {
                        "id": "lab-generic-projector",
                        "profile": "pjlink-projector",
                        "address": "192.0.2.3",
                        "password": "secret",
                    },
                    {"id": "lab-lp100", "profile": "lab-projector", "address": "192.0.2.4"},
                ],
            }
        ],
    }


@pytest.fixture(scope="module")
def profiles() -> dict[str, Profile]:
    found = load_profiles(DEFAULT_PROFILES_DIR)
    found["lab-projector"] = Profile.model_validate(LAB_PROJECTOR)
    return found


@pytest.fixture(scope="module")
def lab(profiles: dict[str, Profile]) -> LoadedSite:
    return check_site(Path("lab.yaml"), site_config(), profiles)


class SimulatorThread:
    """Simulated devices on their own loop, so that sync code (the CLI) can probe them."""

    def __init__(self, site: LoadedSite) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        quirks = PjlinkQuirks(slow_reply_chance=0)
        self.simulated: SimulatedSite = asyncio.run_coroutine_threadsafe(
            start_site(site, pjlink_quirks=quirks), self.loop
        ).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.simulated.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def simulated(lab: LoadedSite) -> Iterator[SimulatedSite]:
    sim = SimulatorThread(lab)
    yield sim.simulated
    sim.stop()


def ports_option(simulated: SimulatedSite) -> str:
    snmp = ",".join(str(r.address[1]) for r in simulated.responders.values())
    pjlink = ",".join(str(p.address[1]) for p in simulated.projectors.values())
    return f"snmp={snmp} pjlink={pjlink}"


def test_discovery_finds_simulated_devices_and_their_profiles(
    lab: LoadedSite, profiles: dict[str, Profile], simulated: SimulatedSite
) -> None:
    ports = parse_ports([ports_option(simulated)])
    # Cross-probe too: PJLink on the SNMP ports and SNMP on the PJLink ports find nothing.
    every = sorted({p for nums in ports.values() for p in nums})
    probes = plan_probes(["127.0.0.1"], {"snmp": every, "pjlink": every})
    communities, passwords = site_secrets(lab)
    done: list[Probe] = []
    findings = asyncio.run(
        discover(
            probes,
            profiles,
            communities=communities,
            passwords=passwords,
            timeout=3.0,
            on_done=done.append,
        )
    )
    assert len(done) == len(probes) == 8
    by_port = {f.probe.port: f for f in findings}
    assert len(findings) == 4, findings
    expected = {port: device for device, (_, port) in simulated.address_map.items()}
    for port, finding in by_port.items():
        device = lab.config.devices()[[d.id for _, d in lab.config.devices()].index(expected[port])]
        assert finding.profile == device[1].profile, finding
        assert finding.facts["name"] == device[1].id
        if finding.probe.protocol == "snmp":  # an OBJECT IDENTIFIER, read back as dotted text
            expected_oid = profiles[device[1].profile].simulation.sys_object_id
            assert finding.facts["sys_object_id"] == expected_oid
    generic = by_port[simulated.address_map["lab-generic-projector"][1]]
    assert generic.facts["pjlink_auth"] == "yes"  # found with the site's password
    assert generic.facts["pjlink_class"] == "2"
    # The panel is told by its sysObjectID under its vendor's arc, not by its text alone.
    panel = by_port[simulated.address_map["lab-panel"][1]]
    assert panel.facts["sys_object_id"] == "1.3.6.1.4.1.32473.10.2.1"

    draft = yaml.safe_load(draft_devices_yaml(findings, lab, profiles, ["127.0.0.1"]))
    entries = draft["devices"]
    assert len(entries) == 4
    for entry in entries:
        DeviceConfig.model_validate(entry)  # pastes straight into a site config
        assert entry["address"] == "127.0.0.1"
    assert sorted(e["profile"] for e in entries) == sorted(
        d.profile for _, d in lab.config.devices()
    )


def test_projector_password_unknown_is_still_listed(
    lab: LoadedSite, profiles: dict[str, Profile], simulated: SimulatedSite
) -> None:
    port = simulated.address_map["lab-generic-projector"][1]
    findings = asyncio.run(
        discover(
            [Probe("127.0.0.1", "pjlink", port)],
            profiles,
            communities=["public"],
            passwords=[None, "wrong"],
            timeout=3.0,
        )
    )
    assert len(findings) == 1
    assert findings[0].profile == "pjlink-projector"  # the PJLink fallback
    assert "password" in findings[0].note
    text = draft_devices_yaml(findings, lab, profiles, ["127.0.0.1"])
    assert "secret" not in text  # the draft never prints a password


def test_cli_writes_a_draft_to_review(tmp_path: Path, lab: LoadedSite) -> None:
    # Only profiles from firmware_profiles/: the CLI loads them itself.
    config = site_config()
    config["site"]["code"] = "labcli"
    config["rooms"][0]["devices"] = config["rooms"][0]["devices"][:3]
    path = tmp_path / "labcli.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    loaded = check_site(path, config, load_profiles(DEFAULT_PROFILES_DIR))
    sim = SimulatorThread(loaded)
    try:
        out = tmp_path / "draft.yaml"
        args = ["discover", "--config", str(path), "--targets", "127.0.0.1"]
        args += ["--ports", ports_option(sim.simulated), "--timeout", "3", "--out", str(out)]
        result = CliRunner().invoke(app, args)
    finally:
        sim.stop()
    assert result.exit_code == 0, result.output
    draft = yaml.safe_load(out.read_text())
    assert sorted(e["profile"] for e in draft["devices"]) == [
        "mib2-device",
        "pjlink-projector",
        "seewo-panel",
    ]


def test_targets_expand_only_to_what_was_asked() -> None:
    assert parse_targets(["192.0.2.0/30"]) == ["192.0.2.1", "192.0.2.2"]
    assert parse_targets(["127.0.0.1, 127.0.0.2", "127.0.0.1"]) == ["127.0.0.1", "127.0.0.2"]
    probes = plan_probes(["192.0.2.1"], parse_ports([]))
    assert probes == [
        Probe("192.0.2.1", "snmp", 161),
        Probe("192.0.2.1", "pjlink", 4352),
        Probe("192.0.2.1", "maxhub-lan", 4664),
    ]
    assert len(parse_targets(["10.1.0.0/22"])) == 1022


def test_large_ranges_and_bad_input_are_refused_with_a_fix() -> None:
    with pytest.raises(DiscoveryError, match="--force"):
        parse_targets(["10.0.0.0/16"])
    assert len(parse_targets(["10.0.0.0/21"], force=True)) == 2046
    with pytest.raises(DiscoveryError, match="not an IP address or CIDR"):
        parse_targets(["projector.example"])
    with pytest.raises(DiscoveryError, match="protocol=ports"):
        parse_ports(["http=80"])
    with pytest.raises(DiscoveryError, match="ranges at most 1000"):
        parse_ports(["snmp=1-5000"])
    assert parse_ports(["snmp=161,40001-40003;pjlink=4352"]) == {
        "snmp": [161, 40001, 40002, 40003],
        "pjlink": [4352],
    }


def test_cli_refuses_a_campus_sweep(tmp_path: Path) -> None:
    path = tmp_path / "labcli.yaml"
    config = site_config()
    config["site"]["code"] = "labcli"
    config["rooms"] = []
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = CliRunner().invoke(app, ["discover", "--config", str(path), "--targets", "10.0.0.0/8"])
    assert result.exit_code == 2
    assert "more than 1024" in result.output


def test_published_findings_reach_the_controller_and_name_what_is_unregistered(
    tmp_path: Path, registered: Engine, broker: TestBroker
) -> None:
    """A technician at UPM runs discover --publish: the controller keeps the findings as a
    discovery event, and ops read on /api/v1/sites/upm/events which devices on the network
    the site config does not have yet."""
    config = site_config()
    config["site"] = {"code": "upm", "name": "UPM", "country": "Malaysia", "timezone": "UTC"}
    devices = config["rooms"][0]["devices"][:3]  # a panel, a PC and a PJLink projector
    config["rooms"][0]["devices"] = devices
    sim = SimulatorThread(check_site(Path("upm.yaml"), config, load_profiles(DEFAULT_PROFILES_DIR)))
    subscriber = Subscriber(
        parse_mqtt_url(broker.url),
        Ingest(registered, topic_root=broker.topic_root),
        client_id=f"ctl-{uuid.uuid4().hex[:8]}",
        topic_root=broker.topic_root,
    )
    subscriber.start()
    try:
        # The agent's config knows the panel and the projector where they answer; the PC not.
        known = {d["id"]: sim.simulated.address_map[d["id"]] for d in devices}
        config["rooms"][0]["devices"] = [
            {**d, "address": known[d["id"]][0], "port": known[d["id"]][1]}
            for d in devices
            if d["id"] != "lab-pc"
        ]
        path = tmp_path / "upm.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        wait_for(lambda: subscriber.status().get("connected"), 15, "the controller's connection")
        args = ["discover", "--config", str(path), "--targets", "127.0.0.1", "--timeout", "3"]
        args += ["--ports", ports_option(sim.simulated), "--out", str(tmp_path / "draft.yaml")]
        args += ["--publish", "--mqtt-url", broker.url, "--topic-root", broker.topic_root]
        result = CliRunner().invoke(app, args)
    finally:
        sim.stop()
    try:
        assert result.exit_code == 0, result.output
        assert "findings sent to the controller" in result.output

        client = TestClient(create_app(Settings(), engine=registered))
        headers = ops_headers(registered)

        def published() -> list[dict[str, Any]]:
            got = client.get("/api/v1/sites/upm/events?kind=discovery", headers=headers)
            assert got.status_code == 200, got.text
            events: list[dict[str, Any]] = got.json()
            return events

        [event] = wait_for(published, 15, "the discovery event")
        assert event["agent_id"] == "upm-agent"
        assert (
            event["message"].startswith("3 of ") and "1 not in the site config" in event["message"]
        )
        found = {(d["port"], d["known_as"], d["profile"]) for d in event["data"]["devices"]}
        assert found == {
            (known["lab-panel"][1], "lab-panel", "seewo-panel"),
            (known["lab-generic-projector"][1], "lab-generic-projector", "pjlink-projector"),
            (known["lab-pc"][1], None, "mib2-device"),
        }
        # A technician of another site may not read them.
        token = user_token(registered, "tech-tuit", "technician", sites=["tuit"])
        tuit = {"Authorization": f"Bearer {token}"}
        assert client.get("/api/v1/sites/upm/events", headers=tuit).status_code == 403
    finally:
        subscriber.stop()


def test_publish_says_when_the_findings_were_not_sent(tmp_path: Path, lab: LoadedSite) -> None:
    config = site_config()
    config["rooms"][0]["devices"] = config["rooms"][0]["devices"][:3]  # shipped profiles only
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    closed = free_port()
    args = ["discover", "--config", str(path), "--targets", "127.0.0.1", "--timeout", "0.2"]
    args += ["--ports", f"snmp={closed}", "--publish", "--mqtt-url", f"mqtt://127.0.0.1:{closed}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    assert "the findings were not sent" in result.output and "nothing listens on" in result.output
    assert "devices:" in result.output  # the draft itself was still printed
