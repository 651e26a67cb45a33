"""Deliveries: claim with a lease, attempt over HTTP, record, schedule the next try.

The database is the source of truth (SPEC §5). Deliveries are claimed in batches with one
conditional UPDATE that also checks per-(target, ticket) order (delivery_queue.py, re-exported
here), so a duplicate queue message or a second worker does nothing, and a lease that expired
(a killed worker) is simply taken again.
A batch is sent one request after the other and recorded in one transaction; no transaction is
held across an HTTP call. Batches are what makes a backlog cheap to drain (bench/delivery.py):
the claim, the attempt rows, the status updates and the partner's counters cost a few
statements per batch instead of per delivery.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from integrations.delivery import DeliveryResult, send_webhook
from integrations.models import Delivery, DeliveryAttempt, Partner, SigningSecret
from integrations.payloads import canonical_json
from integrations.services import alerts
from integrations.services.delivery_queue import (
    batch_key,
    batches_by_target,
    claim_ids,
    deliveries_claim,
    deliveries_claim_more,
    deliveries_dispatch,
    deliveries_due,
    delivery_claim,
    enqueue,
    queue_next_in_order,
)
from integrations.services.events import engine_relay_for
from integrations.services.partner_health import (
    partner_failure,
    partner_pause,
    partner_successes,
)
from integrations.ssrf import OutboundPolicy
from integrations.webhooks import Outcome
from portal.env import parse_retry_schedule

__all__ = [
    "batches_by_target",
    "deliveries_attempt",
    "deliveries_claim",
    "deliveries_claim_more",
    "deliveries_dispatch",
    "deliveries_due",
    "delivery_attempt",
    "delivery_claim",
    "enqueue",
    "outbound_policy",
    "partner_pause",
    "queue_next_in_order",
    "retry_schedule_for",
]

logger = logging.getLogger(__name__)

STORED_BODY_BYTES = 8 * 1024
# Seconds a batch's requests are recorded together; past that, each one as soon as it is sent.
RECORD_EVERY = 0.25
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


# --- attempting ------------------------------------------------------------------------------


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


@dataclass
class _Done:
    """What became of one claimed delivery, to be recorded with the rest of its batch."""

    delivery: Delivery
    status: str
    error: str
    next_at: datetime | None = None
    result: DeliveryResult | None = None  # None: finished without sending (nothing to record)
    url: str = ""


def _unanswered(error_class: str, message: str) -> DeliveryResult:
    """A dead outcome with no answer from the target (nothing was received)."""
    return DeliveryResult(
        outcome=Outcome.DEAD,
        status_code=None,
        request_headers={},
        response_headers={},
        response_body=b"",
        duration_ms=0,
        error_class=error_class,
        error_message=message[:1000],
        retry_after=None,
        gone=False,
    )


_LOST_WORKER = _unanswered("worker_lost", "A worker was lost during the last attempt.")


def _attempt(delivery: Delivery, target: _Target, schedule: tuple[int, ...]) -> _Done:
    """Send one claimed delivery and decide its new status (nothing is written here)."""
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
        result = _unanswered("configuration_error", str(exc))
    result = _storable(result)
    now = timezone.now()
    error = result.error_message or (
        f"HTTP {result.status_code}" if result.outcome != Outcome.SUCCESS else ""
    )
    status, next_at = Delivery.Status.SUCCEEDED, None
    if result.outcome != Outcome.SUCCESS:
        tries = delivery.attempts - delivery.retry_base
        delay = _next_delay(result, tries, schedule) if result.outcome == Outcome.RETRY else None
        if delay is None:
            status = Delivery.Status.DEAD
        else:
            status, next_at = Delivery.Status.RETRYING, now + timedelta(seconds=delay)
    return _Done(delivery, status, error, next_at=next_at, result=result, url=target.url)


def delivery_attempt(*, delivery_id: int) -> str:
    """Claim one delivery and make one HTTP attempt; record it and decide what comes next.

    Returns the outcome ("succeeded", "retrying", "dead", "not_configured"); "not_claimed"
    when the delivery is not due, is held back by an older one, or another worker has it;
    "lease_lost" when the attempt outlived its lease and another worker took the delivery
    over (the attempt is recorded; the other worker's outcome stands).
    """
    return deliveries_attempt(delivery_ids=[delivery_id])[delivery_id]


def deliveries_attempt(*, delivery_ids: Sequence[int], top_up: bool = False) -> dict[int, str]:
    """Claim these deliveries and make one attempt of each; returns each id's outcome (as
    `delivery_attempt`, or "handed_back": claimed, not tried, waiting again).

    Side effects: one DeliveryAttempt row per request sent, the deliveries' new status, the
    partners' health; when a delivery became final, the next one of its (target, ticket) is
    queued. Requests go one after the other; after a target's first failure its other
    deliveries of the batch are handed back untried (a failing partner gets one attempt at a
    time), and so is whatever would not finish within half the lease. With `top_up` (the
    queue's tasks), a batch of one partner smaller than PORTAL_DELIVERY_BATCH is filled up
    with that partner's oldest new deliveries (`deliveries_claim_more`); those appear in the
    result too.

    What was sent is recorded together while the batch is quick; once it has run for
    RECORD_EVERY seconds, after every request. So a slow partner's next message of a ticket
    is not held up by the rest of the batch, and a worker killed mid-batch has at most that
    much sent and not recorded (to be sent again). If anything fails mid-batch, what was sent
    is recorded and the rest handed back before the error goes on.
    """
    ids = list(dict.fromkeys(int(pk) for pk in delivery_ids))
    outcomes = dict.fromkeys(ids, "not_claimed")
    token, now, started = uuid.uuid4(), timezone.now(), time.monotonic()
    rows = claim_ids(ids, token, now)
    if not rows:
        return outcomes
    taken = [pk for pk, _ in rows]
    partners = {partner_id for _, partner_id in rows}
    room = settings.PORTAL_DELIVERY_BATCH - len(taken)
    if top_up and room > 0 and len(partners) == 1 and None not in partners:
        more = deliveries_claim_more(partner_id=partners.pop(), limit=room, token=token, now=now)
        taken += more
        outcomes.update(dict.fromkeys(more, "not_claimed"))
    claimed = list(
        Delivery.objects.select_related("event", "partner", "tenant")
        .filter(pk__in=taken, lease_token=token)
        .order_by("id")
    )
    budget = settings.PORTAL_DELIVERY_LEASE_SECONDS / 2  # counted from before the claim
    targets: dict[tuple, _Target] = {}
    done: list[_Done] = []
    handed_back: list[Delivery] = []
    failed: set[str] = set()
    sent = 0
    position = 0
    try:
        for position, delivery in enumerate(claimed):  # noqa: B007 (read in `finally`)
            key = batch_key(delivery.target, delivery.tenant_id)
            schedule = retry_schedule_for(delivery.partner)
            if delivery.attempts - delivery.retry_base > len(schedule):
                # The previous holder died after taking the last try; nothing is sent again.
                error = "Attempts used up (a worker was lost during the last one)."
                done.append(_Done(delivery, Delivery.Status.DEAD, error))
                continue
            target_key = (delivery.target, delivery.tenant_id, delivery.endpoint)
            if target_key not in targets:
                targets[target_key] = _target_for(delivery, now)
            target = targets[target_key]
            if not target.url:
                error = "No engine relay is configured."
                done.append(_Done(delivery, Delivery.Status.NOT_CONFIGURED, error))
                continue
            elapsed = time.monotonic() - started
            if key in failed or (sent and elapsed + target.deadline > budget):
                handed_back.append(delivery)
                continue
            outcome = _attempt(delivery, target, schedule)
            sent += 1
            done.append(outcome)
            if outcome.status != Delivery.Status.SUCCEEDED:
                failed.add(key)
            if time.monotonic() - started > RECORD_EVERY:
                outcomes.update(_record(token, done))
                done = []
        position = len(claimed)
    finally:
        # After an error at claimed[position], the ones after it were never tried. That one
        # keeps its lease: if it breaks every worker, its tries run out (see above).
        untried = claimed[position + 1 :]
        try:
            if done:
                outcomes.update(_record(token, done))
        finally:
            _hand_back(token, handed_back + untried)
    outcomes.update(dict.fromkeys((d.pk for d in handed_back), "handed_back"))
    return outcomes


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


# --- recording ---------------------------------------------------------------------------------


def _attempt_row(done: _Done) -> DeliveryAttempt:
    result = done.result
    assert result is not None
    return DeliveryAttempt(
        delivery=done.delivery,
        number=done.delivery.attempts,
        url=_url_for_storage(done.url),
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


def _changes(done: _Done, now: datetime) -> tuple[tuple[str, object], ...]:
    """The columns one finished attempt sets; deliveries with equal changes share an UPDATE
    (so `delivered_at` is the time the batch was recorded, as is its attempts' `created_at`)."""
    changes: dict[str, object] = {
        "status": done.status,
        "next_attempt_at": done.next_at,
        "last_error": done.error[:500],
    }
    if done.result is not None:
        changes["last_status_code"] = done.result.status_code
        changes["dispatched_at"] = None
        changes["delivered_at"] = now if done.status == Delivery.Status.SUCCEEDED else None
    return tuple(changes.items())


def _record(token: uuid.UUID, done: list[_Done]) -> dict[int, str]:
    """Write a batch's attempts and outcomes in one transaction; then the partners' health
    and the alerts. A delivery whose lease ran out mid-attempt (another worker holds it now)
    gets its attempt recorded, but the outcome is the other worker's to apply: "lease_lost".
    """
    if not done:
        return {}
    now = timezone.now()
    outcomes: dict[int, str] = {}
    with transaction.atomic():
        ours = set(
            Delivery.objects.select_for_update()
            .filter(pk__in=[d.delivery.pk for d in done], lease_token=token)
            .values_list("pk", flat=True)
        )
        attempts = [_attempt_row(d) for d in done if d.result is not None]
        if attempts:
            DeliveryAttempt.objects.bulk_create(attempts)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for d in done:
            outcomes[d.delivery.pk] = d.status if d.delivery.pk in ours else "lease_lost"
            if d.delivery.pk in ours:
                groups[_changes(d, now)].append(d.delivery.pk)
        for changes, pks in groups.items():
            Delivery.objects.filter(pk__in=pks).update(
                **dict(changes), lease_token=None, lease_expires_at=None, updated_at=now
            )
        finished = [d.delivery for d in done if d.status in Delivery.FINAL_STATUSES]
        queue_next_in_order([delivery for delivery in finished if delivery.pk in ours])
    _health_and_alerts([d for d in done if d.delivery.pk in ours], now)
    return outcomes


def _health_and_alerts(done: list[_Done], now: datetime) -> None:
    """Each partner's counters, in the order of its attempts; mail after the commit, so an
    SMTP hiccup cannot undo what was recorded."""
    by_partner: dict[int, list[_Done]] = defaultdict(list)
    for d in done:
        if d.delivery.partner_id is not None and (d.result is not None or d.status == "dead"):
            by_partner[d.delivery.partner_id].append(d)
    for partner_id, rows in by_partner.items():
        paused, successes = False, []
        for d in rows:
            if d.result is not None and d.result.outcome == Outcome.SUCCESS:
                successes.append(d.result.duration_ms)
                continue
            partner_successes(partner_id, successes, now)
            successes = []
            # A delivery whose worker died during its last try counts as a failure too: a
            # partner that hangs until workers die still gets paused in time.
            paused |= partner_failure(partner_id, d.result or _LOST_WORKER, now)
        partner_successes(partner_id, successes, now)
        if paused:
            alerts.partner_paused_alert(partner_id=partner_id)
        if any(d.status == Delivery.Status.DEAD for d in rows):
            alerts.deliveries_dead_alert(partner_id=partner_id, now=now)


def _hand_back(token: uuid.UUID, deliveries: list[Delivery]) -> None:
    """Return claimed deliveries that were not tried: the attempt taken by the claim is given
    back and the dispatcher queues them again on its next run."""
    if not deliveries:
        return
    first_try = Q(attempts__lte=F("retry_base") + 1)
    Delivery.objects.filter(pk__in=[d.pk for d in deliveries], lease_token=token).update(
        status=Case(
            When(first_try, then=Value(Delivery.Status.PENDING)),
            default=Value(Delivery.Status.RETRYING),
        ),
        attempts=F("attempts") - 1,
        lease_token=None,
        lease_expires_at=None,
        dispatched_at=None,
        updated_at=timezone.now(),
    )
