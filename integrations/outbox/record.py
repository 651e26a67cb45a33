"""Recording a batch: its attempts and outcomes in one transaction, then the partners'
health counters and the alerts (SPEC §5).

No transaction is open during an HTTP call: the sender collects what became of each
delivery (`Finished`, its result already made `storable`) and hands it here.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import partial

from django.db import connection, transaction
from django.utils import timezone

from integrations import instruments
from integrations.delivery import DeliveryResult, redact_url
from integrations.models import Delivery
from integrations.outbox import finish, queue
from integrations.outbox.health import partner_failure, partner_successes, partner_successes_fold
from integrations.outbox.notices import DELIVERY_DEAD, notice_queue
from integrations.outbox.sendable import Sendable
from integrations.webhooks import Outcome

logger = logging.getLogger(__name__)

STORED_BODY_BYTES = 8 * 1024
# The alert tasks (integrations/tasks.py), named: the outbox sits below the tasks.
PARTNER_PAUSED_ALERT_TASK = "integrations.tasks.partner_paused_alert"
DELIVERIES_DEAD_ALERT_TASK = "integrations.tasks.deliveries_dead_alert"


class SendResult(StrEnum):
    """What became of one delivery id handed to the sender."""

    SUCCEEDED = Delivery.Status.SUCCEEDED.value
    RETRYING = Delivery.Status.RETRYING.value
    DEAD = Delivery.Status.DEAD.value
    NOT_CONFIGURED = Delivery.Status.NOT_CONFIGURED.value
    # not due, held back by an older delivery of its ticket, or another worker has it
    NOT_CLAIMED = "not_claimed"
    # claimed, then given back untried (its partner failed earlier in the batch, or the
    # batch ran out of time); it waits again
    HANDED_BACK = "handed_back"
    # the attempt outlived its lease and another worker took the delivery over: the attempt
    # is recorded, the other worker's outcome stands
    LEASE_LOST = "lease_lost"


@dataclass(frozen=True)
class Finished:
    """What became of one claimed delivery, to be recorded with the rest of its batch."""

    delivery: Sendable
    status: Delivery.Status
    error: str
    next_at: datetime | None = None
    result: DeliveryResult | None = None  # None: finished without sending a request
    url: str = ""


def unanswered(error_class: str, message: str) -> DeliveryResult:
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


_LOST_WORKER = unanswered("worker_lost", "A worker was lost during the last attempt.")


def storable_text(text: str) -> str:
    """PostgreSQL text and jsonb refuse NUL, and a partner's answer (body, headers, a garbled
    status line quoted in an error) may well contain it: U+FFFD is stored in its place."""
    return text.replace("\x00", "\ufffd")


def storable(result: DeliveryResult) -> DeliveryResult:
    """The result with its answer's headers and the error message fit to be stored."""
    return dataclasses.replace(
        result,
        response_headers={
            storable_text(k): storable_text(v) for k, v in result.response_headers.items()
        },
        error_message=storable_text(result.error_message),
    )


def _attempt_row(finished: Finished, now: datetime) -> dict[str, object]:
    """The attempt's row (queue.ATTEMPT_FIELDS), recorded at `now` with its batch."""
    result = finished.result
    assert result is not None
    row = (
        finished.delivery.pk,
        finished.delivery.attempts,
        redact_url(finished.url),
        result.request_headers,
        result.status_code,
        result.response_headers,
        storable_text(result.response_body[:STORED_BODY_BYTES].decode("utf-8", "replace")),
        result.duration_ms,
        str(result.outcome),
        result.error_class,
        result.error_message[:1000],
        now,
    )
    return dict(zip(queue.ATTEMPT_FIELDS, row, strict=True))


def _changes(finished: Finished, now: datetime) -> tuple[tuple[str, object], ...]:
    """The columns one finished delivery sets; deliveries with equal changes share an UPDATE
    (so `delivered_at` is the time the batch was recorded, as is its attempts' `created_at`)."""
    changes: dict[str, object] = {
        "status": finished.status,
        "next_attempt_at": finished.next_at,
        "last_error": finished.error[:500],
    }
    if finished.result is not None:
        changes["last_status_code"] = finished.result.status_code
        changes["dispatched_at"] = None
        changes["delivered_at"] = now if finished.status == Delivery.Status.SUCCEEDED else None
    return tuple(changes.items())


def batch_record(*, token: uuid.UUID, finished: list[Finished]) -> dict[int, SendResult]:
    """Write these deliveries' attempts and outcomes in one transaction; returns each id's
    SendResult.

    Only rows still under lease `token` change; a delivery whose lease ran out mid-attempt
    (another worker holds it now) gets its attempt recorded and the result LEASE_LOST. The
    next delivery of every finished (target, ticket) is queued in the same transaction.
    Then, in statements of their own, the partners' counters; alerts are queued on commit.
    """
    if not finished:
        return {}
    now = timezone.now()
    if _in_one_statement(finished):
        return _batch_finish(token, finished, now)
    results: dict[int, SendResult] = {}
    with transaction.atomic():
        ours = queue.deliveries_locked(delivery_ids=[f.delivery.pk for f in finished], token=token)
        queue.attempts_insert([_attempt_row(f, now) for f in finished if f.result is not None])
        groups: dict[tuple[tuple[str, object], ...], list[int]] = defaultdict(list)
        for f in finished:
            if f.delivery.pk in ours:
                results[f.delivery.pk] = SendResult(f.status)
                groups[_changes(f, now)].append(f.delivery.pk)
            else:
                results[f.delivery.pk] = SendResult.LEASE_LOST
        for changes, pks in groups.items():
            queue.deliveries_finish(delivery_ids=pks, changes=changes, now=now)
        queue.queue_next_in_order(
            f.delivery
            for f in finished
            if f.delivery.pk in ours and f.status in Delivery.FINAL_STATUSES
        )
        for f in finished:
            if f.delivery.pk in ours and f.status == Delivery.Status.DEAD:
                _dead_notice(f, now)
    _recorded(finished, results)
    _health_and_alerts([f for f in finished if f.delivery.pk in ours], now)
    return results


def _in_one_statement(finished: list[Finished]) -> bool:
    """Whether this batch is recorded in one statement (outbox/finish.py): on PostgreSQL,
    outside a transaction of the caller's (its on-commit work would run before the caller's
    commit), and with no delivery going dead (its notice to the operations URL is written in
    the transaction that records it)."""
    return (
        connection.vendor == "postgresql"
        and not connection.in_atomic_block
        and all(f.status != Delivery.Status.DEAD for f in finished)
    )


def _batch_finish(
    token: uuid.UUID, finished: list[Finished], now: datetime
) -> dict[int, SendResult]:
    """`batch_record` in one statement (see `_in_one_statement`)."""
    outcomes = [
        finish.RowOutcome(
            pk=f.delivery.pk,
            status=f.status.value,
            next_at=f.next_at,
            error=f.error[:500],
            sent=f.result is not None,
            status_code=f.result.status_code if f.result is not None else None,
            delivered_at=now if f.status == Delivery.Status.SUCCEEDED else None,
        )
        for f in finished
    ]  # (as `_changes`)
    partner_id = finished[0].delivery.partner_id
    successes = None
    if partner_id is not None and all(
        f.delivery.partner_id == partner_id
        and f.result is not None
        and f.result.outcome == Outcome.SUCCESS
        for f in finished
    ):
        durations = [f.result.duration_ms for f in finished if f.result is not None]
        successes = partner_successes_fold(partner_id, durations)
    recorded = finish.batch_finish(
        token=token,
        outcomes=outcomes,
        attempts=[_attempt_row(f, now) for f in finished if f.result is not None],
        successes=successes,
        now=now,
    )
    queue.next_in_order_queued(recorded.queued)
    results = {
        f.delivery.pk: SendResult(f.status)
        if f.delivery.pk in recorded.ours
        else SendResult.LEASE_LOST
        for f in finished
    }
    _recorded(finished, results)
    if not recorded.counted:
        _health_and_alerts([f for f in finished if f.delivery.pk in recorded.ours], now)
    return results


def _recorded(finished: list[Finished], results: dict[int, SendResult]) -> None:
    """The metrics and log lines of a recorded batch."""
    for f in finished:
        if f.result is not None:
            instruments.attempt_recorded(
                outcome=str(f.result.outcome), seconds=f.result.duration_ms / 1000
            )
        _log_outcome(f, results[f.delivery.pk])


def _dead_notice(finished: Finished, now: datetime) -> None:
    """Tell the tenant's operations URL that this delivery went dead (`delivery.dead`),
    unless it is an operations notice itself (a dead operations URL is not told of itself)."""
    d = finished.delivery
    if d.target == Delivery.OPERATIONS_TARGET:
        return
    notice_queue(
        tenant_id=d.tenant_id,
        kind=DELIVERY_DEAD,
        partner_id=d.partner_id,
        delivery_id=d.pk,
        reason=finished.error[:500] or "Every try failed.",
        now=now,
    )


def _log_outcome(finished: Finished, result: SendResult) -> None:
    """One line per attempt (and per delivery finished without one), with the ids SPEC §10
    lists: INFO when delivered, WARNING otherwise."""
    d, attempt = finished.delivery, finished.result
    fields: dict[str, object] = {
        "request_id": d.request_id or None,
        "tenant": d.tenant.owner,
        "event_id": str(d.event_id),
        "delivery_id": d.pk,
        "partner_id": d.partner_id,
        "target": d.target,
        "attempt": d.attempts,
        "status": finished.status.value,
        "result": result.value,
    }
    if attempt is not None:
        fields.update(
            outcome=str(attempt.outcome),
            status_code=attempt.status_code,
            duration_ms=attempt.duration_ms,
            error_class=attempt.error_class or None,
        )
    level = logging.INFO if finished.status == Delivery.Status.SUCCEEDED else logging.WARNING
    extra = {k: v for k, v in fields.items() if v is not None}
    if attempt is None:
        logger.log(level, "delivery finished without an attempt: %s", result.value, extra=extra)
        return
    why = f" ({attempt.error_class})" if attempt.error_class else ""
    logger.log(level, "delivery attempt %d: %s%s", d.attempts, result.value, why, extra=extra)


def _health_and_alerts(finished: list[Finished], now: datetime) -> None:
    """Each partner's counters, in the order of its attempts; then the alerts, queued as
    tasks of their own (a slow mail server never holds a batch's leases)."""
    by_partner: dict[int, list[Finished]] = defaultdict(list)
    for f in finished:
        if f.delivery.partner_id is not None and (
            f.result is not None or f.status == Delivery.Status.DEAD
        ):
            by_partner[f.delivery.partner_id].append(f)
    for partner_id, rows in by_partner.items():
        paused, successes = False, []
        for f in rows:
            if f.result is not None and f.result.outcome == Outcome.SUCCESS:
                successes.append(f.result.duration_ms)
                continue
            partner_successes(partner_id, successes, now)
            successes = []
            # A delivery whose worker died during its last try counts as a failure too: a
            # partner that hangs until workers die still gets paused in time.
            paused |= partner_failure(partner_id, f.result or _LOST_WORKER, now)
        partner_successes(partner_id, successes, now)
        if paused:
            transaction.on_commit(
                partial(queue.run_or_publish, PARTNER_PAUSED_ALERT_TASK, partner_id), robust=True
            )
        if any(f.status == Delivery.Status.DEAD for f in rows):
            transaction.on_commit(
                partial(queue.run_or_publish, DELIVERIES_DEAD_ALERT_TASK, partner_id), robust=True
            )
