"""The agent's Prometheus metrics, served by `fleet-agent run --metrics-port`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

POLLS = Counter("fleet_agent_polls_total", "Device polls, by protocol.", ["protocol"])
POLL_ERRORS = Counter(
    "fleet_agent_poll_errors_total", "Polls that could not read the device.", ["device"]
)
OUTBOX_DEPTH = Gauge("fleet_agent_outbox_depth", "Readings waiting in the on-disk outbox.")
OUTBOX_DROPPED = Counter(
    "fleet_agent_outbox_dropped_total", "Readings dropped because the outbox hit its bound."
)
PUBLISH_SECONDS = Histogram(
    "fleet_agent_publish_seconds",
    "From publishing a batch to the broker's acknowledgement.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CONNECTED = Gauge("fleet_agent_broker_connected", "1 while connected to the broker.")
BROKER_CONNECTS = Counter(
    "fleet_agent_broker_connects_total",
    "Connections the broker accepted; a count that climbs fast is a reconnect loop.",
)
PUBLISH_REFUSED = Counter(
    "fleet_agent_publish_refused_total",
    "Health batches the broker refused (PUBACK reason code of 128 or more, MQTT 5.0 spec "
    "3.4.2.1, or too large for it); each stays in the outbox and is tried again.",
    ["reason_code", "reason"],
)
BATCHES_SPLIT = Counter(
    "fleet_agent_batches_split_total",
    "Batches taken apart to be sent smaller, because the broker would not take their size.",
)
OUTBOX_FILE_BYTES = Gauge(
    "fleet_agent_outbox_file_bytes", "The outbox's files on disk (database and its WAL)."
)


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Serve these metrics over HTTP on `host`:`port` (loopback by default) from a background
    thread; OSError if the port cannot be bound."""
    start_http_server(port, addr=host)
