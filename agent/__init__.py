"""The site agent: polls a university's classroom devices and reports their health over MQTT."""

__version__ = "0.1.0"
