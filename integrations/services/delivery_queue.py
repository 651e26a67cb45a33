"""Which deliveries go now, and waking workers up for them (SPEC §5).

Claims: one conditional UPDATE per batch takes the deliveries that may be attempted now (due
or with an expired lease, target active, SPEC §5 order, one attempt at a time for a failing
partner) with a lease. Queueing: queue messages carry batches of one target's delivery ids;
the dispatcher (beat) finds due deliveries in the database, so a lost message only delays
one. The statements are hand-written (integrations/services/sql.py says why).
"""

from __future__ import annotations

import functools
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from integrations.models import Delivery, Partner
from integrations.services.sql import prep

# --- claiming ------------------------------------------------------------------------------


@functools.cache
def _claimable_sql() -> str:
    """WHERE conditions (on `d`, a delivery) of a delivery that may be attempted now; three
    parameters, all `now`:

    - due (waiting and its time has come) or its lease expired (a worker died holding it);
    - its target is the engine relay or an active partner (not disabled, not paused);
    - no older delivery of the same target and ticket is still open (SPEC §5 order);
    - its partner is not failing with an attempt already in flight: a failing partner gets
      one attempt at a time, or its timeouts would hold every worker slot and stall the
      deliveries of other partners and tenants.

    Hand-written SQL (PostgreSQL and SQLite alike) because it runs for every batch: building
    it through the ORM cost more worker CPU than the statement itself.
    """
    deliveries, partners = Delivery._meta.db_table, Partner._meta.db_table
    final = ", ".join(f"'{status}'" for status in Delivery.FINAL_STATUSES)
    waiting = ", ".join(f"'{status}'" for status in Delivery.WAITING_STATUSES)
    # Only the models' own table names and status constants are formatted in.
    return f"""
        ((d.status IN ({waiting}) AND d.next_attempt_at <= %s)
          OR (d.status = '{Delivery.Status.DELIVERING}' AND d.lease_expires_at < %s))
        AND (d.partner_id IS NULL OR EXISTS (
            SELECT 1 FROM {partners} p
            WHERE p.id = d.partner_id AND p.state = '{Partner.State.ACTIVE}'))
        AND NOT EXISTS (
            SELECT 1 FROM {deliveries} o
            WHERE o.target = d.target AND o.ticket_id = d.ticket_id AND o.id < d.id
              AND o.status NOT IN ({final}))
        AND NOT EXISTS (
            SELECT 1 FROM {deliveries} b JOIN {partners} fp ON fp.id = b.partner_id
            WHERE b.partner_id = d.partner_id AND fp.consecutive_failures > 0
              AND b.status = '{Delivery.Status.DELIVERING}' AND b.lease_expires_at >= %s)
    """  # noqa: S608


def _claim(
    candidates: str, candidate_params: list, token: uuid.UUID, now: datetime
) -> list[tuple[int, int | None]]:
    """The claim statement: `candidates` is a SELECT of delivery ids (on `c`); those of them
    that may be attempted now are taken. Rows another transaction has locked (being claimed
    or recorded) are skipped rather than waited for, so concurrent claims neither queue up
    nor deadlock (SQLite has one writer at a time anyway). Returns (id, partner id) pairs."""
    skip_locked = " FOR UPDATE SKIP LOCKED" if connection.vendor == "postgresql" else ""
    at = prep(Delivery, "updated_at", now)
    lease = timedelta(seconds=settings.PORTAL_DELIVERY_LEASE_SECONDS)
    lease_until = prep(Delivery, "lease_expires_at", now + lease)
    sql = f"""
        UPDATE {Delivery._meta.db_table} AS d
        SET status = %s, lease_token = %s, lease_expires_at = %s,
            attempts = attempts + 1, updated_at = %s
        WHERE d.id IN ({candidates}{skip_locked}) AND {_claimable_sql()}
        RETURNING id, partner_id
    """  # noqa: S608 (only the table name, fixed SQL and placeholders are formatted in)
    params = [
        Delivery.Status.DELIVERING.value,
        prep(Delivery, "lease_token", token),
        lease_until,
        at,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, *candidate_params, at, at, at])
        return sorted(cursor.fetchall())


def deliveries_claim(*, delivery_ids: Sequence[int], token: uuid.UUID, now: datetime) -> list[int]:
    """Take those of these deliveries that may be attempted now; returns their ids.

    The attempt count rises here, so a delivery whose worker dies mid-attempt still uses up
    its tries and ends `dead` instead of looping forever.
    """
    return [pk for pk, _ in claim_ids([int(pk) for pk in delivery_ids], token, now)]


def claim_ids(ids: list[int], token: uuid.UUID, now: datetime) -> list[tuple[int, int | None]]:
    """Claim these deliveries; (id, partner id) of those taken."""
    if not ids:
        return []
    candidates = f"""
        SELECT c.id FROM {Delivery._meta.db_table} c
        WHERE c.id IN ({", ".join(["%s"] * len(ids))})
    """  # noqa: S608 (only the table name and placeholders are formatted in)
    return _claim(candidates, ids, token, now)


def deliveries_claim_more(
    *, partner_id: int, limit: int, token: uuid.UUID, now: datetime
) -> list[int]:
    """Top a batch up: of this partner's `limit` oldest new (`pending`, due) deliveries, take
    those that may be attempted now; returns their ids.

    Each event queues its own message, so a burst to one partner would otherwise be sent one
    task per delivery; their own messages later find them taken and do nothing. Only `limit`
    rows are looked at (on a backlog of few tickets most are held back by the order rule, and
    the batch simply stays small), so the cost stays bounded.
    """
    candidates = f"""
        SELECT c.id FROM {Delivery._meta.db_table} c
        WHERE c.partner_id = %s AND c.status = %s AND c.next_attempt_at <= %s
        ORDER BY c.id LIMIT %s
    """  # noqa: S608 (only the table name is formatted in)
    params = [partner_id, Delivery.Status.PENDING.value, prep(Delivery, "updated_at", now), limit]
    return [pk for pk, _ in _claim(candidates, params, token, now)]


def delivery_claim(*, delivery_id: int, token: uuid.UUID, now: datetime) -> bool:
    """Take one delivery for an attempt; True when this caller now holds its lease."""
    return bool(deliveries_claim(delivery_ids=[delivery_id], token=token, now=now))


# --- queueing ----------------------------------------------------------------------------------


def queue_next_in_order(finished: Sequence[Delivery]) -> None:
    """When deliveries become final, the next open one of each (target, ticket) goes at once
    (marked as queued now).

    Call inside the transaction that made them final; the messages are sent on commit.
    """
    after: dict[tuple[str, int], int] = {}
    for delivery in finished:
        pair = (delivery.target, delivery.ticket_id)
        after[pair] = min(after.get(pair, delivery.pk), delivery.pk)
    if not after:
        return
    table = Delivery._meta.db_table
    final = ", ".join(["%s"] * len(Delivery.FINAL_STATUSES))
    # One statement per batch, hand-written: the ORM's OR of one condition per pair cost
    # more worker CPU to build than PostgreSQL spent running it (bench/delivery.py).
    # VALUES columns are column1, column2, … on PostgreSQL and SQLite alike.
    sql = f"""
        UPDATE {table} SET dispatched_at = %s
        WHERE id IN (
            SELECT MIN(n.id) FROM {table} n
            JOIN (VALUES {", ".join(["(%s, %s, %s)"] * len(after))}) v
              ON n.target = v.column1 AND n.ticket_id = v.column2 AND n.id > v.column3
            WHERE n.status NOT IN ({final})
            GROUP BY n.target, n.ticket_id)
        RETURNING id, target, tenant_id
    """  # noqa: S608 (only the table name and placeholders are formatted in)
    params = [
        prep(Delivery, "dispatched_at", timezone.now()),
        *(value for (target, ticket), pk in after.items() for value in (target, ticket, pk)),
        *Delivery.FINAL_STATUSES,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = [(pk, batch_key(target, tenant)) for pk, target, tenant in cursor.fetchall()]
    if rows:
        transaction.on_commit(lambda: enqueue(rows), robust=True)


def batch_key(target: str, tenant_id: int) -> str:
    """What a batch is one of: a partner, or one tenant's engine relay (every tenant's relay
    target is "engine", but one tenant's engine must not hold up another's)."""
    return f"{target}:{tenant_id}" if target == Delivery.ENGINE_TARGET else target


def batches_by_target(rows: Iterable[tuple[int, str]], size: int) -> list[list[int]]:
    """Group (delivery id, batch key) pairs into queue messages: one key each (a slow partner
    or engine never holds up another's batch), at most `size` ids each, in id order."""
    by_target: dict[str, list[int]] = defaultdict(list)
    for pk, target in sorted(rows):
        by_target[target].append(pk)
    return [pks[i : i + size] for pks in by_target.values() for i in range(0, len(pks), size)]


def enqueue(rows: Iterable[tuple[int, str]]) -> None:
    """Send the queue messages for these (delivery id, batch key) pairs."""
    from integrations import tasks

    for batch in batches_by_target(rows, settings.PORTAL_DELIVERY_BATCH):
        tasks.deliveries_enqueue(batch)


def _due_rows(now: datetime, limit: int) -> list[tuple[int, str]]:
    stale = prep(
        Delivery, "dispatched_at", now - timedelta(seconds=settings.PORTAL_REDISPATCH_AFTER)
    )
    at = prep(Delivery, "updated_at", now)
    sql = f"""
        SELECT d.id, d.target, d.tenant_id FROM {Delivery._meta.db_table} d
        WHERE {_claimable_sql()} AND (d.dispatched_at IS NULL OR d.dispatched_at < %s)
        ORDER BY d.next_attempt_at, d.id
        LIMIT %s
    """  # noqa: S608 (only the table name and _claimable_sql are formatted in)
    with connection.cursor() as cursor:
        cursor.execute(sql, [at, at, at, stale, limit])
        return [(pk, batch_key(target, tenant)) for pk, target, tenant in cursor.fetchall()]


def deliveries_due(*, now: datetime, limit: int = 500) -> list[int]:
    """Ids of deliveries to queue now: due or with an expired lease, not queued recently,
    their target active, and no older delivery of the same target and ticket open."""
    return [pk for pk, _ in _due_rows(now, limit)]


def deliveries_dispatch(*, now: datetime, limit: int = 500) -> int:
    """Queue every due delivery not queued recently, in batches per target; returns how
    many were queued."""
    rows = _due_rows(now, limit)
    if rows:
        Delivery.objects.filter(pk__in=[pk for pk, _ in rows]).update(dispatched_at=now)
        enqueue(rows)
    return len(rows)
