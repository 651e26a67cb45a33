"""Manual operations for admins and support staff: redeliver, recover, cancel, resume,
disable, send a test event (SPEC §5 "Manual"), and retention."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from integrations.delivery import send_webhook
from integrations.errors import Conflict
from integrations.models import Delivery, Event, Partner, Tenant
from integrations.outbox.notices import PARTNER_RESUMED, notice_queue
from integrations.outbox.queue import queue_next_in_order
from integrations.outbox.targets import (
    delivery_client,
    outbound_policy,
    partner_target,
    relay_url,
)
from integrations.payloads import canonical_json, format_created_date
from integrations.services.idempotency import idempotency_prune

RETENTION_BATCH = 500


def _restart(queryset, now: datetime) -> int:
    """Put final deliveries back to pending with a fresh retry schedule."""
    return queryset.update(
        status=Delivery.Status.PENDING,
        next_attempt_at=now,
        dispatched_at=None,
        retry_base=F("attempts"),
        lease_token=None,
        lease_expires_at=None,
        delivered_at=None,
        updated_at=now,
    )


def delivery_redeliver(*, delivery: Delivery) -> Delivery:
    """Send a final delivery again (same webhook-id), with a fresh retry schedule.

    It keeps its place in its ticket's order. A `not_configured` relay delivery can be sent
    once the engine relay is configured. Raises Conflict if it is not final yet, or is an
    engine relay with still no engine configured.
    """
    if delivery.status == Delivery.Status.NOT_CONFIGURED:
        if delivery.target == Delivery.OPERATIONS_TARGET:
            if not delivery.tenant.operations_url:
                raise Conflict("Set the tenant's operations URL first.", code="not_configured")
        elif not relay_url(delivery.tenant, delivery.endpoint):
            raise Conflict("Configure the engine relay first.", code="not_configured")
    now = timezone.now()
    restarted = _restart(
        Delivery.objects.filter(pk=delivery.pk, status__in=Delivery.FINAL_STATUSES), now
    )
    if not restarted:
        raise Conflict("Only a finished delivery can be redelivered.", code="not_final")
    delivery.refresh_from_db()
    return delivery


def deliveries_recover(*, partner: Partner, since: datetime, until: datetime) -> int:
    """Restart every dead delivery of a partner created in [since, until).

    They go out in their original order (per ticket, oldest first). Returns how many.
    """
    return _restart(
        Delivery.objects.filter(
            partner=partner,
            status=Delivery.Status.DEAD,
            created_at__gte=since,
            created_at__lt=until,
        ),
        timezone.now(),
    )


def delivery_cancel(*, delivery: Delivery) -> Delivery:
    """Stop a waiting delivery for good; the next one of its ticket goes on.

    Raises Conflict when it is final already or an attempt is in flight.
    """
    with transaction.atomic():
        cancelled = Delivery.objects.filter(
            pk=delivery.pk, status__in=Delivery.WAITING_STATUSES
        ).update(
            status=Delivery.Status.CANCELLED,
            next_attempt_at=None,
            last_error="Cancelled by an operator.",
            updated_at=timezone.now(),
        )
        if not cancelled:
            raise Conflict(
                "Only a pending or retrying delivery can be cancelled.", code="not_cancellable"
            )
        queue_next_in_order([delivery])
    delivery.refresh_from_db()
    return delivery


def partner_resume(*, partner: Partner) -> Partner:
    """Make a paused or disabled partner active again; its waiting deliveries then go out
    in per-ticket order (the dispatcher picks them up at once)."""
    now = timezone.now()
    with transaction.atomic():
        # (locked: a pause committing meanwhile is seen, and told of, before this resume)
        state = (
            Partner.objects.select_for_update()
            .filter(pk=partner.pk)
            .values_list("state", flat=True)
        )
        was_paused = state.first() == Partner.State.PAUSED
        Partner.objects.filter(pk=partner.pk).update(
            state=Partner.State.ACTIVE,
            state_reason="",
            state_changed_at=now,
            consecutive_failures=0,
            failing_since=None,
        )
        Delivery.objects.filter(partner=partner, status__in=Delivery.WAITING_STATUSES).update(
            dispatched_at=None, next_attempt_at=now
        )
        if was_paused:  # the operations URL was told of the pause: it hears of the resume
            notice_queue(
                tenant_id=partner.tenant_id,
                kind=PARTNER_RESUMED,
                partner_id=partner.pk,
                reason="Resumed by an admin.",
                now=now,
            )
    partner.refresh_from_db()
    return partner


def partner_disable(*, partner: Partner, reason: str = "") -> Partner:
    """Disable a partner by an admin: its API calls get 403 and nothing is sent to it."""
    Partner.objects.filter(pk=partner.pk).update(
        state=Partner.State.DISABLED,
        state_reason=reason or "Disabled by an admin.",
        state_changed_at=timezone.now(),
    )
    partner.refresh_from_db()
    return partner


@dataclass(frozen=True)
class ProbeResult:
    url: str
    status_code: int | None
    outcome: str
    latency_ms: int
    response_excerpt: str
    error: str


def partner_send_test_event(*, partner: Partner) -> ProbeResult:
    """Send one synchronous, signed test event to the partner's incoming-message path.

    Nothing is stored; returns what the partner answered.
    """
    tenant = partner.tenant
    now = timezone.now()
    payload = {
        "ticketNumber": f"test-{uuid.uuid4().hex[:12]}",
        "channel": "webchat",
        "accountId": "test-account",
        "contactId": "test-contact",
        "messageType": "text",
        "message": "Test event from the Integration Portal",
        "mediaLink": "",
        "customerName": "Test Customer",
        "createdDate": format_created_date(now, tenant.time_zone),
        "owner": tenant.owner,
        "groupId": "",
        "language": "",
    }
    target = partner_target(partner, Delivery.Endpoint.INCOMING, now)
    url = target.url
    started = time.monotonic()
    try:
        result = send_webhook(
            url=url,
            body=canonical_json(payload),
            msg_id=f"test_{uuid.uuid4()}",
            secrets=list(target.secrets),
            policy=outbound_policy(),
            connect_timeout=target.connect_timeout,
            deadline=target.deadline,
            client=delivery_client(),
        )
    except ValueError as exc:  # nothing valid to sign with: say so instead of failing
        return ProbeResult(
            url=url,
            status_code=None,
            outcome="dead",
            latency_ms=0,
            response_excerpt="",
            error=f"Not sent: {exc}",
        )
    return ProbeResult(
        url=url,
        status_code=result.status_code,
        outcome=str(result.outcome),
        latency_ms=result.duration_ms or int((time.monotonic() - started) * 1000),
        response_excerpt=result.response_body[:2000].decode("utf-8", "replace"),
        error=result.error_message,
    )


def events_prune(
    *, now: datetime | None = None, batch: int = RETENTION_BATCH, max_batches: int = 1000
) -> int:
    """Delete events older than their tenant's retention whose deliveries are all final,
    then the Idempotency-Key records older than 24 h.

    Works in small batches (each its own short transaction) so it never locks the tables for
    long. Returns how many events were deleted.
    """
    now = now or timezone.now()
    unfinished = Delivery.objects.filter(event=OuterRef("pk")).exclude(
        status__in=Delivery.FINAL_STATUSES
    )
    deleted = 0
    for tenant in Tenant.objects.only("pk", "retention_days"):
        cutoff = now - timedelta(days=tenant.retention_days)
        for _ in range(max_batches):
            ids = list(
                Event.objects.filter(tenant=tenant, received_at__lt=cutoff)
                .filter(~Exists(unfinished))
                .values_list("pk", flat=True)[:batch]
            )
            if not ids:
                break
            with transaction.atomic():
                Event.objects.filter(pk__in=ids).filter(~Exists(unfinished)).delete()
            deleted += len(ids)
    idempotency_prune(now=now)
    return deleted
