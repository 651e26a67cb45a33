"""A partner's health counters (SPEC §5 "Partner state") and its automatic pause.

Updated after a batch's transaction, in short statements of their own: inside it, the
partner's row lock made every worker delivering to that partner queue behind the others
(bench/delivery.py). A crash in between leaves those attempts out of the counters.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Coalesce

from integrations.delivery import DeliveryResult
from integrations.models import Partner
from integrations.outbox import queue
from integrations.outbox.notices import PARTNER_PAUSED, notice_queue

logger = logging.getLogger(__name__)

# Weight of the newest attempt in the latency average (an exponentially weighted mean).
LATENCY_WEIGHT = 0.2
# An average below this (ms) is taken as 0 before it decays further: a long run of 0 ms
# attempts would otherwise shrink it towards the smallest float, and PostgreSQL refuses a
# product that underflows ("value out of range: underflow").
LATENCY_FLOOR_MS = 0.001


def latency_fold(average: float | None, durations: Sequence[int]) -> float | None:
    """The latency average after these attempts, oldest first (None stays None when empty)."""
    for duration in durations:
        average = (
            float(duration)
            if average is None
            else average * (1 - LATENCY_WEIGHT) + duration * LATENCY_WEIGHT
        )
    return average


def partner_successes(partner_id: int, durations: Sequence[int], now: datetime) -> None:
    """Count successful attempts (oldest first) in one UPDATE: the failing run ends."""
    if not durations:
        return
    queue.partner_successes_add(partner_successes_fold(partner_id, durations), now)


def partner_successes_fold(partner_id: int, durations: Sequence[int]) -> queue.Successes:
    """What counting these successful attempts (oldest first) adds to the partner's counters:
    average * keep + added is latency_fold(average, durations) for any starting average."""
    keep = (1 - LATENCY_WEIGHT) ** len(durations)
    return queue.Successes(
        partner_id=partner_id,
        count=len(durations),
        keep=keep if keep > 1e-300 else 0.0,
        added=float(latency_fold(0.0, durations) or 0.0),
        first=float(latency_fold(None, durations) or 0.0),
        floor=LATENCY_FLOOR_MS,
    )


def partner_failure(partner_id: int, result: DeliveryResult, now: datetime) -> bool:
    """Count one failed attempt; pause the partner on 410 or after failing for too long.

    Returns True when this update paused the partner.
    """
    partners = Partner.objects.filter(pk=partner_id)
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
    """Pause an active partner automatically; its deliveries wait until it is resumed. The
    tenant's operations URL is told (`partner.paused`) in the same transaction.

    Returns True when this call paused it.
    """
    with transaction.atomic():
        paused = Partner.objects.filter(pk=partner_id, state=Partner.State.ACTIVE).update(
            state=Partner.State.PAUSED, state_reason=reason, state_changed_at=now
        )
        if paused:
            tenant_id = Partner.objects.values_list("tenant_id", flat=True).get(pk=partner_id)
            notice_queue(
                tenant_id=tenant_id,
                kind=PARTNER_PAUSED,
                partner_id=partner_id,
                reason=reason,
                now=now,
            )
    if paused:
        logger.warning(
            "partner %s paused: %s", partner_id, reason, extra={"partner_id": partner_id}
        )
    return bool(paused)
