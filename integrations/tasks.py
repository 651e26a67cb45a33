"""Thin Celery tasks: an id in, a service call. The database holds the schedule; tasks only
wake work up, so a lost message delays a delivery but never loses it."""

from __future__ import annotations

import logging

from celery import shared_task
from django.utils import timezone

from integrations.services import deliveries as delivery_services

logger = logging.getLogger(__name__)


@shared_task(name="integrations.tasks.delivery_send_batch", ignore_result=True)
def delivery_send_batch(delivery_ids: list[int]) -> dict[int, str]:
    """Make one attempt of each delivery (claimed first; ids not due or taken are skipped),
    topping the batch up with the partner's oldest new deliveries."""
    return delivery_services.deliveries_attempt(delivery_ids=delivery_ids, top_up=True)


@shared_task(name="integrations.tasks.delivery_send", ignore_result=True)
def delivery_send(delivery_id: int) -> str:
    """One delivery: kept so messages queued before batches existed are still understood."""
    return delivery_services.delivery_attempt(delivery_id=delivery_id)


@shared_task(name="integrations.tasks.deliveries_dispatch", ignore_result=True)
def deliveries_dispatch() -> int:
    """Queue every due delivery not queued recently (run by beat every second or so)."""
    return delivery_services.deliveries_dispatch(now=timezone.now())


def deliveries_enqueue(ids: list[int]) -> None:
    """Send one queue message carrying these delivery ids (one target's; callers group them
    with `deliveries.batches_by_target`). A broker error is logged, not raised: the rows are
    in the database and the dispatcher queues them again later."""
    try:
        delivery_send_batch.delay(list(ids))
    except Exception:
        logger.exception("could not queue deliveries %s; the dispatcher will retry", ids)


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
