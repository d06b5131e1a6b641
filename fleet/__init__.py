"""The controller: ingests health over MQTT, keeps the registry, serves the API and dashboard."""

__version__ = "0.1.0"
