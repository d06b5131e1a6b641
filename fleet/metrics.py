"""Prometheus metrics read from the database when scraped: devices by state, site freshness,
agents. The ingest counters live in `fleet.ingest.pipeline`, open alerts (`fleet_alerts_open`) in
`fleet.alerts.evaluation`, each with the code that changes them.

The collector is built per scrape for the app's own engine (not put in the global registry:
tests build many apps in one process). Each scrape costs two small queries over
indexed columns, whatever the fleet's size.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import col

from fleet.devices.state import DeviceState
from fleet.models import AgentStatus, Device
from fleet.protocol.messages import utcnow

log = logging.getLogger(__name__)


class FleetStateCollector(Collector):
    """The Prometheus collector of the fleet's state read from the database at each scrape: devices
    by site and state, each site's last-report age, agents online, and whether the database
    answered."""

    def __init__(self, engine: Engine) -> None:
        """`engine`: the app's database, queried on every scrape."""
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """The gauges at this scrape; when the database does not answer, fleet_db_scrape_ok is 0."""
        devices = GaugeMetricFamily(
            "fleet_devices",
            "Registered devices (not retired) by site and state",
            labels=["site", "state"],
        )
        age = GaugeMetricFamily(
            "fleet_site_last_report_age_seconds",
            "Seconds since the newest reading of any of the site's devices",
            labels=["site"],
        )
        agents = GaugeMetricFamily(
            "fleet_agent_online", "1 if the site's agent last said online, else 0", labels=["site"]
        )
        up = GaugeMetricFamily("fleet_db_scrape_ok", "1 if the database answered this scrape")
        now = utcnow()
        try:
            with self.engine.connect() as conn:
                by_state = conn.execute(
                    select(
                        Device.site_code, Device.state, func.count(), func.max(Device.last_seen_at)
                    )  # type: ignore[call-overload]
                    .where(col(Device.retired_at).is_(None))
                    .group_by(col(Device.site_code), col(Device.state))
                ).all()
                agent_rows = conn.execute(select(AgentStatus.site_code, AgentStatus.state)).all()  # type: ignore[call-overload]
        except SQLAlchemyError as exc:
            log.warning("metrics: cannot read the database: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        newest: dict[str, float] = {}
        seen_states: dict[str, set[str]] = {}
        for site, state, count, last_seen in by_state:
            devices.add_metric([site, state], count)
            seen_states.setdefault(site, set()).add(state)
            if last_seen is not None:
                newest[site] = max(newest.get(site, 0.0), last_seen.timestamp())
        # Zeros for the states a site has none of, so a graph drops to 0 instead of vanishing.
        for site, states in seen_states.items():
            for state in DeviceState:
                if state.value not in states:
                    devices.add_metric([site, state.value], 0)
        for site, last in newest.items():
            age.add_metric([site], max(now.timestamp() - last, 0.0))
        for site, state in agent_rows:
            agents.add_metric([site], 1 if state == "online" else 0)
        up.add_metric([], 1)
        yield from (devices, age, agents, up)


def render_metrics(engine: Engine) -> bytes:
    """The process's own metrics (ingest counters, Python, process) and the fleet's."""
    fleet = CollectorRegistry(auto_describe=False)
    fleet.register(FleetStateCollector(engine))
    return generate_latest(REGISTRY) + generate_latest(fleet)
