"""The outbox one delivery at a time, as a worker would take it (tests only)."""

from __future__ import annotations

import uuid
from datetime import datetime

from integrations.models import Delivery
from integrations.outbox import queue, sender

INCOMING = "/api/v1/engine/incoming"


def ingest(engine_api, **overrides) -> Delivery:
    """Post an incoming event (tests.conftest.incoming_body with `overrides`) as the engine;
    its partner delivery."""
    from tests.conftest import incoming_body

    event_id = engine_api.post(INCOMING, incoming_body(**overrides)).json()["eventId"]
    return Delivery.objects.get(event_id=event_id, partner__isnull=False)


def send_one(*, delivery_id: int) -> str:
    """Claim and send one delivery; its SendResult."""
    return sender.deliveries_send(delivery_ids=[delivery_id])[delivery_id]


def due_ids(*, now: datetime) -> list[int]:
    """Ids the dispatcher would queue at `now`."""
    return [pk for pk, _ in queue.deliveries_due(now=now)]


def claim(*, delivery_id: int, token: uuid.UUID, now: datetime) -> bool:
    """True when this call took the delivery under `token`."""
    return bool(queue.deliveries_claim(delivery_ids=[delivery_id], token=token, now=now))
