"""API latency with a large fleet registered, against the bare SQL of the same data.

    python -m bench.api [--quick | --full] [--sites 100] [--devices-per-site 100] [--requests 200]

A SQLite database is seeded through the real registry sync (10,000 devices across 100 sites by
default; `--full` then does it again with 100,000 across 1,000 sites, the scale the README's
scale-out section promises) and given a latest state per device. The app runs in-process
under httpx's ASGI transport (the whole ASGI stack, auth and serialisation included, no
socket), called as ops with a bearer token. Each endpoint's p50 and p95 is compared with the
bare sqlite3 query that fetches the same rows, timed in the same run:

- fleet overview: `GET /api/v1/sites`, against the per-site, per-state counts plus the site,
  agent and open-alert rows; the dashboard `/`, against those and also the unacknowledged
  alerts by site, severity and kind and the programme's milestones, which it shows too;
- `GET /api/v1/devices?site=..&state=..`, against the same count and page of device rows (the
  page's 100 rows and the one more the route reads to know whether a next page exists);
- `GET /api/v1/devices` unfiltered, its first page and a page deep in the fleet by cursor
  (`after=`), against the same count and keyset page.

Each request is timed in the server, as a deployment's request-duration metric reads it: from
the ASGI call into the app to its return, once the last of the body is sent. The in-process
client's own work per request (httpx building the request, its cookie jar, reading the
answer: about a millisecond here) is no part of what the API serves, and is printed beside
each figure, not counted in it. Printed too, for scale: an empty FastAPI route, sync like the
fleet's, timed the same way in the same run, the least any route costs.

Target: p95 no more than 2 x the bare SQL's p95.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, text

from bench.targets import target
from fleet.db import make_engine, migrate
from fleet.devices.queries import ORDER
from fleet.devices.registry import sync_registry
from fleet.devices.schemas import DeviceOut
from fleet.protocol.profiles import load_profiles
from fleet.protocol.site_config import DEFAULT_PROFILES_DIR, LoadedSite, check_site

STATES = ["online"] * 4 + ["standby", "unreachable", "site_offline", "faulty", "unknown"]
LIMIT = 2.0
NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)


def site_code(s: int) -> str:
    return f"s{s:03d}"


def synthetic_sites(sites: int, per_site: int) -> list[LoadedSite]:
    profiles = load_profiles(DEFAULT_PROFILES_DIR)
    loaded = []
    for s in range(sites):
        code = site_code(s)
        data = {
            "site": {"code": code, "name": f"Site {s}", "country": "Nowhere", "timezone": "UTC"},
            "illustrative": "synthetic, for benchmarks",
            "rooms": [
                {
                    "id": f"{code}-r{r}",
                    "name": f"Room {r}",
                    "devices": [
                        {
                            "id": f"{code}-d{r * 10 + d:04d}",
                            "profile": "seewo-panel",
                            "address": "192.0.2.1",
                            "port": 10000 + r * 10 + d,
                        }
                        for d in range(min(10, per_site - r * 10))
                    ],
                }
                for r in range((per_site + 9) // 10)
            ],
        }
        loaded.append(check_site(Path(f"{code}.yaml"), data, profiles))
    return loaded


def seed(path: Path | str, sites: int, per_site: int) -> Engine:
    """The registry of a synthetic fleet in a SQLite file (a path) or a database URL."""
    engine = make_engine(path if isinstance(path, str) else f"sqlite:///{path}")
    migrate(engine)
    sqlite = engine.dialect.name == "sqlite"
    sync_registry(engine, synthetic_sites(sites, per_site))
    # A latest state per device, spread over the states, as ingest would have left it.
    with engine.begin() as conn:
        ids = [row[0] for row in conn.execute(text("SELECT id FROM device ORDER BY id"))]
        conn.execute(
            text(
                "UPDATE device SET state = :state, state_since = :seen, last_seen_at = :seen, "
                "last_reading = :reading, firmware = '3.2.1', power = 'on', reachable = :reachable "
                "WHERE id = :id"
            ),
            [
                {
                    "id": device,
                    "state": STATES[i % len(STATES)],
                    "reachable": True,
                    # UtcDateTime's SQLite form (naive UTC text); PostgreSQL takes the instant.
                    "seen": _naive_text(seen) if sqlite else seen,
                    "reading": json.dumps(
                        {
                            "device": device,
                            "ts": NOW.isoformat(),
                            "reachable": True,
                            "power": "on",
                            "input": "hdmi1",
                            "temperature_c": 41.5,
                            "uptime_s": 1000.0 + i,
                            "firmware": "3.2.1",
                            "metrics": {"sys_name": device, "lamp_hours": i},
                        }
                    ),
                }
                for i, device in enumerate(ids)
                for seen in [NOW - timedelta(seconds=i % 600)]
            ],
        )
    return engine


def _naive_text(at: datetime) -> str:
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


# A request: awaited, it returns the seconds the server took to answer it.
Request = Callable[[], Awaitable[float]]
Timing = tuple[float, float]


class ServerClock:
    """An ASGI app timed in the server: `last` is the seconds the latest request took from
    the call into `app` to its return (the answer's last byte sent)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.last = 0.0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.last = time.perf_counter() - start


async def timed(call: Request, requests: int) -> Timing:
    for _ in range(max(2, requests // 20)):  # warm caches, the pool and the JIT-less paths
        await call()
    return percentiles([await call() for _ in range(requests)])


async def timed_against(
    ours: Request, bare: Callable[[], Any], requests: int
) -> tuple[Timing, Timing]:
    """Both timed in turns, so a slow spell of the machine lands on each alike: the limit is
    measured in the same moments as the figure, not a few seconds before it."""
    for _ in range(max(2, requests // 20)):
        await ours()
        bare()
    samples: tuple[list[float], list[float]] = ([], [])
    for i in range(requests):
        for which in (0, 1) if i % 2 else (1, 0):
            if which == 0:
                samples[0].append(await ours())
            else:
                start = time.perf_counter()
                bare()
                samples[1].append(time.perf_counter() - start)
    return percentiles(samples[0]), percentiles(samples[1])


def empty_route_app() -> Any:
    """A FastAPI app of one empty sync route (run in the thread pool, as the fleet's are):
    what any route costs before it does anything."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/empty")
    def empty() -> dict[str, int]:
        return {"ok": 1}

    return app


# The site columns a summary shows (fleet.sites.queries.SUMMARY_COLUMNS): not the timetable.
SITE_SUMMARY = "SELECT code, name, institution, country, timezone, vendor FROM site ORDER BY code"


def bare_overview(db: sqlite3.Connection) -> Callable[[], Any]:
    """What `GET /api/v1/sites` reads: the sites' summary columns, the per-site, per-state
    counts with the newest report, the agents and the unresolved alerts per site."""

    def query() -> Any:
        sites = db.execute(SITE_SUMMARY).fetchall()
        counts = db.execute(
            "SELECT site_code, state, count(*), max(last_seen_at) FROM device "
            "WHERE retired_at IS NULL GROUP BY site_code, state"
        ).fetchall()
        agents = db.execute("SELECT * FROM agent_status").fetchall()
        alerts = db.execute(
            "SELECT site_code, count(*) FROM alert WHERE state != 'resolved' GROUP BY site_code"
        ).fetchall()
        return sites, counts, agents, alerts

    return query


def bare_dashboard(db: sqlite3.Connection) -> Callable[[], Any]:
    """What the dashboard's overview reads: `GET /api/v1/sites`' rows, and also the alerts
    nobody has acknowledged by site, severity and kind (its status column) and the
    installation programme's milestones (its programme column)."""
    overview = bare_overview(db)

    def query() -> Any:
        unacknowledged = db.execute(
            "SELECT site_code, severity, kind, count(*) FROM alert WHERE state = 'open' "
            "GROUP BY site_code, severity, kind"
        ).fetchall()
        milestones = db.execute(
            "SELECT * FROM programme_milestone m JOIN programme_phase p ON m.phase_id = p.id "
            "ORDER BY p.site_code, p.number"
        ).fetchall()
        return overview(), unacknowledged, milestones

    return query


# The columns the API returns of each device, and the page the route reads: a page of 100
# and one row more, which tells it whether there is a next page.
DEVICE_COLUMNS = ", ".join(DeviceOut.model_fields)
PAGE_ROWS = 101


def bare_devices(db: sqlite3.Connection, site: str, state: str) -> Callable[[], Any]:
    where = "site_code = ? AND state = ? AND retired_at IS NULL"

    def query() -> Any:
        total = db.execute(f"SELECT count(*) FROM device WHERE {where}", (site, state)).fetchone()
        rows = db.execute(
            f"SELECT {DEVICE_COLUMNS} FROM device WHERE {where} ORDER BY id LIMIT {PAGE_ROWS}",
            (site, state),
        ).fetchall()
        return total, rows

    return query


def bare_device_page(db: sqlite3.Connection, after: str | None) -> Callable[[], Any]:
    where = "retired_at IS NULL" + (" AND id > ?" if after is not None else "")
    args = (after,) if after is not None else ()

    def query() -> Any:
        total = db.execute("SELECT count(*) FROM device WHERE retired_at IS NULL").fetchone()
        rows = db.execute(
            f"SELECT {DEVICE_COLUMNS} FROM device WHERE {where} ORDER BY id LIMIT {PAGE_ROWS}",
            args,
        ).fetchall()
        return total, rows

    return query


def report(
    name: str, ours: Timing, bare: Timing, devices: int, client: Timing | None = None
) -> bool:
    ratio = ours[1] / bare[1] if bare[1] else 0.0
    seen = (
        f"; as the in-process client saw it p50 {client[0] * 1000:.2f} ms, "
        f"p95 {client[1] * 1000:.2f} ms"
        if client
        else ""
    )
    print(
        f"  {name}: p50 {ours[0] * 1000:.2f} ms, p95 {ours[1] * 1000:.2f} ms in the server; "
        f"bare SQL p50 {bare[0] * 1000:.2f} ms, p95 {bare[1] * 1000:.2f} ms; "
        f"ratio p95 {ratio:.1f} (target <= {LIMIT:.0f}){seen}"
    )
    found = target(
        f"API {name}, {devices:,} devices: p95 vs bare SQL",
        ours[1] * 1000,
        bare[1] * 1000,
        "ms",
        goal=LIMIT,
        at_least=False,
    )
    return found.met


def run(tmp: Path, sites: int, per_site: int, requests: int) -> None:
    from fastapi.testclient import TestClient

    from fleet.api.app import create_app
    from fleet.memory import frozen_startup
    from fleet.settings import Settings
    from tests.fixtures_auth import user_token

    path = tmp / "api.db"
    start = time.perf_counter()
    engine = seed(path, sites, per_site)
    print(
        f"seeded {sites * per_site:,} devices across {sites} sites "
        f"in {time.perf_counter() - start:.1f} s; app in-process over ASGI"
    )
    token = user_token(engine, "bench-ops", "ops", ttl=timedelta(hours=1))
    # Built as `fleet serve` builds it (fleet.cli): what the process keeps for its life moved
    # out of the collector's sight, so that no full collection walks it while a request waits.
    with frozen_startup():
        app = create_app(Settings(database_url=f"sqlite:///{path}", data_dir=tmp), engine=engine)
    headers = {"Authorization": f"Bearer {token}"}
    db = sqlite3.connect(path)
    site, state = site_code(sites // 2), "online"
    # TestClient runs the app's lifespan; the requests go through httpx's ASGI transport on
    # this thread's own event loop: TestClient's portal hands every request to another
    # thread and back several times, which on a busy 2-core machine cost more than the
    # request itself and is no part of what a deployment serves. All of them are made from
    # one task, as a server's loop does: anyio's worker threads (where sync routes run) live
    # as long as the task that first used them, so a task per request started a new thread
    # for every request, which no deployment does either.
    clock = ServerClock(app)
    asgi = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=clock),
        base_url="http://bench",
        headers=headers,
        cookies={"fleet_token": token},
    )
    empty_clock = ServerClock(empty_route_app())
    empty_client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=empty_clock), base_url="http://bench"
    )
    client_seen: list[float] = []

    def get(url: str, **params: str) -> Request:
        async def call() -> float:
            start = time.perf_counter()
            response = await asgi.get(url, params=params)
            client_seen.append(time.perf_counter() - start)
            if response.status_code != 200:
                raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:200]}")
            return clock.last

        return call

    async def empty() -> float:
        response = await empty_client.get("/empty")
        response.raise_for_status()
        return empty_clock.last

    async def against(name: str, url: str, bare: Callable[[], Any], **params: str) -> None:
        client_seen.clear()
        ours, limit = await timed_against(get(url, **params), bare, requests)
        report(name, ours, limit, sites * per_site, percentiles(client_seen[-requests:]))

    async def measure() -> None:
        devices = sites * per_site
        await against("GET /api/v1/sites", "/api/v1/sites", bare_overview(db))
        await against("GET / (dashboard)", "/", bare_dashboard(db))
        nothing = await timed(empty, requests)
        print(
            f"  for scale, an empty sync FastAPI route: p50 {nothing[0] * 1000:.2f} ms, "
            f"p95 {nothing[1] * 1000:.2f} ms in the server"
        )
        floor = await timed(get("/api/v1/devices", site="none"), requests)
        print(
            f"  floor (auth, routing, session; no rows): GET /api/v1/devices?site=none: "
            f"p50 {floor[0] * 1000:.2f} ms, p95 {floor[1] * 1000:.2f} ms in the server"
        )
        await against(
            f"GET /api/v1/devices?site={site}&state={state}",
            "/api/v1/devices",
            bare_devices(db, site, state),
            site=site,
            state=state,
        )
        await against(
            "GET /api/v1/devices (first page)", "/api/v1/devices", bare_device_page(db, None)
        )
        # A page half-way through the fleet, reached as a client does: by the cursor a page
        # before it handed out.
        middle = db.execute(
            "SELECT id FROM device ORDER BY id LIMIT 1 OFFSET ?", (devices // 2,)
        ).fetchone()[0]
        cursor = ORDER.cursor((middle,))
        await against(
            "GET /api/v1/devices?after=<cursor> (a page mid-fleet)",
            "/api/v1/devices",
            bare_device_page(db, middle),
            after=cursor,
        )
        await asgi.aclose()
        await empty_client.aclose()

    with TestClient(app, headers=headers, cookies={"fleet_token": token}):
        asyncio.run(measure())
    db.close()
    engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--devices-per-site", type=int, default=100)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="a tiny run, to keep it working")
    parser.add_argument("--full", action="store_true", help="then 100,000 devices (1,000 sites)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sites, args.devices_per_site, args.requests = 3, 20, 10
    scales = [(args.sites, args.devices_per_site)]
    if args.full and not args.quick:
        scales.append((args.sites * 10, args.devices_per_site))
    for sites, per_site in scales:
        with tempfile.TemporaryDirectory() as tmp:
            run(Path(tmp), sites, per_site, args.requests)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
