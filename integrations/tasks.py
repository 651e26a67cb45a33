"""Thin Celery tasks: an id in, a service call. The database holds the schedule; tasks only
wake work up, so a lost message delays a delivery but never loses it."""

from __future__ import annotations

import logging

from celery import shared_task
from django.utils import timezone

from integrations.services import deliveries as delivery_services

logger = logging.getLogger(__name__)


@shared_task(name="integrations.tasks.delivery_send", ignore_result=True)
def delivery_send(delivery_id: int) -> str:
    """Make one attempt of a delivery (claims it first; a duplicate message does nothing)."""
    return delivery_services.delivery_attempt(delivery_id=delivery_id)


@shared_task(name="integrations.tasks.deliveries_dispatch", ignore_result=True)
def deliveries_dispatch() -> int:
    """Queue every due delivery not queued recently (run by beat every second or so)."""
    now = timezone.now()
    ids = delivery_services.deliveries_due(now=now)
    if ids:
        delivery_services.deliveries_mark_dispatched(ids=ids, now=now)
        deliveries_enqueue(ids)
    return len(ids)


def deliveries_enqueue(ids: list[int]) -> None:
    """Send one queue message per delivery id. A broker error is logged, not raised: the rows
    are in the database and the dispatcher queues them again later."""
    for delivery_id in ids:
        try:
            delivery_send.delay(delivery_id)
        except Exception:
            logger.exception("could not queue delivery %s; the dispatcher will retry", delivery_id)
            return


@shared_task(name="integrations.tasks.ping", ignore_result=True)
def ping(marker: str) -> str:
    """Write a marker through the cache-free path: used by health checks and tests to prove a
    worker takes tasks from the broker and writes to the database."""
    from integrations.models import WorkerHeartbeat

    WorkerHeartbeat.objects.update_or_create(marker=marker, defaults={"seen_at": timezone.now()})
    return marker


@shared_task(name="integrations.tasks.events_prune", ignore_result=True)
def events_prune() -> int:
    """Apply each tenant's retention (run by beat every hour)."""
    from integrations.services.operations import events_prune as prune

    return prune()
