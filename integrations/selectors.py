"""Read queries for the API, the admin and the pages. No writes here."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.db.models import Prefetch

from integrations.errors import NotFound
from integrations.models import Contact, Delivery, Event, Tenant, Ticket
from integrations.outbox.notices import OPERATIONS_CHANNEL
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


def storable(value: str) -> bool:
    """False for a lookup value no row can hold: PostgreSQL text refuses NUL (a URL's %00)."""
    return "\x00" not in value


def _tenant_ids(principal: Principal) -> list[int] | None:
    if principal.partner is not None:
        return [principal.partner.tenant_id]
    return None if principal.tenant_ids is None else sorted(principal.tenant_ids)


@dataclass(frozen=True)
class HistoryPage:
    results: list[dict[str, Any]]
    next_after: int | None


def ticket_history(
    *, principal: Principal, ticket_number: str, after: int = 0, limit: int = HISTORY_DEFAULT_LIMIT
) -> HistoryPage:
    """A ticket's messages, oldest first, `limit` at a time after sequence `after`.

    Raises NotFound when the ticket is not in the caller's tenant.
    """
    tickets = Ticket.objects.filter(ticket_number=ticket_number)
    tenant_ids = _tenant_ids(principal)
    if tenant_ids is not None:
        tickets = tickets.filter(tenant_id__in=tenant_ids)
    if principal.partner is not None:  # the tenant's operations notices are not a partner's
        tickets = tickets.exclude(channel=OPERATIONS_CHANNEL)
    ticket = tickets.first() if storable(ticket_number) else None
    if ticket is None:
        raise NotFound(f"No ticket {ticket_number!r}.", code="ticket_not_found")
    events = list(
        Event.objects.filter(
            ticket=ticket, sequence__gt=after, kind__in=[Event.Kind.INCOMING, Event.Kind.OUTGOING]
        )
        .order_by("sequence")
        .prefetch_related(Prefetch("deliveries", queryset=Delivery.objects.order_by("id")))[
            : limit + 1
        ]
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
    contact = contacts.first() if storable(contact_id) else None
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
    if principal.partner is not None:  # the tenant's operations notices are not a partner's
        events = events.exclude(kind=Event.Kind.OPERATIONS)
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


# --- admin pages ------------------------------------------------------------------------------


def _percentile(sorted_values: list[int], fraction: float) -> int | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


HEALTH_SAMPLE = 5000


def partner_health(*, partner, now=None) -> dict[str, Any]:
    """Health figures for the partner page: 24 h success rate, p50/p95 latency (from at most
    the last HEALTH_SAMPLE attempts), last error, consecutive failures, pending/dead counts."""
    from datetime import timedelta

    from django.db.models import Count, Q
    from django.utils import timezone

    from integrations.models import DeliveryAttempt

    now = now or timezone.now()
    since = now - timedelta(hours=24)
    attempts = DeliveryAttempt.objects.filter(delivery__partner=partner, created_at__gte=since)
    totals = attempts.aggregate(total=Count("id"), ok=Count("id", filter=Q(outcome="success")))
    durations = sorted(
        attempts.order_by("-created_at").values_list("duration_ms", flat=True)[:HEALTH_SAMPLE]
    )
    counts = dict(
        Delivery.objects.filter(partner=partner, status__in=["pending", "retrying", "dead"])
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    return {
        "attempts_24h": totals["total"],
        "success_rate_24h": (totals["ok"] / totals["total"]) if totals["total"] else None,
        "latency_p50_ms": _percentile(durations, 0.50),
        "latency_p95_ms": _percentile(durations, 0.95),
        "last_error": partner.last_error,
        "consecutive_failures": partner.consecutive_failures,
        "pending": counts.get("pending", 0) + counts.get("retrying", 0),
        "dead": counts.get("dead", 0),
    }


def dashboard_stats(*, tenant_ids: list[int] | None, now=None) -> dict[str, Any]:
    """Per-partner volume and success rate over 24 h, and the queue depth, for the index."""
    from datetime import timedelta

    from django.db.models import Count, Q
    from django.utils import timezone

    now = now or timezone.now()
    if tenant_ids is None:
        # Naming every tenant lets (tenant, -created_at) serve the 24 h window: 19 ms instead
        # of a whole-table read at 1,000,000 events (bench/logscale.py).
        tenant_ids = list(Tenant.objects.values_list("pk", flat=True))
    deliveries = Delivery.objects.filter(tenant_id__in=tenant_ids)
    recent = deliveries.filter(created_at__gte=now - timedelta(hours=24))
    rows = (
        recent.values("target", "partner__name", "tenant__name")
        .annotate(
            total=Count("id"),
            ok=Count("id", filter=Q(status="succeeded")),
            dead=Count("id", filter=Q(status="dead")),
        )
        .order_by("-total")[:20]
    )
    partners = [
        {
            "name": r["partner__name"]
            or ("Operations URL" if r["target"] == Delivery.OPERATIONS_TARGET else "Engine relay"),
            "tenant": r["tenant__name"],
            "total": r["total"],
            "succeeded": r["ok"],
            "dead": r["dead"],
            "rate": r["ok"] / r["total"] if r["total"] else None,
        }
        for r in rows
    ]
    waiting = deliveries.filter(status__in=Delivery.WAITING_STATUSES)
    return {
        "partners": partners,
        "max_total": max((p["total"] for p in partners), default=0),
        "pending": waiting.count(),
        "due_now": waiting.filter(next_attempt_at__lte=now).count(),
        "dead": deliveries.filter(status=Delivery.Status.DEAD).count(),
    }


def ticket_timeline(*, ticket) -> list[dict[str, Any]]:
    """A ticket's events in the order they entered, each with its deliveries."""
    events = (
        Event.objects.filter(ticket=ticket)
        .defer("raw_body")  # the page shows the normalized payload only
        .order_by("sequence")
        .select_related("partner")
        .prefetch_related(
            Prefetch(
                "deliveries", queryset=Delivery.objects.select_related("partner").order_by("id")
            )
        )
    )
    return [
        {
            "event": event,
            "payload": event.payload,
            "deliveries": list(event.deliveries.all()),
        }
        for event in events
    ]


# --- the management API (SPEC §8): what a tenant's management token reads ----------------

MANAGE_MAX_LIMIT = 100
MANAGE_DEFAULT_LIMIT = 50


def manage_partner(partner, *, health: bool = False) -> dict[str, Any]:
    """A partner as the management API shows it (a password in its URL redacted)."""
    from integrations.delivery import redact_url

    shown: dict[str, Any] = {
        "partnerId": partner.pk,
        "name": partner.name,
        "baseUrl": redact_url(partner.base_url),
        "incomingMessagePath": partner.incoming_message_path,
        "sendMessagePath": partner.send_message_path,
        "channels": list(partner.channels or []),
        "connectTimeout": partner.connect_timeout,
        "timeout": partner.timeout,
        "retrySchedule": partner.retry_schedule,
        "rateLimit": partner.rate_limit,
        "state": partner.state,
        "stateReason": partner.state_reason,
        "stateChangedAt": _iso(partner.state_changed_at),
        "createdAt": _iso(partner.created_at),
    }
    if health:
        figures = partner_health(partner=partner)
        shown["health"] = {
            "consecutiveFailures": partner.consecutive_failures,
            "lastSuccessAt": _iso(partner.last_success_at),
            "lastFailureAt": _iso(partner.last_failure_at),
            "lastError": partner.last_error,
            "successRate24h": figures["success_rate_24h"],
            "latencyP50Ms": figures["latency_p50_ms"],
            "latencyP95Ms": figures["latency_p95_ms"],
            "waiting": figures["pending"],
            "dead": figures["dead"],
        }
    return shown


def manage_key(key) -> dict[str, Any]:
    return {
        "prefix": key.prefix,
        "name": key.name,
        "createdAt": _iso(key.created_at),
        "lastUsedAt": _iso(key.last_used_at),
        "expiresAt": _iso(key.expires_at),
        "revokedAt": _iso(key.revoked_at),
    }


def manage_delivery(delivery: Delivery) -> dict[str, Any]:
    return {
        "deliveryId": delivery.pk,
        "eventId": str(delivery.event_id),
        "ticketNumber": delivery.ticket_number,  # annotated or loaded by the caller
        "target": delivery.target,
        "partnerId": delivery.partner_id,
        "endpoint": delivery.endpoint,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "nextAttemptAt": _iso(delivery.next_attempt_at),
        "lastStatusCode": delivery.last_status_code,
        "lastError": delivery.last_error,
        "createdAt": _iso(delivery.created_at),
        "deliveredAt": _iso(delivery.delivered_at),
    }


@dataclass(frozen=True)
class DeliveryFilters:
    status: str = ""
    partner_id: int | None = None
    ticket_number: str = ""
    event_id: uuid.UUID | None = None
    since: Any = None
    until: Any = None


def manage_deliveries(
    *, tenant: Tenant, filters: DeliveryFilters, before: int | None, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """A tenant's deliveries, newest first, `limit` at a time below id `before`; returns
    the page and the id to continue below (None: the end). Filtered by partner and status
    it reads the (partner, status, id) index backwards (bench/logscale.py)."""
    from django.db.models import F

    rows = Delivery.objects.filter(tenant=tenant)
    if filters.status:
        rows = rows.filter(status=filters.status)
    if filters.partner_id is not None:
        rows = rows.filter(partner_id=filters.partner_id)
    if filters.ticket_number:
        if not storable(filters.ticket_number):
            return [], None
        rows = rows.filter(ticket__ticket_number=filters.ticket_number)
    if filters.event_id is not None:
        rows = rows.filter(event_id=filters.event_id)
    if filters.since is not None:
        rows = rows.filter(created_at__gte=filters.since)
    if filters.until is not None:
        rows = rows.filter(created_at__lt=filters.until)
    if before is not None:
        rows = rows.filter(pk__lt=before)
    page = list(
        rows.annotate(ticket_number=F("ticket__ticket_number")).order_by("-id")[: limit + 1]
    )
    more = len(page) > limit
    page = page[:limit]
    return [manage_delivery(d) for d in page], (page[-1].pk if more and page else None)


def manage_delivery_detail(delivery: Delivery) -> dict[str, Any]:
    """A delivery with its attempt log (oldest first)."""
    delivery.ticket_number = delivery.ticket.ticket_number
    shown = manage_delivery(delivery)
    shown["attemptLog"] = [
        {
            "number": a.number,
            "attemptedAt": _iso(a.created_at),
            "url": a.url,
            "statusCode": a.response_status,
            "outcome": a.outcome,
            "durationMs": a.duration_ms,
            "error": a.error_message,
            "responseExcerpt": a.response_body[:2000],
        }
        for a in delivery.attempts_log.order_by("number")
    ]
    return shown


def manage_ticket(*, tenant: Tenant, ticket_number: str) -> dict[str, Any]:
    """A ticket of the tenant and its timeline: every event in order with its deliveries'
    status. Raises NotFound."""
    ticket = (
        Ticket.objects.filter(tenant=tenant, ticket_number=ticket_number).first()
        if storable(ticket_number)
        else None
    )
    if ticket is None:
        raise NotFound(f"No ticket {ticket_number!r}.", code="ticket_not_found")
    return {
        "ticketNumber": ticket.ticket_number,
        "channel": ticket.channel,
        "status": ticket.status,
        "customerName": ticket.customer_name,
        "createdDate": _iso(ticket.created_date),
        "closedAt": _iso(ticket.closed_at),
        "timeline": [
            {
                "eventId": str(item["event"].pk),
                "kind": item["event"].kind,
                "source": item["event"].source,
                "sequence": item["event"].sequence,
                "receivedAt": _iso(item["event"].received_at),
                "payload": item["payload"],
                "deliveries": [
                    {
                        "deliveryId": d.pk,
                        "target": d.target,
                        "partnerId": d.partner_id,
                        "status": d.status,
                        "attempts": d.attempts,
                        "lastStatusCode": d.last_status_code,
                    }
                    for d in item["deliveries"]
                ],
            }
            for item in ticket_timeline(ticket=ticket)
        ],
    }
