"""Sending a batch: claim, send one request after the other, record (SPEC §5).

A task hands the sender a batch of delivery ids. The sender claims those that may go now
(and, from a task, tops the batch up with the partner's oldest new deliveries), sends them
over the process's pooled connection and records what happened. Batches make a backlog cheap
to drain: the claim, the attempt rows, the status updates and the partner's counters cost a
few statements per batch instead of per delivery (bench/delivery.py).
"""

from __future__ import annotations

import random
import time
import uuid
from collections import deque
from collections.abc import Sequence
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from integrations.delivery import DeliveryResult, send_webhook
from integrations.models import Delivery
from integrations.outbox.queue import (
    batch_key,
    deliveries_claim,
    deliveries_claim_more,
    deliveries_hand_back,
)
from integrations.outbox.record import (
    Finished,
    SendResult,
    batch_record,
    storable,
    unanswered,
)
from integrations.outbox.targets import Target, delivery_target, outbound_policy, retry_schedule
from integrations.payloads import canonical_json
from integrations.webhooks import Outcome

# Seconds a batch's requests are recorded together; past that, each one as soon as it is
# answered, so a slow partner's next message of a ticket is not held up by the batch.
RECORD_EVERY = 0.25
MAX_RETRY_AFTER = 10 * 3600
JITTER = 0.2


def next_delay(result: DeliveryResult, tries: int, schedule: Sequence[int]) -> float | None:
    """Seconds until the next try after `tries` tries of the current schedule, or None when
    the schedule is used up. ±JITTER around the scheduled delay; a longer Retry-After wins,
    capped at MAX_RETRY_AFTER."""
    if tries >= len(schedule):
        return None
    delay = schedule[tries] * random.uniform(1 - JITTER, 1 + JITTER)
    if result.retry_after is not None and result.retry_after > delay:
        delay = min(result.retry_after, MAX_RETRY_AFTER)
    return delay


def delivery_send(delivery: Delivery, target: Target, schedule: Sequence[int]) -> Finished:
    """Send one claimed delivery and decide its new status (nothing is written here)."""
    try:
        result = send_webhook(
            url=target.url,
            body=canonical_json(delivery.event.payload),
            msg_id=str(delivery.event_id),
            secrets=list(target.secrets),
            policy=outbound_policy(),
            bearer_token=target.bearer_token,
            connect_timeout=target.connect_timeout,
            deadline=target.deadline,
        )
    except ValueError as exc:
        # A configuration problem (no usable signing secret, say): retrying cannot fix it,
        # so the delivery is dead with the reason recorded, not left leased.
        result = unanswered("configuration_error", str(exc))
    result = storable(result)
    if result.outcome == Outcome.SUCCESS:
        return Finished(delivery, Delivery.Status.SUCCEEDED, "", result=result, url=target.url)
    error = result.error_message or f"HTTP {result.status_code}"
    tries = delivery.attempts - delivery.retry_base
    delay = next_delay(result, tries, schedule) if result.outcome == Outcome.RETRY else None
    if delay is None:
        return Finished(delivery, Delivery.Status.DEAD, error, result=result, url=target.url)
    next_at = timezone.now() + timedelta(seconds=delay)
    return Finished(
        delivery, Delivery.Status.RETRYING, error, next_at=next_at, result=result, url=target.url
    )


class Batch:
    """Claimed deliveries on their way out: `send_next` sends (or sets aside) the next one,
    `record` writes what was sent, `hand_back_rest` gives back what was not tried.

    After a target's first failure its other deliveries are handed back untried (a failing
    partner gets one attempt at a time), and so is whatever would not finish within half
    the lease (counted from `started`, before the claim).
    """

    def __init__(self, token: uuid.UUID, deliveries: Sequence[Delivery], started: float) -> None:
        self.token = token
        self.started = started
        self.budget = settings.PORTAL_DELIVERY_LEASE_SECONDS / 2
        self.waiting: deque[Delivery] = deque(deliveries)
        self.finished: list[Finished] = []  # not recorded yet
        self.set_aside: list[Delivery] = []  # to hand back
        self.failing: set[str] = set()  # batch keys whose target failed in this batch
        self.targets: dict[tuple[str, int, str], Target] = {}
        self.sent = 0
        self.results: dict[int, SendResult] = {}

    def _target(self, delivery: Delivery, now: datetime) -> Target:
        key = (delivery.target, delivery.tenant_id, delivery.endpoint)
        if key not in self.targets:
            self.targets[key] = delivery_target(delivery, now)
        return self.targets[key]

    def send_next(self) -> None:
        """Take the next delivery: finish it without a request when there is nothing to
        send, set it aside when it may not go now, else send it."""
        delivery = self.waiting.popleft()
        schedule = retry_schedule(delivery.partner.retry_schedule if delivery.partner else "")
        if delivery.attempts - delivery.retry_base > len(schedule):
            # The previous holder died after taking the last try; nothing is sent again.
            error = "Attempts used up (a worker was lost during the last one)."
            self.finished.append(Finished(delivery, Delivery.Status.DEAD, error))
            return
        target = self._target(delivery, timezone.now())
        if not target.url:
            error = "No engine relay is configured."
            self.finished.append(Finished(delivery, Delivery.Status.NOT_CONFIGURED, error))
            return
        key = batch_key(delivery.target, delivery.tenant_id)
        elapsed = time.monotonic() - self.started
        if key in self.failing or (self.sent and elapsed + target.deadline > self.budget):
            self.set_aside.append(delivery)
            return
        finished = delivery_send(delivery, target, schedule)
        self.sent += 1
        self.finished.append(finished)
        if finished.status != Delivery.Status.SUCCEEDED:
            self.failing.add(key)

    @property
    def slow(self) -> bool:
        return time.monotonic() - self.started > RECORD_EVERY

    def record(self) -> None:
        """Write what was sent since the last call (one transaction)."""
        if self.finished:
            finished, self.finished = self.finished, []
            self.results.update(batch_record(token=self.token, finished=finished))

    def hand_back_rest(self) -> None:
        """Give back what was set aside and what was never reached."""
        rest = self.set_aside + list(self.waiting)
        self.set_aside, self.waiting = [], deque()
        deliveries_hand_back(delivery_ids=[d.pk for d in rest], token=self.token)
        self.results.update(dict.fromkeys((d.pk for d in rest), SendResult.HANDED_BACK))

    def run(self) -> dict[int, SendResult]:
        """Send everything; a quick batch is recorded once, a slow one after every request.
        If anything raises, what was sent is recorded and the rest handed back before the
        error goes on (the delivery being sent keeps its lease: if it breaks every worker,
        its tries run out)."""
        try:
            while self.waiting:
                self.send_next()
                if self.slow:
                    self.record()
        finally:
            try:
                self.record()
            finally:
                self.hand_back_rest()
        return self.results


def deliveries_send(*, delivery_ids: Sequence[int], top_up: bool = False) -> dict[int, SendResult]:
    """Claim these deliveries and make one attempt of each; returns each id's SendResult.

    Side effects: one DeliveryAttempt row per request sent, the deliveries' new status, the
    partners' health; when a delivery became final, the next one of its (target, ticket) is
    queued. With `top_up` (the queue's tasks), a batch of one partner smaller than
    PORTAL_DELIVERY_BATCH is filled up with that partner's oldest new deliveries; those
    appear in the result too.
    """
    ids = list(dict.fromkeys(int(pk) for pk in delivery_ids))
    results = dict.fromkeys(ids, SendResult.NOT_CLAIMED)
    token, now, started = uuid.uuid4(), timezone.now(), time.monotonic()
    claimed = deliveries_claim(delivery_ids=ids, token=token, now=now)
    if not claimed:
        return results
    taken = [pk for pk, _ in claimed]
    partners = {partner_id for _, partner_id in claimed}
    room = settings.PORTAL_DELIVERY_BATCH - len(taken)
    if top_up and room > 0 and len(partners) == 1 and None not in partners:
        partner_id = partners.pop()
        assert partner_id is not None
        more = deliveries_claim_more(partner_id=partner_id, limit=room, token=token, now=now)
        taken += more
        results.update(dict.fromkeys(more, SendResult.NOT_CLAIMED))
    deliveries = list(
        Delivery.objects.select_related("event", "partner", "tenant")
        .filter(pk__in=taken, lease_token=token)
        .order_by("id")
    )
    results.update(Batch(token, deliveries, started).run())
    return results
