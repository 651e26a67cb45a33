"""Heartbeats of the scheduler and the workers, and what readiness makes of them (SPEC §10).

The scheduler (beat) and each worker write a heartbeat row every `heartbeat_every()` seconds
from their own main process (portal/celery.py), not through a task: a worker that takes no
task still beats, and a silent beat is not hidden by a busy worker. `/readyz` reads them.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import connection
from django.db.models import Count
from django.utils import timezone

from integrations.models import Delivery, Partner, WorkerHeartbeat
from integrations.outbox.queue import oldest_claimable_at

SCHEDULER = "scheduler"
WORKER_PREFIX = "worker:"


def heartbeat_every() -> float:
    """Seconds between two heartbeats of one process: a sixth of the age /readyz allows
    (10 s by default), so one late heartbeat is never a false alarm."""
    return max(0.5, settings.PORTAL_READY_HEARTBEAT_AGE / 6)


def heartbeat_record(marker: str, *, now: datetime | None = None, close: bool = False) -> None:
    """Write the heartbeat `marker` (SCHEDULER, or WORKER_PREFIX + the worker's name).

    With `close`, the database connection is closed afterwards: a Celery worker's main
    process forks its pool processes, which must not inherit an open connection.
    """
    try:
        WorkerHeartbeat.objects.update_or_create(
            marker=marker[:100], defaults={"seen_at": now or timezone.now()}
        )
    finally:
        if close:
            connection.close()


def readiness_problems(*, now: datetime) -> list[str]:
    """Why the delivery side is not ready, in words an operator can act on (empty: ready):
    the scheduler or every worker silent for PORTAL_READY_HEARTBEAT_AGE seconds, or the
    oldest delivery that may go now waiting longer than PORTAL_READY_MAX_LAG seconds."""
    problems = []
    limit = settings.PORTAL_READY_HEARTBEAT_AGE
    beats = dict(
        WorkerHeartbeat.objects.filter(marker__in=[SCHEDULER]).values_list("marker", "seen_at")
    )
    scheduler = beats.get(SCHEDULER)
    if scheduler is None:
        problems.append("scheduler (celery beat) has never reported")
    elif (age := (now - scheduler).total_seconds()) > limit:
        problems.append(f"scheduler (celery beat) silent for {age:.0f} s (limit {limit} s)")
    worker = (
        WorkerHeartbeat.objects.filter(marker__startswith=WORKER_PREFIX)
        .order_by("-seen_at")
        .values_list("seen_at", flat=True)
        .first()
    )
    if worker is None:
        problems.append("no worker has ever reported")
    elif (age := (now - worker).total_seconds()) > limit:
        problems.append(f"every worker silent for {age:.0f} s (limit {limit} s)")
    due = oldest_claimable_at(now=now)
    max_lag = settings.PORTAL_READY_MAX_LAG
    if due is not None and (lag := (now - due).total_seconds()) > max_lag:
        problems.append(f"oldest due delivery waiting {lag:.0f} s (limit {max_lag} s)")
    return problems


def outbox_gauges(*, now: datetime) -> dict[str, object]:
    """What /metrics reports of the database at `now` (SPEC §10): deliveries by status
    (the non-final ones, and dead), seconds the oldest claimable delivery has waited (0 when
    none), partners by state. Each is one indexed query (docs/PERFORMANCE.md, log scale)."""
    counted = [*Delivery.WAITING_STATUSES, Delivery.Status.DELIVERING, Delivery.Status.DEAD]
    rows = (  # COUNT(*), not COUNT(id): the status index alone answers it (index-only scan)
        Delivery.objects.filter(status__in=counted)
        .values_list("status")
        .annotate(n=Count("*"))
        .order_by()
    )
    deliveries = dict.fromkeys((str(s) for s in counted), 0) | {str(s): n for s, n in rows}
    partner_rows = Partner.objects.values_list("state").annotate(n=Count("id")).order_by()
    partners = dict.fromkeys((str(s) for s in Partner.State), 0) | {
        str(s): n for s, n in partner_rows
    }
    due = oldest_claimable_at(now=now)
    return {
        "deliveries": deliveries,
        "oldest_due_age_seconds": max(0.0, (now - due).total_seconds()) if due else 0.0,
        "partners": partners,
    }
