"""The outbox one delivery at a time, as a worker would take it (tests only)."""

from __future__ import annotations

import uuid
from datetime import datetime

from integrations.outbox import queue, sender


def send_one(*, delivery_id: int) -> str:
    """Claim and send one delivery; its SendResult."""
    return sender.deliveries_send(delivery_ids=[delivery_id])[delivery_id]


def due_ids(*, now: datetime) -> list[int]:
    """Ids the dispatcher would queue at `now`."""
    return [pk for pk, _ in queue.deliveries_due(now=now)]


def claim(*, delivery_id: int, token: uuid.UUID, now: datetime) -> bool:
    """True when this call took the delivery under `token`."""
    return bool(queue.deliveries_claim(delivery_ids=[delivery_id], token=token, now=now))
