"""Soak: synthetic agents for a large fleet publish for a bounded time against a real controller.

    python -m bench.soak [--quick] [--minutes 3] [--sites 100] [--devices-per-site 100]
                         [--cycle 10] [--postgres [URL]]

A `fleet serve` process (role all, SQLite seeded with the registry, see bench.api; or, with
`--postgres`, a fresh schema of that PostgreSQL database, dropped afterwards) reads from a
Mosquitto of our own (deploy/mosquitto limits). One synthetic agent per site publishes, every
`--cycle` seconds, a reading of each of its devices in batches of 50 (QoS 1, a fresh msg_id per
batch), for `--minutes`; then the controller is given up to a minute to drain. Reported:

- lost: readings published and acknowledged by the broker but not in `sample` (target 0);
- duplicated: readings stored more than once (target 0), and batches the controller recognised
  as redelivered (its `duplicate` outcome: harmless, counted for information);
- ingest lag: received_at - ts of the stored readings, p50/p95/max, against the cycle (the limit:
  a reading should be stored before its device's next one is taken), and the backlog (published
  minus stored) sampled while publishing;
- controller RSS sampled every few seconds: the last third's mean against the first third's
  (after a warm-up), target within 10 % (flat).
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from ulid import ULID

from bench.api import seed, site_code
from bench.memory import controller, get, rss_mb
from fleet.protocol.broker_url import parse_mqtt_url
from fleet.protocol.messages import HealthBatch, Power, Reading, Topics

BATCH = 50
RSS_GROWTH_LIMIT = 0.10


class Agents:
    """Every site's synthetic agent, on one paho client: publishes until `stop` is set."""

    def __init__(self, url: str, root: str, sites: int, per_site: int, cycle: float) -> None:
        address = parse_mqtt_url(url)
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            protocol=mqtt.MQTTv5 if address.protocol == "5" else mqtt.MQTTv311,
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect(address.host, address.port)
        self.topics = Topics(root)
        self.sites, self.per_site, self.cycle = sites, per_site, cycle
        self.published = 0  # readings in batches the broker acknowledged
        self.sent = 0
        self.cycles = 0
        self.stop = threading.Event()
        self.infos: list[tuple[mqtt.MQTTMessageInfo, int]] = []

    def run(self) -> None:
        self.client.loop_start()
        seq = 0
        while not self.stop.is_set():
            started = time.monotonic()
            for s in range(self.sites):
                code = site_code(s)
                for first in range(0, self.per_site, BATCH):
                    seq += 1
                    now = datetime.now(UTC)
                    batch = HealthBatch(
                        msg_id=str(ULID()),
                        site=code,
                        agent_id=f"soak-{code}",
                        seq=seq,
                        sent_at=now,
                        readings=[
                            _reading(f"{code}-d{d:04d}", now, d)
                            for d in range(first, min(first + BATCH, self.per_site))
                        ],
                    )
                    info = self.client.publish(self.topics.health(code), batch.to_json(), qos=1)
                    self.infos.append((info, len(batch.readings)))
                    self.sent += len(batch.readings)
            self._settle(wait=False)
            self.cycles += 1
            self.stop.wait(max(0.0, self.cycle - (time.monotonic() - started)))
        self._settle(wait=True)
        self.client.loop_stop()
        self.client.disconnect()

    def _settle(self, wait: bool) -> None:
        pending = []
        for info, count in self.infos:
            if wait:
                info.wait_for_publish(60)
            if info.is_published():
                self.published += count
            else:
                pending.append((info, count))
        self.infos = pending


def _reading(device: str, now: datetime, d: int) -> Reading:
    return Reading(
        device=device,
        ts=now,
        reachable=True,
        power=Power.on,
        input="hdmi1",
        temperature_c=40.0 + d % 7,
        uptime_s=1000.0 + d,
        firmware="3.2.1",
        metrics={"sys_name": device},
    )


def _metric(text: str, name: str, outcome: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels.get("outcome") == outcome
    )


DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# Seconds from ts to received_at of every stored reading, in each database's words.
LAGS_SQL = {
    "sqlite": "SELECT (julianday(received_at) - julianday(ts)) * 86400.0 FROM sample",
    "postgresql": "SELECT extract(epoch FROM received_at - ts)::float8 FROM sample",
}


@contextmanager
def database(tmp: Path, postgres: str | None) -> Iterator[tuple[Path | str, Any, str]]:
    """(what `fleet serve` is given, a DB-API connection to count with, the dialect's name):
    a SQLite file, or a fresh schema of the PostgreSQL database at `postgres`, dropped after."""
    if postgres is None:
        path = tmp / "soak.db"
        yield path, lambda: sqlite3.connect(path, timeout=30), "sqlite"
        return
    import psycopg
    from sqlalchemy.engine import make_url

    schema = f"soak_{uuid.uuid4().hex[:12]}"
    conninfo = make_url(postgres).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(conninfo, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield (
                f"{postgres}?options=-csearch_path%3D{schema}",
                lambda: psycopg.connect(
                    conninfo, autocommit=True, options=f"-csearch_path={schema}"
                ),
                "postgresql",
            )
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def stored(db: Any) -> int:
    return int(db.execute("SELECT count(*) FROM sample").fetchone()[0])


def run(
    tmp: Path,
    url: str,
    sites: int,
    per_site: int,
    cycle: float,
    seconds: float,
    postgres: str | None = None,
) -> None:
    with database(tmp, postgres) as (target, connect, dialect):
        engine = seed(target, sites, per_site)
        engine.dispose()
        _soak(tmp, url, target, connect, dialect, sites, per_site, cycle, seconds)


def _soak(
    tmp: Path,
    url: str,
    target: Path | str,
    connect: Any,
    dialect: str,
    sites: int,
    per_site: int,
    cycle: float,
    seconds: float,
) -> None:
    root = "soak/fleet/v1"
    devices = sites * per_site
    print(
        f"soak: {devices:,} devices across {sites} sites, a reading each every {cycle:g} s "
        f"({devices / cycle:,.0f} readings/s) for {seconds:g} s; controller `fleet serve` "
        f"on {'SQLite' if dialect == 'sqlite' else 'PostgreSQL'}"
    )
    with controller(tmp, target, url, topic_root=root) as (pid, base):
        time.sleep(1.0)  # the subscription settles
        db = connect()
        agents = Agents(url, root, sites, per_site, cycle)
        publisher = threading.Thread(target=agents.run)
        rss: list[float] = []
        backlog: list[int] = []
        publisher.start()
        deadline = time.monotonic() + seconds
        every = max(0.5, min(5.0, seconds / 30))
        while time.monotonic() < deadline:
            time.sleep(min(every, max(0.0, deadline - time.monotonic())))
            rss.append(rss_mb(pid)[0])
            backlog.append(agents.sent - stored(db))
        agents.stop.set()
        publisher.join()
        drain_until = time.monotonic() + 60
        while stored(db) < agents.published and time.monotonic() < drain_until:
            time.sleep(0.2)
        rss.append(rss_mb(pid)[0])
        count = stored(db)
        distinct = int(
            db.execute(
                "SELECT count(*) FROM (SELECT DISTINCT device_id, ts FROM sample) AS stored"
            ).fetchone()[0]
        )
        lags = sorted(row[0] for row in db.execute(LAGS_SQL[dialect]))
        redelivered = _metric(
            get(f"{base}/metrics").decode(), "fleet_ingest_messages_total", "duplicate"
        )
        db.close()
    lost = agents.published - distinct
    print(
        f"  published {agents.published:,} readings in {agents.cycles} cycles; stored {count:,}: "
        f"lost {lost}, duplicated {count - distinct} (target 0 and 0): "
        f"{'met' if lost == 0 and count == distinct else 'MISSED'}; batches recognised as "
        f"redelivered and not stored again: {redelivered:.0f}"
    )
    p50 = statistics.median(lags) if lags else 0.0
    p95 = lags[int(0.95 * (len(lags) - 1))] if lags else 0.0
    worst = lags[-1] if lags else 0.0
    print(
        f"  ingest lag (received_at - ts): p50 {p50:.3f} s, p95 {p95:.3f} s, max {worst:.3f} s; "
        f"limit {cycle:g} s (one cycle); ratio {worst / cycle:.2f}: "
        f"{'bounded' if worst < cycle else 'NOT BOUNDED'}"
    )
    # received_at is when the subscriber got a message, not when it was committed: the backlog
    # (published - stored, every few seconds) shows time spent queued behind the database.
    rate = devices / cycle
    print(
        f"  backlog (published - stored): max {max(backlog, default=0):,} readings "
        f"(~{max(backlog, default=0) / rate:.1f} s of publishing), "
        f"last {backlog[-1] if backlog else 0:,}"
    )
    third = max(1, len(rss) // 3)
    first = statistics.mean(rss[1 : third + 1] if len(rss) > 3 else rss[:1])
    last = statistics.mean(rss[-third:])
    growth = last / first - 1 if first else 0.0
    print(
        f"  controller RSS: first third {first:.1f} MB, last third {last:.1f} MB, "
        f"min {min(rss):.1f}, max {max(rss):.1f} over {len(rss)} samples; growth {growth:+.1%}; "
        f"limit +{RSS_GROWTH_LIMIT:.0%}; ratio {(1 + growth) / (1 + RSS_GROWTH_LIMIT):.2f}: "
        f"{'flat' if growth <= RSS_GROWTH_LIMIT else 'GROWING'}"
    )
    print(f"  RSS samples (MB): {' '.join(f'{mb:.0f}' for mb in rss)}")


def main(argv: list[str] | None = None) -> int:
    from bench.ingest import broker

    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--devices-per-site", type=int, default=100)
    parser.add_argument("--cycle", type=float, default=10.0, help="seconds between readings")
    parser.add_argument(
        "--postgres",
        nargs="?",
        const=DEFAULT_POSTGRES,
        metavar="URL",
        help=f"run the controller on PostgreSQL, in a fresh schema (default {DEFAULT_POSTGRES})",
    )
    parser.add_argument("--quick", action="store_true", help="a tiny run, to keep it working")
    args = parser.parse_args(argv)
    seconds = args.minutes * 60
    if args.quick:
        args.sites, args.devices_per_site, args.cycle, seconds = 2, 60, 1.0, 4.0
    with tempfile.TemporaryDirectory() as tmp, broker() as url:
        run(Path(tmp), url, args.sites, args.devices_per_site, args.cycle, seconds, args.postgres)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
