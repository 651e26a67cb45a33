"""Read queries for the API, the admin and the pages. No writes here."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.db.models import Prefetch

from integrations.errors import NotFound
from integrations.models import Contact, Delivery, Event, Ticket
from integrations.services.accounts import Principal

HISTORY_MAX_LIMIT = 100
HISTORY_DEFAULT_LIMIT = 50


def _iso(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _visible_deliveries(principal: Principal, deliveries) -> list[Delivery]:
    """A partner sees its own deliveries and the engine relay, never other partners'."""
    if principal.partner is None:
        return list(deliveries)
    own = f"partner:{principal.partner.pk}"
    return [d for d in deliveries if d.target in (own, Delivery.ENGINE_TARGET)]


def _tenant_ids(principal: Principal) -> list[int] | None:
    if principal.partner is not None:
        return [principal.partner.tenant_id]
    return None if principal.tenant_ids is None else sorted(principal.tenant_ids)


@dataclass(frozen=True)
class HistoryPage:
    results: list[dict[str, Any]]
    next_after: int | None


def ticket_history(*, principal: Principal, ticket_number: str, after: int = 0,
                   limit: int = HISTORY_DEFAULT_LIMIT) -> HistoryPage:
    """A ticket's messages, oldest first, `limit` at a time after sequence `after`.

    Raises NotFound when the ticket is not in the caller's tenant.
    """
    tickets = Ticket.objects.filter(ticket_number=ticket_number)
    tenant_ids = _tenant_ids(principal)
    if tenant_ids is not None:
        tickets = tickets.filter(tenant_id__in=tenant_ids)
    ticket = tickets.first()
    if ticket is None:
        raise NotFound(f"No ticket {ticket_number!r}.", code="ticket_not_found")
    events = list(
        Event.objects.filter(ticket=ticket, sequence__gt=after,
                             kind__in=[Event.Kind.INCOMING, Event.Kind.OUTGOING])
        .order_by("sequence")
        .prefetch_related(Prefetch("deliveries", queryset=Delivery.objects.order_by("id")))
        [: limit + 1]
    )
    more = len(events) > limit
    events = events[:limit]
    results = [
        {
            "eventId": str(event.id),
            "direction": event.kind,
            "source": event.source,
            "messageType": event.payload.get("messageType", ""),
            "message": event.payload.get("message", ""),
            "mediaLink": event.payload.get("mediaLink", ""),
            "createdAt": _iso(event.received_at),
            "deliveries": [
                {"target": d.target, "status": d.status}
                for d in _visible_deliveries(principal, event.deliveries.all())
            ],
        }
        for event in events
    ]
    return HistoryPage(results=results, next_after=events[-1].sequence if more else None)


def contact_detail(*, principal: Principal, contact_id: str) -> dict[str, Any]:
    """A contact of the caller's tenant with its tickets; raises NotFound."""
    contacts = Contact.objects.filter(contact_id=contact_id)
    tenant_ids = _tenant_ids(principal)
    if tenant_ids is not None:
        contacts = contacts.filter(tenant_id__in=tenant_ids)
    contact = contacts.first()
    if contact is None:
        raise NotFound(f"No contact {contact_id!r}.", code="contact_not_found")
    tickets = contact.tickets.order_by("created_at").values_list("ticket_number", "status")
    return {
        "contactId": contact.contact_id,
        "customerName": contact.customer_name,
        "channel": contact.channel,
        "accountId": contact.account_id,
        "firstSeen": _iso(contact.first_seen),
        "lastSeen": _iso(contact.last_seen),
        "tickets": [{"ticketNumber": n, "status": s} for n, s in tickets],
    }


def event_detail(*, principal: Principal, event_id: str) -> dict[str, Any]:
    """One event with the status of the deliveries the caller may see; raises NotFound."""
    try:
        uuid.UUID(event_id)
    except ValueError:
        raise NotFound(f"No event {event_id!r}.", code="event_not_found") from None
    events = Event.objects.select_related("tenant").filter(pk=event_id)
    tenant_ids = _tenant_ids(principal)
    if tenant_ids is not None:
        events = events.filter(tenant_id__in=tenant_ids)
    event = events.first()
    if event is None:
        raise NotFound(f"No event {event_id!r}.", code="event_not_found")
    deliveries = event.deliveries.select_related("partner").order_by("id")
    return {
        "eventId": str(event.id),
        "kind": event.kind,
        "source": event.source,
        "owner": event.tenant.owner,
        "ticketNumber": event.ticket_number,
        "receivedAt": _iso(event.received_at),
        "payload": event.payload,
        "deliveries": [
            {
                "target": d.target,
                "partnerName": d.partner.name if d.partner else None,
                "status": d.status,
                "attempts": d.attempts,
                "lastStatusCode": d.last_status_code,
                "lastError": d.last_error,
                "nextAttemptAt": _iso(d.next_attempt_at),
                "deliveredAt": _iso(d.delivered_at),
            }
            for d in _visible_deliveries(principal, deliveries)
        ],
    }
