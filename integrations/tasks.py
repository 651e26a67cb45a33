"""Thin Celery tasks: ids in, one service call. The database holds the schedule; tasks only
wake work up, so a lost message delays a delivery but never loses it. The outbox queues
these by name (integrations/outbox/queue.py and record.py), never by import."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from integrations.models import WorkerHeartbeat
from integrations.outbox import queue, sender
from integrations.services import alerts, operations


@shared_task(name="integrations.tasks.delivery_send_batch", ignore_result=True)
def delivery_send_batch(delivery_ids: list[int]) -> dict[int, str]:
    """Make one attempt of each delivery (claimed first; ids not due or taken are skipped),
    topping the batch up with the partner's oldest new deliveries."""
    results = sender.deliveries_send(delivery_ids=delivery_ids, top_up=True)
    return {pk: result.value for pk, result in results.items()}


_UNTRIED = {"not_claimed", "handed_back"}


@shared_task(name="integrations.tasks.delivery_pump", ignore_result=True)
def delivery_pump(key: str, slot: int = 0) -> int:
    """Send a target's due deliveries until none may go now (queued by `queue.wake` when an
    event is accepted, in slot 0; by a pump that found a backlog, in the others). Returns
    how many were attempted."""
    results = sender.deliveries_pump(key=key, slot=slot)
    return sum(1 for result in results.values() if result.value not in _UNTRIED)


@shared_task(name="integrations.tasks.deliveries_dispatch", ignore_result=True)
def deliveries_dispatch() -> int:
    """Queue every due delivery not queued recently (run by beat every second or so)."""
    return queue.deliveries_dispatch(now=timezone.now())


@shared_task(name="integrations.tasks.partner_paused_alert", ignore_result=True)
def partner_paused_alert(partner_id: int) -> bool:
    """Mail the tenant's admins that a partner was paused (queued after the pause)."""
    return alerts.partner_paused_alert(partner_id=partner_id)


@shared_task(name="integrations.tasks.deliveries_dead_alert", ignore_result=True)
def deliveries_dead_alert(partner_id: int) -> bool:
    """Mail the tenant's admins that deliveries went dead (at most once an hour)."""
    return alerts.deliveries_dead_alert(partner_id=partner_id, now=timezone.now())


@shared_task(name="integrations.tasks.events_prune", ignore_result=True)
def events_prune() -> int:
    """Apply each tenant's retention (run by beat every hour)."""
    return operations.events_prune()


@shared_task(name="integrations.tasks.ping", ignore_result=True)
def ping(marker: str) -> str:
    """Write a marker: used by health checks and tests to prove a worker takes tasks from
    the broker and writes to the database."""
    WorkerHeartbeat.objects.update_or_create(marker=marker, defaults={"seen_at": timezone.now()})
    return marker
