"""The controller assembled: database, registry, ingest, MQTT subscriber and the web app."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from sqlalchemy import Engine

from fleet.alerts.evaluation import after_ingest
from fleet.api.app import create_app
from fleet.db import make_engine, migrate
from fleet.devices.registry import SyncResult, sync_registry
from fleet.ingest.pipeline import Ingest
from fleet.ingest.subscriber import Subscriber
from fleet.leader import Leadership
from fleet.protocol.broker_url import parse_mqtt_url
from fleet.protocol.site_config import load_sites
from fleet.scheduler import build_scheduler
from fleet.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Controller:
    """The assembled controller: its settings, database engine, ingest, MQTT subscriber, web app,
    and what the registry sync at start did."""

    settings: Settings
    engine: Engine
    ingest: Ingest
    subscriber: Subscriber
    app: FastAPI
    registry: SyncResult


def build_controller(settings: Settings) -> Controller:
    """Migrate, sync the registry from site_configs/, and wire ingest into the app.

    Raises fleet.protocol.errors.ConfigErrors for a bad site config and BrokerUrlError for a
    bad URL, both before anything starts.
    """
    broker = parse_mqtt_url(settings.mqtt_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    sites = load_sites(settings.sites_dir, settings.profiles_dir)
    engine = make_engine(settings.database_url)
    migrate(engine)
    result = sync_registry(engine, sites)
    log.info("registry: %d sites synced from %s", len(sites), settings.sites_dir)
    ingest = Ingest(engine, topic_root=settings.topic_root)
    ingest.after_commit.append(after_ingest(settings.alert_rules()))
    subscriber = Subscriber(
        broker,
        ingest,
        client_id=settings.mqtt_client_id,
        topic_root=settings.topic_root,
        session_expiry_s=settings.mqtt_session_expiry_s,
        batch_max=settings.ingest_batch_max,
        batch_wait_s=settings.ingest_batch_wait_ms / 1000,
        shared_group=settings.ingest_shared_group or None,
        subscribe=settings.role in ("all", "ingest"),
    )

    @contextmanager
    def run_ingest(app: FastAPI) -> Iterator[None]:
        subscriber.start()
        try:
            yield
        finally:
            subscriber.stop()

    @contextmanager
    def run_schedule(app: FastAPI) -> Iterator[None]:
        leadership = Leadership(engine)
        scheduler = build_scheduler(
            engine,
            settings,
            subscriber.publish,
            leadership,
            functools.partial(subscriber.publish, retain=True),
        )
        scheduler.start()
        try:
            yield
        finally:
            scheduler.shutdown(wait=True)
            leadership.release()  # another controller takes the schedule over at once

    # Every role connects: ingest subscribes; the scheduler publishes rollout commands and the
    # API power and input commands, through the same client (subscribing to nothing there).
    extras = [run_ingest]
    if settings.role in ("all", "scheduler"):
        extras.append(run_schedule)
    app = create_app(settings, engine, lifespan_extras=extras)
    app.state.ingest_status = subscriber
    return Controller(settings, engine, ingest, subscriber, app, result)
