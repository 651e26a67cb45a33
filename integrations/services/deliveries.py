"""Deliveries: claim with a lease, attempt over HTTP, record, schedule the next try.

The database is the source of truth (SPEC §5). A delivery is claimed with one conditional
UPDATE that also checks per-(target, ticket) order, so a duplicate queue message or a second
worker does nothing, and a lease that expired (a killed worker) is simply taken again. No
transaction is held across the HTTP call.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from integrations.delivery import DeliveryResult, OutboundPolicy, Outcome, send_webhook
from integrations.models import Delivery, DeliveryAttempt, Partner, SigningSecret
from integrations.payloads import canonical_json
from integrations.services import alerts
from integrations.services.events import engine_relay_for
from portal.env import parse_retry_schedule

logger = logging.getLogger(__name__)

STORED_BODY_BYTES = 8 * 1024
MAX_RETRY_AFTER = 10 * 3600
JITTER = 0.2


@functools.lru_cache(maxsize=8)
def _policy(entries: tuple[str, ...]) -> OutboundPolicy:
    return OutboundPolicy.from_setting(",".join(entries))


def outbound_policy() -> OutboundPolicy:
    """The SSRF policy from PORTAL_OUTBOUND_ALLOWLIST."""
    return _policy(tuple(settings.PORTAL_OUTBOUND_ALLOWLIST))


def retry_schedule_for(partner: Partner | None) -> tuple[int, ...]:
    """The partner's own schedule when set, else PORTAL_RETRY_SCHEDULE."""
    if partner is not None and partner.retry_schedule.strip():
        try:
            return parse_retry_schedule(partner.retry_schedule, name="retry schedule")
        except Exception:  # a bad override must not stop deliveries: use the default
            logger.warning("partner %s has an invalid retry schedule", partner.pk)
    return settings.PORTAL_RETRY_SCHEDULE


def _older_open_delivery() -> Exists:
    """An older, not yet final delivery of the same target and ticket (SPEC §5 order)."""
    return Exists(
        Delivery.objects.filter(
            target=OuterRef("target"), ticket_id=OuterRef("ticket_id"), id__lt=OuterRef("id")
        ).exclude(status__in=Delivery.FINAL_STATUSES)
    )


def _failing_partner_busy(now: datetime) -> Exists:
    """The delivery's partner is failing and already has an attempt in flight.

    A failing partner gets one attempt at a time: otherwise its timeouts would hold every
    worker slot and stall the deliveries of other partners and other tenants.
    """
    return Exists(
        Delivery.objects.filter(
            partner=OuterRef("partner"),
            partner__consecutive_failures__gt=0,
            status=Delivery.Status.DELIVERING,
            lease_expires_at__gte=now,
        )
    )


def _claimable(now: datetime) -> Q:
    due = Q(status__in=Delivery.WAITING_STATUSES, next_attempt_at__lte=now)
    lease_expired = Q(status=Delivery.Status.DELIVERING, lease_expires_at__lt=now)
    target_active = Q(partner__isnull=True) | Q(partner__state=Partner.State.ACTIVE)
    return (due | lease_expired) & target_active & ~_failing_partner_busy(now)


def delivery_claim(*, delivery_id: int, token: uuid.UUID, now: datetime) -> bool:
    """Take a due delivery for one attempt; True when this caller now holds its lease.

    The attempt count rises here, so a delivery whose worker dies mid-attempt still uses up
    its tries and ends `dead` instead of looping forever.
    """
    updated = (
        Delivery.objects.filter(_claimable(now), pk=delivery_id)
        .filter(~_older_open_delivery())
        .update(
            status=Delivery.Status.DELIVERING,
            lease_token=token,
            lease_expires_at=now + timedelta(seconds=settings.PORTAL_DELIVERY_LEASE_SECONDS),
            attempts=F("attempts") + 1,
            updated_at=now,
        )
    )
    return updated == 1


@dataclass(frozen=True)
class _Target:
    url: str
    secrets: list[str]
    bearer_token: str
    connect_timeout: float
    deadline: float


def _target_for(delivery: Delivery, now: datetime) -> _Target:
    partner = delivery.partner
    if partner is None:
        relay = engine_relay_for(delivery.tenant)
        return _Target(
            url=relay.url_for(delivery.endpoint),
            secrets=[delivery.tenant.engine_signing_secret],
            bearer_token=relay.token,
            connect_timeout=3.0,
            deadline=10.0,
        )
    path = (
        partner.incoming_message_path
        if delivery.endpoint == Delivery.Endpoint.INCOMING
        else partner.send_message_path
    )
    live = SigningSecret.objects.filter(partner=partner).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=now)
    )
    return _Target(
        url=partner.base_url.rstrip("/") + "/" + path.lstrip("/"),
        secrets=[s.secret for s in live],
        bearer_token="",
        connect_timeout=partner.connect_timeout,
        deadline=partner.timeout,
    )


def _next_delay(result: DeliveryResult, attempts: int, schedule: tuple[int, ...]) -> float | None:
    """Seconds until the next try, or None when the schedule is used up."""
    if attempts >= len(schedule):
        return None
    delay = schedule[attempts] * random.uniform(1 - JITTER, 1 + JITTER)
    if result.retry_after is not None and result.retry_after > delay:
        delay = min(result.retry_after, MAX_RETRY_AFTER)
    return delay


def delivery_attempt(*, delivery_id: int) -> str:
    """Claim a delivery and make one HTTP attempt; record it and decide what comes next.

    Returns the outcome ("succeeded", "retrying", "dead", "not_configured"); "not_claimed"
    when the delivery is not due, is held back by an older one, or another worker has it;
    "lease_lost" when the attempt outlived its lease and another worker took the delivery
    over (the attempt is recorded; the other worker's outcome stands).
    Side effects: one DeliveryAttempt row, the delivery's new status, the partner's health;
    when the delivery became final, the next one of its (target, ticket) is queued.
    """
    token = uuid.uuid4()
    now = timezone.now()
    if not delivery_claim(delivery_id=delivery_id, token=token, now=now):
        return "not_claimed"
    delivery = Delivery.objects.select_related("event", "partner", "tenant").get(pk=delivery_id)
    schedule = retry_schedule_for(delivery.partner)
    if delivery.attempts - delivery.retry_base > len(schedule):
        # The previous holder died after taking the last try; nothing is sent again.
        finished = _finish(
            delivery,
            token,
            Delivery.Status.DEAD,
            error="Attempts used up (a worker was lost during the last one).",
        )
        if finished and delivery.partner_id is not None:
            # Counts as a failure: a partner that hangs until workers die still gets paused
            # in time and its admins still hear of dead deliveries.
            lost = DeliveryResult(
                outcome=Outcome.DEAD,
                status_code=None,
                request_headers={},
                response_headers={},
                response_body=b"",
                duration_ms=0,
                error_class="worker_lost",
                error_message="A worker was lost during the last attempt.",
                retry_after=None,
                gone=False,
            )
            if _partner_health_update(delivery.partner_id, lost, now):
                alerts.partner_paused_alert(partner_id=delivery.partner_id)
            alerts.deliveries_dead_alert(partner_id=delivery.partner_id, now=now)
        return Delivery.Status.DEAD
    target = _target_for(delivery, now)
    if not target.url:
        _finish(
            delivery, token, Delivery.Status.NOT_CONFIGURED, error="No engine relay is configured."
        )
        return Delivery.Status.NOT_CONFIGURED
    try:
        result = send_webhook(
            url=target.url,
            body=canonical_json(delivery.event.payload),
            msg_id=str(delivery.event_id),
            secrets=target.secrets,
            policy=outbound_policy(),
            bearer_token=target.bearer_token,
            connect_timeout=target.connect_timeout,
            deadline=target.deadline,
        )
    except ValueError as exc:
        # A configuration problem (no usable signing secret, say): retrying cannot fix it,
        # so the delivery is dead with the reason recorded, not left leased.
        result = DeliveryResult(
            outcome=Outcome.DEAD,
            status_code=None,
            request_headers={},
            response_headers={},
            response_body=b"",
            duration_ms=0,
            error_class="configuration_error",
            error_message=str(exc)[:1000],
            retry_after=None,
            gone=False,
        )
    return _record(delivery, token, target.url, result, schedule)


def _storable_text(text: str) -> str:
    # PostgreSQL text and jsonb refuse NUL, and a partner's answer (body, headers, a garbled
    # status line quoted in an error) may well contain it: store U+FFFD in its place.
    return text.replace("\x00", "\ufffd")


def _url_for_storage(url: str) -> str:
    """The URL without the password of credentials written into it (user:password@host):
    they travel as an Authorization header, which is never stored either."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{netloc}"))


def _storable(result: DeliveryResult) -> DeliveryResult:
    return dataclasses.replace(
        result,
        response_headers={
            _storable_text(k): _storable_text(v) for k, v in result.response_headers.items()
        },
        error_message=_storable_text(result.error_message),
    )


def _record(
    delivery: Delivery,
    token: uuid.UUID,
    url: str,
    result: DeliveryResult,
    schedule: tuple[int, ...],
) -> str:
    now = timezone.now()
    result = _storable(result)
    error = result.error_message or (
        f"HTTP {result.status_code}" if result.outcome != Outcome.SUCCESS else ""
    )
    if result.outcome == Outcome.SUCCESS:
        status, next_at = Delivery.Status.SUCCEEDED, None
    else:
        tries = delivery.attempts - delivery.retry_base
        delay = _next_delay(result, tries, schedule) if (result.outcome == Outcome.RETRY) else None
        if delay is None:
            status, next_at = Delivery.Status.DEAD, None
        else:
            status, next_at = Delivery.Status.RETRYING, now + timedelta(seconds=delay)
    with transaction.atomic():
        DeliveryAttempt.objects.create(
            delivery=delivery,
            number=delivery.attempts,
            url=_url_for_storage(url),
            request_headers=result.request_headers,
            response_status=result.status_code,
            response_headers=result.response_headers,
            response_body=_storable_text(
                result.response_body[:STORED_BODY_BYTES].decode("utf-8", "replace")
            ),
            duration_ms=result.duration_ms,
            outcome=result.outcome,
            error_class=result.error_class,
            error_message=result.error_message[:1000],
        )
        still_ours = Delivery.objects.filter(pk=delivery.pk, lease_token=token).update(
            status=status,
            next_attempt_at=next_at,
            lease_token=None,
            lease_expires_at=None,
            dispatched_at=None,
            last_status_code=result.status_code,
            last_error=error[:500],
            delivered_at=now if status == Delivery.Status.SUCCEEDED else None,
            updated_at=now,
        )
        if not still_ours:
            # The lease ran out mid-attempt and another worker holds the delivery now: this
            # attempt is recorded, but the outcome is the other worker's to apply.
            return "lease_lost"
        if status in Delivery.FINAL_STATUSES:
            _queue_next_in_order(delivery)
    # The partner's counters in their own short statement after the commit: inside the
    # transaction its row lock made every worker delivering to that partner queue behind the
    # others (bench/delivery.py). A crash in between leaves one attempt out of the counters.
    paused_now = False
    if delivery.partner_id is not None:
        paused_now = _partner_health_update(delivery.partner_id, result, now)
    # Mail after the commit: an SMTP hiccup must not undo what was recorded.
    if paused_now:
        alerts.partner_paused_alert(partner_id=delivery.partner_id)
    if status == Delivery.Status.DEAD and delivery.partner_id is not None:
        alerts.deliveries_dead_alert(partner_id=delivery.partner_id, now=now)
    return status


def _finish(delivery: Delivery, token: uuid.UUID, status: str, *, error: str) -> bool:
    """Make a leased delivery final without an attempt; False when the lease was lost."""
    with transaction.atomic():
        still_ours = Delivery.objects.filter(pk=delivery.pk, lease_token=token).update(
            status=status,
            next_attempt_at=None,
            lease_token=None,
            lease_expires_at=None,
            last_error=error,
            updated_at=timezone.now(),
        )
        if still_ours:
            _queue_next_in_order(delivery)
    return bool(still_ours)


def _queue_next_in_order(delivery: Delivery) -> None:
    """When a delivery becomes final, the next one of its (target, ticket) goes at once."""
    next_id = (
        Delivery.objects.filter(
            target=delivery.target, ticket_id=delivery.ticket_id, id__gt=delivery.pk
        )
        .exclude(status__in=Delivery.FINAL_STATUSES)
        .order_by("id")
        .values_list("id", flat=True)
        .first()
    )
    if next_id is not None:
        from integrations.tasks import deliveries_enqueue

        Delivery.objects.filter(pk=next_id).update(dispatched_at=timezone.now())
        transaction.on_commit(lambda: deliveries_enqueue([next_id]), robust=True)


def _partner_health_update(partner_id: int, result: DeliveryResult, now: datetime) -> bool:
    """Keep the partner's counters; pause it on 410 or after failing for too long.

    Returns True when this update paused the partner.
    """
    partners = Partner.objects.filter(pk=partner_id)
    if result.outcome == Outcome.SUCCESS:
        partners.update(
            consecutive_failures=0,
            failing_since=None,
            last_success_at=now,
            success_count=F("success_count") + 1,
            latency_ms_avg=Coalesce(
                F("latency_ms_avg") * 0.8 + result.duration_ms * 0.2, float(result.duration_ms)
            ),
        )
        return False
    partners.update(
        consecutive_failures=F("consecutive_failures") + 1,
        failing_since=Coalesce(F("failing_since"), now),
        last_failure_at=now,
        failure_count=F("failure_count") + 1,
        last_error=(result.error_message or f"HTTP {result.status_code}")[:500],
    )
    if result.gone:
        return partner_pause(
            partner_id=partner_id, reason="The partner answered 410 Gone.", now=now
        )
    # failing_since is cleared by every success, so it marks the start of an unbroken run of
    # failures; a run longer than PORTAL_PARTNER_PAUSE_AFTER pauses the partner.
    limit = now - timedelta(seconds=settings.PORTAL_PARTNER_PAUSE_AFTER)
    if partners.filter(failing_since__lte=limit).exists():
        return partner_pause(
            partner_id=partner_id,
            now=now,
            reason="Every attempt failed for longer than PORTAL_PARTNER_PAUSE_AFTER.",
        )
    return False


def partner_pause(*, partner_id: int, reason: str, now: datetime) -> bool:
    """Pause an active partner automatically; its deliveries wait until it is resumed.

    Returns True when this call paused it.
    """
    paused = Partner.objects.filter(pk=partner_id, state=Partner.State.ACTIVE).update(
        state=Partner.State.PAUSED, state_reason=reason, state_changed_at=now
    )
    if paused:
        logger.warning("partner %s paused: %s", partner_id, reason)
    return bool(paused)


def deliveries_due(*, now: datetime, limit: int = 500) -> list[int]:
    """Ids of deliveries to queue now: due or with an expired lease, not queued recently,
    their target active, and no older delivery of the same target and ticket open."""
    stale = now - timedelta(seconds=settings.PORTAL_REDISPATCH_AFTER)
    not_recently_queued = Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=stale)
    return list(
        Delivery.objects.filter(_claimable(now), not_recently_queued)
        .filter(~_older_open_delivery())
        .order_by("next_attempt_at", "id")
        .values_list("id", flat=True)[:limit]
    )


def deliveries_mark_dispatched(*, ids: list[int], now: datetime) -> None:
    Delivery.objects.filter(pk__in=ids).update(dispatched_at=now)
