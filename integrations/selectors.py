"""Read queries for the API, the admin and the pages. No writes here."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connections
from django.db.models import (
    Aggregate,
    Case,
    Count,
    FloatField,
    IntegerField,
    Prefetch,
    Value,
    When,
)
from django.db.models.functions import Mod, TruncHour
from django.utils import timezone

from integrations.errors import NotFound
from integrations.models import (
    Contact,
    Delivery,
    Event,
    Partner,
    Tenant,
    Ticket,
)
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


# --- the dashboard (the admin index) ------------------------------------------------------

# Window -> (span, hours per bar): hourly bars for a day, 6-hour bars for a week.
DASHBOARD_WINDOWS: dict[str, tuple[timedelta, int]] = {
    "24h": (timedelta(hours=24), 1),
    "7d": (timedelta(days=7), 6),
}
DASHBOARD_DEFAULT_WINDOW = "24h"
# What each delivery status counts as on the chart, in stacking order (bottom first).
DASHBOARD_OUTCOMES: dict[str, tuple[str, ...]] = {
    "succeeded": (Delivery.Status.SUCCEEDED,),
    "waiting": (Delivery.Status.PENDING, Delivery.Status.DELIVERING, Delivery.Status.RETRYING),
    "dead": (Delivery.Status.DEAD,),
    "cancelled": (Delivery.Status.CANCELLED,),
    "not_configured": (Delivery.Status.NOT_CONFIGURED,),
}
_OUTCOME_OF = {status: outcome for outcome, ss in DASHBOARD_OUTCOMES.items() for status in ss}
DASHBOARD_TARGETS = 25  # rows of the per-partner table, busiest first
# Latency percentiles of a target read the attempts of at most about this many of its
# deliveries of the window (every n-th by id): a week of a busy partner would otherwise be
# 100,000 index probes into the attempts (bench/logscale.py at 1,000,000 events).
LATENCY_SAMPLE_DELIVERIES = 1000


class PercentileCont(Aggregate):
    """PostgreSQL's `percentile_cont(fraction) WITHIN GROUP (ORDER BY expression)`: the
    value at `fraction` of the ordered group, interpolated between neighbours."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)r) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: str, fraction: float, **extra: Any) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError("fraction must be in [0, 1]")
        super().__init__(expression, fraction=float(fraction), **extra)


def percentile_cont(sorted_values: list[int] | list[float], fraction: float) -> float | None:
    """As PostgreSQL's percentile_cont: linear interpolation between the closest ranks of
    ascending `sorted_values`; None for none."""
    if not sorted_values:
        return None
    position = fraction * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def dashboard_partner_choices(*, tenant_ids: list[int] | None) -> list[dict[str, Any]]:
    """The partners the dashboard can be narrowed to: those of `tenant_ids` (None: all),
    by tenant name, then name."""
    partners = Partner.objects.order_by("tenant__name", "tenant_id", "name", "pk")
    if tenant_ids is not None:
        partners = partners.filter(tenant_id__in=tenant_ids)
    return [
        {"id": pk, "name": name, "tenant_id": tenant_id, "tenant": tenant}
        for pk, name, tenant_id, tenant in partners.values_list(
            "pk", "name", "tenant_id", "tenant__name"
        )
    ]


def _bar_start(moment: datetime, hours: int) -> datetime:
    """The start of the bar `moment` falls in, in UTC: a whole hour of the current time zone
    whose hour of the day is a multiple of `hours`."""
    local = timezone.localtime(moment)
    start = local.replace(hour=local.hour - local.hour % hours, minute=0, second=0, microsecond=0)
    return start.astimezone(UTC)


def dashboard_bar_starts(*, now: datetime, window: str) -> list[datetime]:
    """The starts (UTC) of the window's bars, oldest first: from the bar that holds
    `now - span` to the one that holds `now` (which is still filling up).

    Bars follow the wall clock of the current time zone (a zone 5:30 from UTC gets bars from
    :30 UTC); a day with a DST change has one bar more or fewer.
    """
    span, hours = DASHBOARD_WINDOWS[window]
    starts: list[datetime] = []
    # Hour by hour in UTC (a comparison of two local times ignores the fold of a DST change).
    moment = _bar_start(now - span, hours)
    while moment <= now:
        start = _bar_start(moment, hours)
        if not starts or start != starts[-1]:
            starts.append(start)
        moment += timedelta(hours=1)
    return starts


def dashboard_stats(
    *,
    tenant_ids: list[int] | None,
    window: str = DASHBOARD_DEFAULT_WINDOW,
    partner_id: int | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The admin index's figures for `tenant_ids` (None: all), optionally one partner's.

    Returns the queue depth (now), and for the window (DASHBOARD_WINDOWS; an unknown one is
    the default): deliveries per bar and outcome (DASHBOARD_OUTCOMES) with bar starts in the
    current time zone, totals per outcome, and per target (partner, engine relay,
    operations URL; the busiest DASHBOARD_TARGETS) volume, success rate and p50/p95 latency
    of the attempts that got an HTTP response (LATENCY_SAMPLE_DELIVERIES); whether there
    were deliveries before the window. A delivery counts in the bar and window of its
    creation, with its status now. `partner_id` narrows everything to that partner, and
    only within `tenant_ids`: another tenant's partner yields nothing.
    """
    if window not in DASHBOARD_WINDOWS:
        window = DASHBOARD_DEFAULT_WINDOW
    now = now or timezone.now()
    everyone = tenant_ids is None
    if tenant_ids is None:
        # Naming every tenant lets (tenant, -created_at) serve the window: 19 ms instead
        # of a whole-table read at 1,000,000 events (bench/logscale.py).
        tenant_ids = list(Tenant.objects.values_list("pk", flat=True))
    # The queue counts of every tenant need no tenant filter: the status indexes alone
    # answer them (index-only), where a tenant list would read each row.
    queue = (
        Delivery.objects.all() if everyone else Delivery.objects.filter(tenant_id__in=tenant_ids)
    )
    deliveries = Delivery.objects.filter(tenant_id__in=tenant_ids)
    if partner_id is not None:
        queue = queue.filter(partner_id=partner_id)
        deliveries = deliveries.filter(partner_id=partner_id)
    hours = DASHBOARD_WINDOWS[window][1]
    starts = dashboard_bar_starts(now=now, window=window)
    # The window starts with its first bar: every bar holds whole hours.
    recent = deliveries.filter(created_at__gte=starts[0])
    bars, totals, targets = _window_figures(recent, starts=starts, hours=hours)
    latencies = _latencies(recent, targets)
    for row in targets:
        row.update(latencies.get((row["target"], row["tenant_id"]), {}))
    waiting = queue.filter(status__in=Delivery.WAITING_STATUSES)
    total = sum(totals.values())
    return {
        "window": window,
        "tenant_count": len(tenant_ids),
        "since": timezone.localtime(starts[0]),
        "now": timezone.localtime(now),
        "bars": bars,
        "max_bar_total": max((bar["total"] for bar in bars), default=0),
        "totals": totals,
        "total": total,
        # (for the empty state: a quiet window, or nothing yet)
        "any_deliveries": total > 0 or deliveries.filter(created_at__lt=starts[0]).exists(),
        "partners": targets,
        "max_total": max((row["total"] for row in targets), default=0),
        "pending": waiting.count(),
        "due_now": waiting.filter(next_attempt_at__lte=now).count(),
        "dead": queue.filter(status=Delivery.Status.DEAD).count(),
    }


def _window_figures(
    recent, *, starts: list[datetime], hours: int
) -> tuple[list[dict[str, Any]], dict[str, int], list[dict[str, Any]]]:
    """Bars, totals per outcome and per-target figures from one read of the window's
    deliveries: counted in SQL per hour of the current zone, status and target (about
    25 x 5 x targets rows a day; one expression to group by keeps it a hash aggregate),
    added up into bars here. (The hour a DST change repeats comes back from SQL as one
    wall-clock hour: it counts in the first of its two hourly bars.)"""
    rows = (
        recent.annotate(hour=TruncHour("created_at", tzinfo=timezone.get_current_timezone()))
        .values("hour", "status", "target", "tenant_id", "partner_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    index = {start: i for i, start in enumerate(starts)}
    counts = [dict.fromkeys(DASHBOARD_OUTCOMES, 0) for _ in starts]
    per_target: dict[tuple[str, int, int | None], dict[str, int]] = {}
    for row in rows:
        outcome = _OUTCOME_OF.get(row["status"])
        i = index.get(_bar_start(row["hour"], hours))
        if outcome is None or i is None:  # (i: made after `now`, the next bar's)
            continue
        counts[i][outcome] += row["n"]
        key = (row["target"], row["tenant_id"], row["partner_id"])
        figures = per_target.setdefault(key, dict.fromkeys(DASHBOARD_OUTCOMES, 0))
        figures[outcome] += row["n"]
    ends = [*starts[1:], starts[-1] + timedelta(hours=hours)]
    bars = [
        {
            "start": timezone.localtime(start),
            "end": timezone.localtime(end),
            "counts": bar,
            "total": sum(bar.values()),
        }
        for start, end, bar in zip(starts, ends, counts, strict=True)
    ]
    totals = {outcome: sum(bar[outcome] for bar in counts) for outcome in DASHBOARD_OUTCOMES}
    return bars, totals, _target_rows(per_target)


def _target_rows(per_target: dict[tuple[str, int, int | None], dict[str, int]]):
    """The busiest DASHBOARD_TARGETS targets with their partner's and tenant's names."""
    busiest = sorted(per_target.items(), key=lambda kv: (-sum(kv[1].values()), kv[0][:2]))
    busiest = busiest[:DASHBOARD_TARGETS]
    partner_names = dict(
        Partner.objects.filter(pk__in={k[2] for k, _ in busiest if k[2]}).values_list("pk", "name")
    )
    tenant_names = dict(
        Tenant.objects.filter(pk__in={k[1] for k, _ in busiest}).values_list("pk", "name")
    )
    rows = []
    for (target, tenant_id, partner_id), figures in busiest:
        total = sum(figures.values())
        rows.append(
            {
                "target": target,
                "tenant_id": tenant_id,
                "partner_id": partner_id,
                # None for the engine relay and the operations URL
                "name": partner_names.get(partner_id) if partner_id else None,
                "tenant": tenant_names.get(tenant_id),
                "total": total,
                "succeeded": figures["succeeded"],
                "waiting": figures["waiting"],
                "dead": figures["dead"],
                "rate": figures["succeeded"] / total if total else None,
                "responses": 0,
                "sampled": total > LATENCY_SAMPLE_DELIVERIES,
                "p50_ms": None,
                "p95_ms": None,
            }
        )
    return rows


def _latencies(recent, targets: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """{(target, tenant id): responses, p50_ms, p95_ms} over the attempts that got an HTTP
    response (a timeout or a refused connection says nothing about the partner's speed) of
    the window's deliveries to `targets`; of a target with more than
    LATENCY_SAMPLE_DELIVERIES of them, of every n-th by id (n chosen per target)."""
    if not targets:
        return {}
    deliveries = recent.filter(
        target__in=sorted({row["target"] for row in targets}),
        attempts_log__response_status__isnull=False,
    )
    strides = [
        When(target=row["target"], tenant_id=row["tenant_id"], then=Value(stride))
        for row in targets
        if (stride := math.ceil(row["total"] / LATENCY_SAMPLE_DELIVERIES)) > 1
    ]
    if strides:
        # On the delivery's own columns, so it thins the deliveries before their attempts
        # are looked up.
        deliveries = deliveries.alias(
            sample=Mod("id", Case(*strides, default=Value(1), output_field=IntegerField()))
        ).filter(sample=0)
    figures: dict[tuple[str, int], dict[str, Any]] = {}
    if connections[deliveries.db].vendor == "postgresql":
        rows = (
            deliveries.values("target", "tenant_id")
            .annotate(
                responses=Count("attempts_log"),
                p50=PercentileCont("attempts_log__duration_ms", 0.50),
                p95=PercentileCont("attempts_log__duration_ms", 0.95),
            )
            .order_by()
        )
        for r in rows:
            figures[(r["target"], r["tenant_id"])] = {
                "responses": r["responses"],
                "p50_ms": round(r["p50"]),
                "p95_ms": round(r["p95"]),
            }
        return figures
    # Without percentile_cont (SQLite, the embedded default): the same figures, here.
    durations: dict[tuple[str, int], list[int]] = {}
    answered = deliveries.values_list("target", "tenant_id", "attempts_log__duration_ms")
    for target, tenant_id, duration_ms in answered:
        durations.setdefault((target, tenant_id), []).append(duration_ms)
    for key, values in durations.items():
        values.sort()
        p50, p95 = percentile_cont(values, 0.50), percentile_cont(values, 0.95)
        figures[key] = {
            "responses": len(values),
            "p50_ms": None if p50 is None else round(p50),
            "p95_ms": None if p95 is None else round(p95),
        }
    return figures


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
