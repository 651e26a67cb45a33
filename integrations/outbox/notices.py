"""Operations webhooks (SPEC §10): a tenant that sets an operations URL is told, by a signed
POST retried like any delivery, when one of its partners is paused or resumed and when a
delivery goes dead.

A notice is stored as an event of kind `operations` on the tenant's operations ticket (one
per tenant, OPERATIONS_TICKET: a ticket number the API can never give, as it has a space),
with one delivery to the OPERATIONS_TARGET; from there the outbox sends it as it sends
everything else: after the commit, signed with the tenant's operations signing secret, in
order (a `partner.resumed` never overtakes the `partner.paused` before it), retried, and
shown in the console with its attempts. Notices are written in the transaction that makes
the change they tell of, so neither is ever without the other.
"""

from __future__ import annotations

import json
from datetime import datetime

from django.db import transaction

from integrations.models import Delivery, Event, Tenant, Ticket
from integrations.outbox.queue import batch_key, enqueue

PARTNER_PAUSED = "partner.paused"
PARTNER_RESUMED = "partner.resumed"
DELIVERY_DEAD = "delivery.dead"
NOTICE_TYPES = (PARTNER_PAUSED, PARTNER_RESUMED, DELIVERY_DEAD)

OPERATIONS_TICKET = "operations notices"
OPERATIONS_CHANNEL = "operations"


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def notice_queue(
    *,
    tenant_id: int,
    kind: str,
    partner_id: int | None,
    reason: str,
    now: datetime,
    delivery_id: int | None = None,
) -> int | None:
    """Store the notice `kind` (one of NOTICE_TYPES) for the tenant's operations URL and
    queue its delivery after the commit; returns the delivery's id, or None when the tenant
    has no operations URL. Call inside the transaction that makes the change."""
    assert kind in NOTICE_TYPES, kind
    tenant = Tenant.objects.only("owner", "operations_url").get(pk=tenant_id)
    if not tenant.operations_url:
        return None
    payload: dict[str, object] = {
        "type": kind,
        "occurredAt": _iso(now),
        "owner": tenant.owner,
        "partnerId": partner_id,
    }
    if delivery_id is not None:
        payload["deliveryId"] = delivery_id
    payload["reason"] = reason
    with transaction.atomic():
        ticket = _operations_ticket(tenant, now)
        ticket.last_sequence += 1
        ticket.save(update_fields=["last_sequence", "updated_at"])
        event = Event.objects.create(
            tenant_id=tenant_id,
            kind=Event.Kind.OPERATIONS,
            source=Event.Source.PORTAL,
            partner=None,  # (the partner it is about is in the payload; it did not send it)
            ticket=ticket,
            ticket_number=OPERATIONS_TICKET,
            sequence=ticket.last_sequence,
            raw_body=json.dumps(payload, separators=(",", ":")).encode(),
            payload=payload,
            received_at=now,
        )
        delivery = Delivery.objects.create(
            event=event,
            tenant_id=tenant_id,
            ticket=ticket,
            partner=None,
            target=Delivery.OPERATIONS_TARGET,
            endpoint=Delivery.Endpoint.OPERATIONS,
            status=Delivery.Status.PENDING,
            next_attempt_at=now,
            dispatched_at=now,
        )
    row = (delivery.pk, batch_key(Delivery.OPERATIONS_TARGET, tenant_id))
    transaction.on_commit(lambda: enqueue([row]), robust=True)
    return delivery.pk


def _operations_ticket(tenant: Tenant, now: datetime) -> Ticket:
    """The tenant's operations ticket, locked (its notices take their sequence in order);
    made on first use."""
    ticket, _ = Ticket.objects.select_for_update().get_or_create(
        tenant=tenant,
        ticket_number=OPERATIONS_TICKET,
        defaults={
            "channel": OPERATIONS_CHANNEL,
            "account_id": "",
            "customer_name": "Operations",
            "created_date": now,
        },
    )
    return ticket
