"""Retention, property-style: random tenants, retention periods, event ages and delivery
statuses, many rounds. Promise (SPEC §5): an event older than its tenant's retention is
pruned only when every delivery of it is final; nothing younger is touched.
"""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from django.utils import timezone

from integrations.models import (
    Delivery,
    DeliveryAttempt,
    Event,
    IdempotencyRecord,
    Tenant,
    Ticket,
)
from integrations.services.operations import events_prune
from tests.reliability.conftest import sizes

STATUSES = [s.value for s in Delivery.Status]


def _round(rng: random.Random, now) -> dict[str, tuple[Event, bool, bool]]:
    """Make a random world; returns event id -> (event, old enough, has unfinished)."""
    world = {}
    for t in range(rng.randint(1, 3)):
        retention = rng.randint(1, 60)
        tenant = Tenant.objects.create(
            owner=f"ret-{rng.random()}", name=f"R{t}", retention_days=retention
        )
        ticket = Ticket.objects.create(
            tenant=tenant,
            ticket_number="t",
            channel="whatsapp",
            account_id="a",
            customer_name="c",
            created_date=now,
        )
        cutoff = now - timedelta(days=retention)
        for sequence in range(1, rng.randint(1, 25) + 1):
            # ages cluster around the cutoff, where an off-by-one would show
            age = rng.choice(
                [
                    timedelta(days=rng.uniform(0, 90)),
                    now - cutoff + timedelta(seconds=rng.choice([-1, 1])),
                ]
            )
            event = Event.objects.create(
                tenant=tenant,
                kind="incoming",
                source="engine",
                ticket=ticket,
                ticket_number="t",
                sequence=sequence,
                raw_body=b"{}",
                payload={},
                received_at=now - age,
            )
            statuses = [rng.choice(STATUSES) for _ in range(rng.randint(0, 3))]
            for n, status in enumerate(statuses):
                delivery = Delivery.objects.create(
                    event=event,
                    tenant=tenant,
                    ticket=ticket,
                    target=f"partner:{n}",
                    endpoint="incoming",
                    status=status,
                )
                DeliveryAttempt.objects.create(delivery=delivery, number=1, url="http://x")
            unfinished = any(s not in Delivery.FINAL_STATUSES for s in statuses)
            world[str(event.pk)] = (event, event.received_at < cutoff, unfinished)
    return world


@pytest.mark.parametrize("size", sizes(ci={"rounds": 15}, full={"rounds": 400}, scaled=("rounds",)))
def test_retention_never_prunes_an_event_with_an_unfinished_delivery(size, db, figures):
    rng = random.Random(30)
    totals = {"events": 0, "pruned": 0, "kept_unfinished_old": 0, "kept_young": 0}
    for _ in range(size.rounds):
        # given random tenants, events, ages and delivery statuses
        now = timezone.now()
        world = _round(rng, now)
        young_key = IdempotencyRecord.objects.create(
            holder="h", key=f"young-{rng.random()}", request_hash="x", created_at=now
        )
        IdempotencyRecord.objects.create(
            holder="h",
            key=f"old-{rng.random()}",
            request_hash="x",
            created_at=now - timedelta(hours=25),
        )
        # when retention runs, in small batches
        deleted = events_prune(now=now, batch=rng.randint(1, 7))
        # then exactly the old events whose deliveries are all final are gone
        left = {str(pk) for pk in Event.objects.values_list("pk", flat=True)}
        for event_id, (_, old, unfinished) in world.items():
            should_go = old and not unfinished
            assert (event_id not in left) == should_go, (old, unfinished)
        assert deleted == sum(1 for _, old, unfinished in world.values() if old and not unfinished)
        # and deliveries and attempts went with their events, not others'
        assert not Delivery.objects.exclude(event_id__in=left).exists()
        assert not DeliveryAttempt.objects.exclude(delivery__event_id__in=left).exists()
        # and only idempotency records older than 24 h were deleted
        assert list(IdempotencyRecord.objects.all()) == [young_key]
        totals["events"] += len(world)
        totals["pruned"] += deleted
        totals["kept_unfinished_old"] += sum(1 for _, o, u in world.values() if o and u)
        totals["kept_young"] += sum(1 for _, o, _ in world.values() if not o)
        Tenant.objects.all().delete()
        IdempotencyRecord.objects.all().delete()
    figures.record(size, "retention", rounds=size.rounds, **totals)
    assert totals["pruned"] and totals["kept_unfinished_old"] and totals["kept_young"]
