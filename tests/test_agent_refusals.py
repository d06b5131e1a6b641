"""A batch leaves the outbox only on a PUBACK whose reason code is a success (MQTT 5.0 spec
section 3.4.2.1): a real Mosquitto whose ACL refuses the site's health publish answers 135
(Not authorized). The agent keeps the batch, logs the reason and the fix, counts it in
`fleet-agent status` and its metrics, and tries again with a backoff; once the ACL is fixed
and the broker reloaded, the very same batch is delivered, and only then deleted."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import signal
import subprocess
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from bench.brokers import MosquittoMissing, OwnMosquitto
from fleet.auth.passwords import mosquitto_hash
from tests.conftest import need
from tests.fixtures_link import (
    SITE,
    HealthSink,
    agent_options,
    fill_outbox,
    health_topic,
    mosquitto_with,
    panel_backlog,
    running_agent,
    site_file,
    until,
    url_of,
    with_password,
)
from tests.procs import BIN

SITE_USER, SITE_PASSWORD = f"site-{SITE}", "site-secret-1"
CONTROLLER, CONTROLLER_PASSWORD = "fleet-controller", "controller-secret-1"
READINGS = 30
FIRST_RETRY_S, MOST_RETRY_S = 0.2, 0.8


def acl(root: str, *, health: bool) -> str:
    """The site may publish its agent state, events and command acks, and its health only
    when `health`; the controller reads and writes everything under the root."""
    writes = ["agent/state", "events", "cmd/ack", *(["health"] if health else [])]
    lines = [f"user {CONTROLLER}", f"topic readwrite {root}/#", "", f"user {SITE_USER}"]
    lines += [f"topic write {root}/{SITE}/{w}" for w in writes]
    lines += [f"topic read {root}/{SITE}/cmd"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def refusing(tmp_path: Path) -> tuple[OwnMosquitto, Path, str]:
    root = "acl/fleet/v1"
    passwd, acl_file = tmp_path / "passwd", tmp_path / "acl"
    passwd.write_text(
        f"{SITE_USER}:{mosquitto_hash(SITE_PASSWORD)}\n"
        f"{CONTROLLER}:{mosquitto_hash(CONTROLLER_PASSWORD)}\n"
    )
    acl_file.write_text(acl(root, health=False))
    broker = mosquitto_with(
        tmp_path,
        listener=("allow_anonymous false", f"password_file {passwd}", f"acl_file {acl_file}"),
    )
    try:
        broker.start()
    except MosquittoMissing as exc:
        need("mosquitto", f"{exc}; .ci/run expects it")
    yield broker, acl_file, root
    broker.stop()


def refused_total() -> float:
    value = REGISTRY.get_sample_value(
        "fleet_agent_publish_refused_total", {"reason_code": "135", "reason": "Not authorized"}
    )
    return value or 0.0


@pytest.mark.timeout(90)
def test_batch_refused_by_the_acl_stays_until_the_acl_lets_it_through(
    refusing: tuple[OwnMosquitto, Path, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker, acl_file, root = refusing
    site = site_file(tmp_path)
    data_dir = tmp_path / "agent"
    fill_outbox(data_dir, panel_backlog(READINGS))
    controller = HealthSink(
        with_password(url_of(broker, "5", CONTROLLER), CONTROLLER_PASSWORD), health_topic(root)
    )
    before = refused_total()
    caplog.set_level(logging.INFO, logger="agent")

    async def scenario() -> tuple[list[float], str, dict[str, object]]:
        address = with_password(url_of(broker, "5", SITE_USER), SITE_PASSWORD)
        options = agent_options(data_dir, root, refusal_retry_s=(FIRST_RETRY_S, MOST_RETRY_S))
        async with running_agent(site, address, options) as agent:
            first = await until(lambda: agent.outbox.pending_batches(1, 50), 5, "the batch")
            msg_id = first[0].msg_id
            await until(lambda: agent.outbox.status().batches_refused >= 5, 20, "5 refusals")
            held = agent.outbox.status().as_dict()
            # `fleet-agent status`, as a technician runs it beside the running agent.
            status = await asyncio.to_thread(
                subprocess.run,
                [
                    str(BIN / "fleet-agent"),
                    "status",
                    "--config",
                    str(site.path),
                    "--data-dir",
                    str(data_dir),
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            held["cli"] = json.loads(status.stdout)
            refusal_times = [
                r.created for r in caplog.records if "Not authorized" in r.getMessage()
            ]
            assert controller.batches == []

            acl_file.write_text(acl(root, health=True))
            assert broker.popen is not None
            broker.popen.send_signal(signal.SIGHUP)  # Mosquitto reloads its ACL file
            delivered = await asyncio.to_thread(
                controller.wait_for, lambda sink: len(sink.readings()) >= READINGS, 15
            )
            assert delivered, "the batch was not delivered once the ACL allowed it"
            await until(lambda: agent.outbox.depth() == 0, 10, "the outbox to empty")
            held["after"] = agent.outbox.status().as_dict()
            return refusal_times, msg_id, held

    try:
        refusal_times, msg_id, held = asyncio.run(scenario())
    finally:
        controller.close()

    # Refused: kept, not counted as acknowledged.
    assert held["outbox_depth"] == READINGS
    assert held["readings_acked"] == 0
    cli = held["cli"]
    assert isinstance(cli, dict)
    assert cli["outbox_depth"] == READINGS and cli["readings_acked"] == 0
    assert cli["batches_refused"] >= 5
    (refusal,) = cli["refusals"]
    assert refusal["reason_code"] == 135 and refusal["reason"] == "Not authorized"
    assert refusal["last_topic"] == health_topic(root)
    assert (
        f"check the ACL for user '{SITE_USER}' on topic '{health_topic(root)}'" in (refusal["fix"])
    )
    assert refused_total() - before >= 5

    # Logged with the reason and the fix, and tried again with a backoff, not a hot loop.
    logged = [r.getMessage() for r in caplog.records if "Not authorized" in r.getMessage()]
    assert all(
        "reason code 135" in m and "check the ACL" in m and "stays in the outbox" in m
        for m in logged
    ), logged[0]
    gaps = [b - a for a, b in itertools.pairwise(refusal_times)]
    expected = [min(FIRST_RETRY_S * 2**i, MOST_RETRY_S) for i in range(len(gaps))]
    assert len(gaps) >= 4
    assert all(gap >= 0.9 * want for gap, want in zip(gaps, expected, strict=True)), gaps

    # Delivered once the ACL allowed it: the very same batch, then deleted.
    after = held["after"]
    assert isinstance(after, dict)
    assert after["readings_acked"] == READINGS and after["outbox_depth"] == 0
    # (a batch the broker refused and later took is one message, under its first msg_id)
    assert [b.msg_id for _, b in controller.batches] == [msg_id]
    assert len(controller.readings()) == READINGS
