"""The portal's Prometheus counters and histograms (SPEC §10), one definition each.

Web and worker processes count here; `/metrics` (integrations/health.py) sums every
process's counts with prometheus-client's multiprocess mode: each process writes its values
to files under PROMETHEUS_MULTIPROC_DIR (portal/settings.py sets it before this module is
imported). Label values are bounded sets: no ids, ticket numbers or URLs.
"""

from __future__ import annotations

import os
import socket

from django.conf import settings
from prometheus_client import Counter, Histogram, values

# Loading the settings puts PROMETHEUS_MULTIPROC_DIR in the environment (portal/settings.py);
# prometheus_client may have been imported before that, so its value class is set here.
if settings.PORTAL_METRICS_TOKEN is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Files are named by process; containers sharing the directory (compose: web and worker)
    # each have their own process ids, so the id alone could name two processes' files.
    _HOST = socket.gethostname()
    values.ValueClass = values.MultiProcessValue(lambda: f"{_HOST}-{os.getpid()}")

EVENTS_ACCEPTED = Counter(
    "portal_events_accepted",
    "Events accepted by the API (answered 2xx and stored), by kind and sender.",
    ["kind", "source"],
)
DELIVERY_ATTEMPTS = Counter(
    "portal_delivery_attempts",
    "Delivery attempts recorded, by outcome (success, retry, dead).",
    ["outcome"],
)
DELIVERY_ATTEMPT_DURATION = Histogram(
    "portal_delivery_attempt_duration_seconds",
    "How long one delivery attempt took, request to answer (or failure).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def event_accepted(*, kind: str, source: str) -> None:
    EVENTS_ACCEPTED.labels(kind=kind, source=source).inc()


def attempt_recorded(*, outcome: str, seconds: float) -> None:
    DELIVERY_ATTEMPTS.labels(outcome=outcome).inc()
    DELIVERY_ATTEMPT_DURATION.observe(seconds)
