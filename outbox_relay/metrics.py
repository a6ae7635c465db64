"""Prometheus metrics of a relay, served on ``MAILROOM_RELAY_METRICS_PORT``."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

OUTBOX_BACKLOG = Gauge("mailroom_outbox_backlog", "Outbox rows due for publishing now")
OUTBOX_ROWS = Gauge("mailroom_outbox_rows", "Outbox rows, due or leased")
OUTBOX_IN_FLIGHT = Gauge(
    "mailroom_outbox_in_flight", "Published outbox rows no worker has picked up yet"
)
OLDEST_UNDISPATCHED = Gauge(
    "mailroom_outbox_oldest_undispatched_seconds", "Age of the oldest due, never published row"
)
OLDEST_IN_FLIGHT = Gauge(
    "mailroom_outbox_oldest_in_flight_seconds", "Age of the oldest published, unpicked row"
)
PAUSES = Gauge(
    "mailroom_relay_pauses", "Operator pauses (outbox-relay pause) holding mail in the outbox"
)
PUBLISHED = Counter("mailroom_relay_published_total", "Mail messages published", ["kind"])
EXPIRED = Counter("mailroom_relay_expired_total", "Mails expired instead of published")
DEAD = Counter("mailroom_relay_dead_total", "Mails given up on as dead")
UNROUTABLE = Counter(
    "mailroom_relay_unroutable_total", "Messages RabbitMQ could not route (alternate exchange)"
)
PUBLISH_ERRORS = Counter("mailroom_relay_publish_errors_total", "Rounds the broker refused")
PUBLISH_SECONDS = Histogram(
    "mailroom_relay_publish_seconds",
    "Time to publish one round's messages",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
CANARY_AGE = Gauge(
    "mailroom_canary_round_trip_age_seconds",
    "Seconds since the last completed canary round trip (or the oldest pending canary)",
    ["queue"],
)
PIPELINE_HEALTHY = Gauge(
    "mailroom_pipeline_healthy", "1 while canaries come back within the threshold", ["queue"]
)
ABANDONED = Counter(
    "mailroom_relay_abandoned_sends_total",
    "Mails put back in the outbox because their worker was lost while sending",
)
LEASE_RESCUED = Counter(
    "mailroom_relay_lease_rescued_sends_total",
    "Mails put back in the outbox (or dead at the attempt limit) because their worker's"
    " lease lapsed",
)
# ----- status webhooks -----
WEBHOOKS_PUBLISHED = Counter(
    "mailroom_relay_webhooks_published_total", "Webhook delivery messages published"
)
WEBHOOKS_ABANDONED = Counter(
    "mailroom_relay_webhooks_abandoned_total",
    "Webhook deliveries the relay gave up on (webhook deleted, or unattempted in the window)",
)
