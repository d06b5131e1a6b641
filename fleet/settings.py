"""The controller's settings, from `FLEET_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent.config import DEFAULT_PROFILES_DIR, DEFAULT_SITES_DIR

SEVEN_DAYS_S = 7 * 24 * 3600


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FLEET_", extra="ignore")

    data_dir: Path = Path("./data")
    # Empty means SQLite in data_dir; PostgreSQL: postgresql+psycopg://user@host:5432/fleet
    database_url: str = ""
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    mqtt_client_id: str = "fleet-controller"
    # The broker keeps our session (and queued QoS 1 health) this long while we are down.
    mqtt_session_expiry_s: int = Field(default=SEVEN_DAYS_S, ge=0)
    topic_root: str = "fleet/v1"
    sites_dir: Path = DEFAULT_SITES_DIR
    profiles_dir: Path = DEFAULT_PROFILES_DIR
    # Ingest groups up to this many messages, or waits at most this long, per transaction.
    ingest_batch_max: int = Field(default=500, ge=1, le=100_000)
    ingest_batch_wait_ms: int = Field(default=50, ge=0, le=60_000)

    @model_validator(mode="after")
    def _default_database_in_data_dir(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'fleet.db'}"
        return self
