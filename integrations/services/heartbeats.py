"""Heartbeats of the scheduler and the workers, what readiness makes of them, and the
outbox gauges /metrics reads from the database (SPEC §10).

The scheduler (beat) and each worker write a heartbeat row every `heartbeat_every()` seconds
from their own main process (portal/celery.py), not through a task: a worker that takes no
task still beats, and a silent beat is not hidden by a busy worker. `/readyz` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    scheduler, worker = _newest_heartbeats()
    problems = [
        p
        for p in (
            _silence(
                "scheduler (celery beat)",
                "scheduler (celery beat) has never reported",
                scheduler,
                now,
            ),
            _silence("every worker", "no worker has ever reported", worker, now),
        )
        if p
    ]
    due = oldest_claimable_at(now=now)
    max_lag = settings.PORTAL_READY_MAX_LAG
    if due is not None and (lag := (now - due).total_seconds()) > max_lag:
        problems.append(f"oldest due delivery waiting {lag:.0f} s (limit {max_lag} s)")
    return problems


def _newest_heartbeats() -> tuple[datetime | None, datetime | None]:
    """When the scheduler, and the most recent of the workers, last wrote a heartbeat."""
    beats = WorkerHeartbeat.objects.order_by("-seen_at").values_list("seen_at", flat=True)
    scheduler = beats.filter(marker=SCHEDULER).first()
    worker = beats.filter(marker__startswith=WORKER_PREFIX).first()  # the newest of any
    return scheduler, worker


def _silence(who: str, never: str, seen: datetime | None, now: datetime) -> str | None:
    """The problem when the newest heartbeat `seen` is missing (`never`) or older than
    PORTAL_READY_HEARTBEAT_AGE, else None."""
    limit = settings.PORTAL_READY_HEARTBEAT_AGE
    if seen is None:
        return never
    if (age := (now - seen).total_seconds()) > limit:
        return f"{who} silent for {age:.0f} s (limit {limit} s)"
    return None


@dataclass(frozen=True)
class OutboxGauges:
    """What /metrics reports of the database at one moment (SPEC §10)."""

    deliveries: dict[str, int]  # by status: the non-final ones, and dead
    oldest_due_age_seconds: float  # 0 when nothing claimable is waiting
    partners: dict[str, int]  # by state
    # seconds since the scheduler's / the newest worker's heartbeat (+Inf: never)
    heartbeat_ages: dict[str, float]


def outbox_gauges(*, now: datetime) -> OutboxGauges:
    """What /metrics reports of the database at `now` (SPEC §10): deliveries by status
    (the non-final ones, and dead), seconds the oldest claimable delivery has waited (0 when
    none), partners by state, the heartbeats' ages. Each is one indexed query
    (docs/PERFORMANCE.md, log scale)."""
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
    age = max(0.0, (now - due).total_seconds()) if due else 0.0
    scheduler, worker = _newest_heartbeats()
    ages = {
        component: max(0.0, (now - seen).total_seconds()) if seen else float("inf")
        for component, seen in (("scheduler", scheduler), ("worker", worker))
    }
    return OutboxGauges(
        deliveries=deliveries, oldest_due_age_seconds=age, partners=partners, heartbeat_ages=ages
    )
