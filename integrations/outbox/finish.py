"""Recording a batch in one statement, on PostgreSQL (outbox/record.py says when).

A batch's record was five round trips in a transaction (lock the rows still under the
batch's lease, insert the attempts, write the outcomes, queue each ticket's next delivery,
commit) and a sixth for the partner's counters: more worker and database CPU per delivery
than the statements' own work, for the one-delivery batches live traffic makes
(docs/PERFORMANCE.md). Here they are one data-modifying WITH statement in autocommit: the
outcomes are written only on rows still under the lease (the UPDATE's own condition, checked
again on the locked row), the attempts inserted, each finished ticket's next delivery marked
queued, and, for a batch of one partner's successes, its counters folded in (only when every
row was still the batch's: else the caller counts those that were, as before).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from integrations.models import Delivery, DeliveryAttempt
from integrations.outbox.queue import (
    Successes,
    attempts_insert_sql,
    batch_key,
    partner_successes_params,
    partner_successes_sql,
)
from integrations.outbox.sql import db_value, db_values, sql_cursor


@dataclass(frozen=True)
class RowOutcome:
    """What one finished delivery's row becomes (record._changes says what each means)."""

    pk: int
    status: str
    next_at: datetime | None
    error: str
    sent: bool  # a request was made: its status code, delivered_at and dispatched_at too
    status_code: int | None
    delivered_at: datetime | None


@dataclass(frozen=True)
class Recorded:
    ours: set[int]  # the rows that were still under the batch's lease
    queued: list[tuple[int, str]]  # each finished ticket's next delivery, with its batch key
    counted: bool  # the partner's counters were folded in


# an outcome's row in the statement's VALUES (typed: a prepared statement's parameters
# take their types from the text)
_OUTCOME = "(%s::bigint, %s::text, %s::timestamptz, %s::text, %s::boolean, %s::integer, "
_OUTCOME += "%s::timestamptz)"


@functools.cache
def _sql(outcomes: int, attempts: int, successes: bool) -> str:
    """The statement for this many outcomes and attempts, with the partner's counters or
    not (each shape prepared once per connection). Like queue.py's statements, only table
    names, status constants and placeholders are formatted into it."""
    deliveries = Delivery._meta.db_table
    final = ", ".join(f"'{status}'" for status in Delivery.FINAL_STATUSES)
    values = ", ".join([_OUTCOME] * outcomes)
    parts = [f"v (id, status, next_at, error, sent, code, delivered) AS (VALUES {values})"]
    if attempts:
        parts.append(f"added AS ({attempts_insert_sql(attempts)})")
    parts.append(f"""done AS (
        UPDATE {deliveries} AS d SET
            status = v.status, next_attempt_at = v.next_at, last_error = v.error,
            last_status_code = CASE WHEN v.sent THEN v.code ELSE d.last_status_code END,
            dispatched_at = CASE WHEN v.sent THEN NULL ELSE d.dispatched_at END,
            delivered_at = CASE WHEN v.sent THEN v.delivered ELSE d.delivered_at END,
            lease_token = NULL, lease_expires_at = NULL, updated_at = %s
        FROM v WHERE d.id = v.id AND d.lease_token = %s
        RETURNING d.id, d.target, d.ticket_id, d.status)""")  # noqa: S608
    # the next open delivery of each ticket that became final (not one of this batch's own:
    # the statement sees the table as it was before it)
    parts.append(f"""queued AS (
        UPDATE {deliveries} SET dispatched_at = %s
        WHERE id IN (
            SELECT MIN(n.id) FROM {deliveries} n
            JOIN done f ON n.target = f.target AND n.ticket_id = f.ticket_id AND n.id > f.id
            WHERE f.status IN ({final}) AND n.status NOT IN ({final})
              AND n.id NOT IN (SELECT id FROM v)
            GROUP BY n.target, n.ticket_id)
        RETURNING id, target, tenant_id)""")  # noqa: S608
    counted = ""  # (before `queued` in the result: see below)
    if successes:
        # the partner's counters (queue.partner_successes_sql), when every row was still the
        # batch's
        counted_sql = partner_successes_sql(" AND (SELECT count(*) FROM done) = %s")
        parts.append(f"counted AS ({counted_sql} RETURNING 1)")
        counted = " UNION ALL SELECT 2, NULL, NULL, NULL FROM counted"
    # The result's branches run in this order, and with them the updates they read: the
    # batch's rows, the partner's, then the next deliveries. Partner before deliveries is
    # the order partner_resume locks them in (the partner, then its waiting deliveries):
    # the other order could deadlock with it.
    selected = "SELECT 0, id, NULL::varchar, NULL::bigint FROM done" + counted  # noqa: S608
    selected += " UNION ALL SELECT 1, id, target, tenant_id FROM queued"  # noqa: S608
    return f"WITH {', '.join(parts)} {selected}"


def batch_finish(
    *,
    token: uuid.UUID,
    outcomes: Sequence[RowOutcome],
    attempts: Sequence[dict[str, Any]],
    successes: Successes | None,
    now: datetime,
) -> Recorded:
    """Write a batch's outcomes and attempts (queue.ATTEMPT_FIELDS rows) in one statement
    (see the module); returns which rows were the batch's, the next deliveries marked
    queued (the caller queues them) and whether the partner's counters were folded in.
    PostgreSQL only, in autocommit."""
    at = db_value(Delivery, "updated_at", now)
    params: list[Any] = []
    for o in outcomes:
        # (adapted as the fields would be: each parameter keeps one type whatever its value,
        # so the statement is prepared once per shape, not once per integer size)
        params += [
            db_value(Delivery, "id", o.pk),
            o.status,
            db_value(Delivery, "next_attempt_at", o.next_at),
            o.error,
            o.sent,
            db_value(Delivery, "last_status_code", o.status_code),
            db_value(Delivery, "delivered_at", o.delivered_at),
        ]
    for row in attempts:
        params += db_values(DeliveryAttempt, row)
    params += [at, db_value(Delivery, "lease_token", token), at]
    if successes is not None:
        params += [*partner_successes_params(successes, now), len(outcomes)]
    with sql_cursor() as cursor:
        cursor.execute(_sql(len(outcomes), len(attempts), successes is not None), params)
        rows = cursor.fetchall()
    return Recorded(
        ours={pk for kind, pk, _, _ in rows if kind == 0},
        queued=[(pk, batch_key(target, tenant)) for kind, pk, target, tenant in rows if kind == 1],
        counted=any(kind == 2 for kind, _, _, _ in rows),
    )
