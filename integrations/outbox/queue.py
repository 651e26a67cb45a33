"""Which deliveries may go now, and the one place that wakes workers for them (SPEC §5).

Claims: one conditional UPDATE per batch takes, with a lease, the deliveries that may be
attempted now. Waking: an accepted event wakes its targets' pumps (`wake`), which claim from
the database; a queue message naming a batch of one target's delivery ids is what the
dispatcher (beat, finding due deliveries in the database) and the per-ticket order send. A
lost wake or message only delays a delivery.

The statements here are hand-written SQL, each in one function that says why: they run for
every batch (claim, order, hand-back, record) or every second (dispatch), and building them
through the ORM's compiler cost more worker CPU than PostgreSQL spent running them
(bench/delivery.py, docs/PERFORMANCE.md); they go through `sql_cursor` (prepared statements
on PostgreSQL). They run on PostgreSQL and SQLite (>= 3.35) alike. Only the models' own
table and column names, status constants and placeholders are formatted into them (hence
S608).
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from celery import current_app
from django.conf import settings
from django.core.cache import DEFAULT_CACHE_ALIAS, cache, caches
from django.core.cache.backends.redis import RedisCache
from django.db import connection, transaction
from django.utils import timezone

from integrations.models import Delivery, DeliveryAttempt, Partner, SigningSecret
from integrations.outbox.sendable import Sendable, delivery_returning, sendable_sql, sendables
from integrations.outbox.sql import columns, db_value, db_values, sql_cursor

logger = logging.getLogger(__name__)

# The task that sends a batch (integrations/tasks.py); named, not imported: the outbox sits
# below the tasks that call it.
SEND_BATCH_TASK = "integrations.tasks.delivery_send_batch"

# --- claiming --------------------------------------------------------------------------------


def _claimable_params(now: datetime, token: uuid.UUID) -> list[Any]:
    """The parameters of `_claimable_sql`, in order: at `now`, for a claim under `token`."""
    at = db_value(Delivery, "updated_at", now)
    mine = db_value(Delivery, "lease_token", token)
    slow, lanes = settings.PORTAL_SLOW_PARTNER_MS, settings.PORTAL_SLOW_PARTNER_BATCHES
    return [at, at, at, at, slow, at, mine, at, mine, slow, lanes]


@functools.cache
def _claimable_sql() -> str:
    """WHERE conditions (on `d`, a delivery) of a delivery that may be attempted now, with
    the parameters `_claimable_params` gives:

    - due (waiting and its time has come) or its lease expired (a worker died holding it);
    - its target is the engine relay, the operations URL or an active partner (not
      disabled, not paused);
    - no older delivery of the same target and ticket is still open (SPEC §5 order);
    - its partner is not failing with an attempt already in flight: a failing partner gets
      one attempt at a time, or its timeouts would hold every worker slot and stall the
      deliveries of other partners and tenants;
    - likewise a tenant's engine relay (and its operations URL): while one of its deliveries
      is retrying (the engine failed lately), one attempt at a time;
    - fair share: a partner that is slow on average (PORTAL_SLOW_PARTNER_MS) or has not
      answered yet has one batch at a time, and the partners known to be slow have at most
      PORTAL_SLOW_PARTNER_BATCHES batches at once between them, so however many slow
      partners there are, the other worker slots stay free for the rest. Leases under the
      claim's own token do not count (a batch topping itself up).
    """
    deliveries, partners = Delivery._meta.db_table, Partner._meta.db_table
    final = ", ".join(f"'{status}'" for status in Delivery.FINAL_STATUSES)
    waiting = ", ".join(f"'{status}'" for status in Delivery.WAITING_STATUSES)
    delivering = Delivery.Status.DELIVERING
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
        AND (d.partner_id IS NOT NULL OR NOT EXISTS (
            SELECT 1 FROM {deliveries} r
            WHERE r.partner_id IS NULL AND r.tenant_id = d.tenant_id AND r.target = d.target
              AND r.status = '{Delivery.Status.DELIVERING}' AND r.lease_expires_at >= %s
              AND EXISTS (
                SELECT 1 FROM {deliveries} f
                WHERE f.partner_id IS NULL AND f.tenant_id = d.tenant_id AND f.target = d.target
                  AND f.status = '{Delivery.Status.RETRYING}')))
        AND (d.partner_id IS NULL OR NOT EXISTS (
            SELECT 1 FROM {partners} sp
            WHERE sp.id = d.partner_id
              AND (sp.latency_ms_avg IS NULL OR sp.latency_ms_avg >= %s)
              AND (EXISTS (
                    SELECT 1 FROM {deliveries} s
                    WHERE s.partner_id = d.partner_id AND s.status = '{delivering}'
                      AND s.lease_expires_at >= %s AND s.lease_token <> %s)
                  OR (sp.latency_ms_avg IS NOT NULL AND (
                    SELECT COUNT(DISTINCT s.lease_token) FROM {deliveries} s
                    JOIN {partners} sq ON sq.id = s.partner_id
                    WHERE s.status = '{delivering}' AND s.lease_expires_at >= %s
                      AND s.lease_token <> %s AND sq.latency_ms_avg >= %s) >= %s))))
    """  # noqa: S608


# What a claim's candidates select of each row (`c`): the columns its conditions read.
_PICKED = "c.id, c.status, c.next_attempt_at, c.lease_expires_at, c.partner_id, c.target, "
_PICKED += "c.ticket_id, c.tenant_id"


def _claim(candidates: str, params: list[Any], token: uuid.UUID, now: datetime) -> list[Sendable]:
    """`_claim_looked` without how many rows it looked at."""
    return _claim_looked(candidates, params, token, now)[0]


def _claim_looked(
    candidates: str, params: list[Any], token: uuid.UUID, now: datetime
) -> tuple[list[Sendable], int | None]:
    """The claim: of the deliveries `candidates` selects (`_PICKED` of `c`), take those that
    may be attempted now: status `delivering`, a new lease token and expiry, and the attempt
    counted here, so a delivery whose worker dies mid-attempt still uses up its tries and
    ends `dead` instead of looping. Rows another transaction has locked (being claimed or
    recorded) are skipped rather than waited for, so concurrent claims neither queue up nor
    deadlock (SQLite has one writer at a time anyway). Returns the rows taken, ready to send
    (outbox/sendable.py), by id, and how many rows the candidates picked when any was taken
    (on PostgreSQL; else None)."""
    postgresql = connection.vendor == "postgresql"
    skip_locked = " FOR UPDATE SKIP LOCKED" if postgresql else ""
    at = db_value(Delivery, "updated_at", now)
    lease = timedelta(seconds=settings.PORTAL_DELIVERY_LEASE_SECONDS)
    # The candidates are picked once (MATERIALIZED): as a subquery of the UPDATE, a plan
    # could run them again for each row, and each run, skipping the rows this statement had
    # already changed, picked (and took) the next ones: a LIMIT 2 once claimed 6 rows. The
    # conditions are checked on the picked rows themselves (their columns as locked), and the
    # rows that pass are updated by primary key: checked on the table, the plan walked every
    # due delivery with the conditions and only then kept the picked ones (~1.4 ms a claim,
    # growing with the backlog). On PostgreSQL they are joined to the table by id (a primary
    # key lookup per picked row: the join sees how few they are): as `id = ANY(array)`, the
    # plan read the whole table for them while it was small enough for PostgreSQL to think
    # that cheaper than the index (3,000 rows a claim in the latency bench; auto_explain,
    # docs/PERFORMANCE.md). Not by ctid: a row changed by a transaction that committed after
    # this statement's snapshot is locked in its newest version, which a TID scan under that
    # snapshot does not see (found in review); by id the UPDATE follows it as before.
    if postgresql:
        passed = f"SELECT d.id AS picked_id FROM picked d WHERE {_claimable_sql()}"  # noqa: S608
        taken = f"FROM ({passed}) AS p WHERE u.id = p.picked_id"
    else:
        taken = f"WHERE u.id IN (SELECT d.id FROM picked d WHERE {_claimable_sql()})"  # noqa: S608
    update = f"""
        UPDATE {Delivery._meta.db_table} AS u
        SET status = %s, lease_token = %s, lease_expires_at = %s,
            attempts = attempts + 1, updated_at = %s
        {taken}
        RETURNING {delivery_returning() if postgresql else "id"}
    """  # noqa: S608
    # On PostgreSQL the rows taken come back joined to what sending them needs, in the same
    # statement (its UPDATE in a WITH query); SQLite reads them in a SELECT of their own.
    picked = f"WITH picked AS MATERIALIZED ({candidates}{skip_locked})"
    joined = sendable_sql("taken", extra="(SELECT count(*) FROM picked)", secrets=True)
    sql = (
        f"{picked}, taken AS ({update}) {joined} ORDER BY s.id"
        if postgresql
        else f"{picked} {update}"
    )
    mine = db_value(Delivery, "lease_token", token)
    values = [
        *params,
        Delivery.Status.DELIVERING.value,
        mine,
        db_value(Delivery, "lease_expires_at", now + lease),
        at,
        *_claimable_params(now, token),
    ]
    if postgresql:  # the partners' secrets live at `now`
        values.append(db_value(SigningSecret, "expires_at", now))
    with sql_cursor() as cursor:
        cursor.execute(sql, values)
        rows = cursor.fetchall()
        if postgresql:
            return sendables(rows, secrets=True), int(rows[0][-1]) if rows else None
        if not rows:
            return [], None
        ids = sorted(pk for (pk,) in rows)
        cursor.execute(
            sendable_sql(Delivery._meta.db_table)
            + f" WHERE s.id IN ({', '.join(['%s'] * len(ids))}) AND s.lease_token = %s"
            + " ORDER BY s.id",
            [*ids, mine],
        )
        return sendables(cursor.fetchall()), None


def deliveries_claim(
    *, delivery_ids: Sequence[int], token: uuid.UUID, now: datetime
) -> list[Sendable]:
    """Take those of these deliveries that may be attempted now under lease `token`.

    Returns the deliveries taken, ready to send, by id; a delivery is returned to one
    caller only, so a duplicate queue message or a second worker does nothing.
    """
    ids = [int(pk) for pk in delivery_ids]
    if not ids:
        return []
    candidates = f"""
        SELECT {_PICKED} FROM {Delivery._meta.db_table} c
        WHERE c.id IN ({", ".join(["%s"] * len(ids))})
    """  # noqa: S608
    return _claim(candidates, ids, token, now)


def deliveries_claim_more(
    *, partner_id: int, limit: int, token: uuid.UUID, now: datetime
) -> list[Sendable]:
    """Top a batch up: of this partner's `limit` oldest new (`pending`, due) deliveries, take
    those that may be attempted now; returns them, ready to send, by id.

    Each event queues its own message, so a burst to one partner would otherwise be sent one
    task per delivery; their own messages later find them taken and do nothing. Only `limit`
    rows are looked at (on a backlog of few tickets most are held back by the order rule, and
    the batch simply stays small), so the cost stays bounded.
    """
    candidates = f"""
        SELECT {_PICKED} FROM {Delivery._meta.db_table} c
        WHERE c.partner_id = %s AND c.status = %s AND c.next_attempt_at <= %s
        ORDER BY c.id LIMIT %s
    """  # noqa: S608
    # (LIMIT stays a parameter here, unlike deliveries_claim_due's: a top-up's limit is
    # whatever room is left, 1 to the batch size, and each would be a statement of its own,
    # planned again after every replan; top-ups are the rarer claim)
    params = [partner_id, Delivery.Status.PENDING.value, db_value(Delivery, "updated_at", now)]
    return _claim(candidates, [*params, limit], token, now)


def _target_scope(key: str, alias: str) -> tuple[str, list[Any]]:
    """The WHERE condition (on `alias`, a delivery) and its parameters for the deliveries of
    the batch key `key`: a partner's, or one tenant's engine relay or operations URL."""
    target, tenant_id = parse_batch_key(key)
    if target.startswith("partner:"):
        return f"{alias}.partner_id = %s", [int(target.split(":", 1)[1])]
    condition = f"{alias}.partner_id IS NULL AND {alias}.target = %s AND {alias}.tenant_id = %s"
    return condition, [target, tenant_id]


def deliveries_claim_due(
    *, key: str, limit: int, token: uuid.UUID, now: datetime
) -> tuple[list[Sendable], int | None]:
    """A pump's claim (see `wake`): of the `limit` oldest new (`pending`, due) deliveries of
    the batch key `key` (a partner, or one tenant's engine relay or operations URL), take
    those that may be attempted now; returns them, ready to send, by id.

    Only `limit` rows are looked at, in id order along the (partner, status, id) index, so a
    target whose deliveries are all held back (order, pause) costs one short index read however
    long its backlog. Retries are not looked for here: with two statuses the index gives no
    id order, and the plan read and sorted every waiting row of the target (585 rows for a
    batch of 20 on a backlog, EXPLAIN ANALYZE); the dispatcher queues due retries by id.
    Also returns how many rows it looked at (`_claim_looked`): fewer than `limit` means it
    saw every new due delivery of the target, the ones it could not take held back.
    """
    scope, params = _target_scope(key, "c")
    # The status and the LIMIT are written into the statement, not passed as parameters: a
    # prepared statement's generic plan cannot know a parameter's value, and for `LIMIT $n`
    # and `status = $n` it guessed so many rows that PostgreSQL judged it dearer than planning
    # each run for its values, and planned each claim again (0.9 ms of PostgreSQL per event
    # in the latency bench, four times the run itself). A pump's limit is the batch size.
    candidates = f"""
        SELECT {_PICKED} FROM {Delivery._meta.db_table} c
        WHERE {scope} AND c.status = '{Delivery.Status.PENDING}' AND c.next_attempt_at <= %s
        ORDER BY c.id LIMIT {int(limit)}
    """  # noqa: S608
    params += [db_value(Delivery, "updated_at", now)]
    return _claim_looked(candidates, params, token, now)


def deliveries_release_target(*, key: str, now: datetime) -> int:
    """A pump ending: mark the target's new deliveries that are due and still marked queued
    (ingest marks them for the pump) as not queued, so the dispatcher queues those that may
    go as soon as they may (a failing partner's attempt in flight ends, a slow partner's
    fair share frees up, the pump's window was held up by one ticket's older messages)
    instead of PORTAL_REDISPATCH_AFTER later. Returns how many were marked."""
    scope, params = _target_scope(key, "d")
    sql = f"""
        UPDATE {Delivery._meta.db_table} AS d SET dispatched_at = NULL
        WHERE {scope} AND d.status = %s AND d.next_attempt_at <= %s
          AND d.dispatched_at IS NOT NULL
    """  # noqa: S608
    params += [Delivery.Status.PENDING.value, db_value(Delivery, "updated_at", now)]
    with sql_cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


def deliveries_hand_back(*, delivery_ids: Sequence[int], token: uuid.UUID) -> int:
    """Give back claimed deliveries that were not tried: the try the claim counted is
    returned, and the status is what it was before the claim (`pending` before a first try,
    `retrying` after one); the dispatcher queues them again on its next run. Only rows still
    under lease `token` change. Returns how many did."""
    ids = [int(pk) for pk in delivery_ids]
    if not ids:
        return 0
    sql = f"""
        UPDATE {Delivery._meta.db_table}
        SET status = CASE WHEN attempts <= retry_base + 1 THEN %s ELSE %s END,
            attempts = attempts - 1, lease_token = NULL, lease_expires_at = NULL,
            dispatched_at = NULL, updated_at = %s
        WHERE lease_token = %s AND id IN ({", ".join(["%s"] * len(ids))})
    """  # noqa: S608
    params = [
        Delivery.Status.PENDING.value,
        Delivery.Status.RETRYING.value,
        db_value(Delivery, "updated_at", timezone.now()),
        db_value(Delivery, "lease_token", token),
        *ids,
    ]
    with sql_cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)


# --- recording a batch (outbox/record.py, outbox/health.py) ------------------------------------


def deliveries_locked(*, delivery_ids: Sequence[int], token: uuid.UUID) -> set[int]:
    """Of these deliveries, lock (until the transaction ends) those still under lease
    `token` and return their ids: the rows a batch may still record its outcomes on."""
    ids = [int(pk) for pk in delivery_ids]
    if not ids:
        return set()
    lock = " FOR UPDATE" if connection.vendor == "postgresql" else ""
    sql = f"""
        SELECT id FROM {Delivery._meta.db_table}
        WHERE lease_token = %s AND id IN ({", ".join(["%s"] * len(ids))}){lock}
    """  # noqa: S608
    with sql_cursor() as cursor:
        cursor.execute(sql, [db_value(Delivery, "lease_token", token), *ids])
        return {pk for (pk,) in cursor.fetchall()}


ATTEMPT_FIELDS: tuple[str, ...] = ("delivery", "number", "url", "request_headers")
ATTEMPT_FIELDS += ("response_status", "response_headers", "response_body", "duration_ms")
ATTEMPT_FIELDS += ("outcome", "error_class", "error_message", "created_at")


@functools.cache
def attempts_insert_sql(rows: int) -> str:
    names = ", ".join(columns(DeliveryAttempt)[name] for name in ATTEMPT_FIELDS)
    row = "(" + ", ".join(["%s"] * len(ATTEMPT_FIELDS)) + ")"
    return (
        f"INSERT INTO {connection.ops.quote_name(DeliveryAttempt._meta.db_table)} ({names})"  # noqa: S608
        f" VALUES {', '.join([row] * rows)}"
    )


def attempts_insert(rows: Sequence[dict[str, Any]]) -> None:
    """Insert a batch's attempt rows (each a dict of ATTEMPT_FIELDS, in that order) in one
    statement: DeliveryAttempt.objects.bulk_create built it through the ORM's compiler, more
    CPU than PostgreSQL spent inserting (one statement text per row count, prepared)."""
    if not rows:
        return
    params = [value for row in rows for value in db_values(DeliveryAttempt, row)]
    with sql_cursor() as cursor:
        cursor.execute(attempts_insert_sql(len(rows)), params)


def deliveries_finish(
    *, delivery_ids: Sequence[int], changes: Sequence[tuple[str, object]], now: datetime
) -> int:
    """Write one outcome (`changes`: (Delivery field, value) pairs) on these deliveries and
    end their lease; returns how many rows changed. Call under `deliveries_locked`."""
    ids = [int(pk) for pk in delivery_ids]
    if not ids:
        return 0
    fields = [*changes, ("lease_token", None), ("lease_expires_at", None), ("updated_at", now)]
    c = columns(Delivery)
    assignments = ", ".join(f"{c[name]} = %s" for name, _ in fields)
    sql = f"""
        UPDATE {Delivery._meta.db_table} SET {assignments}
        WHERE id IN ({", ".join(["%s"] * len(ids))})
    """  # noqa: S608
    params = [db_value(Delivery, name, value) for name, value in fields]
    with sql_cursor() as cursor:
        cursor.execute(sql, [*params, *ids])
        return int(cursor.rowcount)


@dataclass(frozen=True)
class Successes:
    """What a run of successful attempts adds to a partner's counters (outbox/health.py
    folds it): `count` more successes, the latency average becomes average * keep + added
    (`first` when there was none; an average below `floor` decays as 0)."""

    partner_id: int
    count: int
    keep: float
    added: float
    first: float
    floor: float


def partner_successes_sql(condition: str = "") -> str:
    """The UPDATE that counts `Successes` on its partner (`partner_successes_params`), with
    `condition` ANDed to its WHERE (outbox/finish.py folds it into a batch's record)."""
    return f"""
        UPDATE {Partner._meta.db_table}
        SET consecutive_failures = 0, failing_since = NULL, last_success_at = %s,
            success_count = success_count + %s,
            latency_ms_avg = COALESCE(
                CASE WHEN latency_ms_avg < %s THEN 0.0 ELSE latency_ms_avg * %s END + %s, %s)
        WHERE id = %s{condition}
    """  # noqa: S608


def partner_successes_params(successes: Successes, now: datetime) -> list[Any]:
    """The parameters of `partner_successes_sql` (before those of its condition)."""
    s, at = successes, db_value(Partner, "last_success_at", now)
    return [at, s.count, s.floor, s.keep, s.added, s.first, s.partner_id]


def partner_successes_add(successes: Successes, now: datetime) -> None:
    """Count these successes on their partner, in a statement of its own."""
    with sql_cursor() as cursor:
        cursor.execute(partner_successes_sql(), partner_successes_params(successes, now))


def batch_outranked(*, partner_id: int, known_slow: bool, token: uuid.UUID, now: datetime) -> bool:
    """After a claim for a slow or unproven partner: whether an earlier batch makes this one
    surplus to its fair share (see `_claimable_sql`), so it must give its deliveries back
    before sending anything.

    The claim's own check cannot see a batch claimed at the same instant (two workers taking
    two messages of the same backlog: each statement's snapshot predates the other's rows),
    so both would run. Checked once both are committed, exactly one of them yields: the
    later claimed (by lease expiry, then token) when the partner already has an earlier
    batch, or when it is known to be slow and PORTAL_SLOW_PARTNER_BATCHES earlier batches
    of slow partners are running.
    """
    deliveries, partners = Delivery._meta.db_table, Partner._meta.db_table
    delivering = Delivery.Status.DELIVERING
    lease = timedelta(seconds=settings.PORTAL_DELIVERY_LEASE_SECONDS)
    earlier = "(s.lease_expires_at < %s OR (s.lease_expires_at = %s AND s.lease_token < %s))"
    sql = f"""
        SELECT
          EXISTS (
            SELECT 1 FROM {deliveries} s
            WHERE s.partner_id = %s AND s.status = '{delivering}'
              AND s.lease_expires_at >= %s AND {earlier}),
          (SELECT COUNT(DISTINCT s.lease_token) FROM {deliveries} s
            JOIN {partners} sp ON sp.id = s.partner_id
            WHERE s.status = '{delivering}' AND s.lease_expires_at >= %s
              AND sp.latency_ms_avg >= %s AND {earlier})
    """  # noqa: S608
    mine = db_value(Delivery, "lease_token", token)
    expiry = db_value(Delivery, "lease_expires_at", now + lease)
    at = db_value(Delivery, "updated_at", now)
    params = [partner_id, at, expiry, expiry, mine]
    params += [at, settings.PORTAL_SLOW_PARTNER_MS, expiry, expiry, mine]
    with sql_cursor() as cursor:
        cursor.execute(sql, params)
        same_partner, slow_batches = cursor.fetchone()
    return bool(same_partner) or (
        known_slow and int(slow_batches) >= settings.PORTAL_SLOW_PARTNER_BATCHES
    )


def deliveries_release(*, delivery_ids: Sequence[int]) -> int:
    """Of these deliveries, which a queue message named but the claim did not take, mark
    those still waiting as not queued, so the dispatcher queues them as soon as they may go
    (a partner's fair share frees up, its failing attempt ends) rather than after
    PORTAL_REDISPATCH_AFTER. Returns how many were marked."""
    ids = [int(pk) for pk in delivery_ids]
    if not ids:
        return 0
    waiting = ", ".join(["%s"] * len(Delivery.WAITING_STATUSES))
    sql = f"""
        UPDATE {Delivery._meta.db_table} SET dispatched_at = NULL
        WHERE id IN ({", ".join(["%s"] * len(ids))}) AND status IN ({waiting})
          AND dispatched_at IS NOT NULL
    """  # noqa: S608
    with sql_cursor() as cursor:
        cursor.execute(sql, [*ids, *Delivery.WAITING_STATUSES])
        return int(cursor.rowcount)


# --- per-ticket order -------------------------------------------------------------------------


class Finishing(Protocol):
    """A delivery becoming final (a Delivery, or a batch's Sendable)."""

    @property
    def pk(self) -> Any: ...
    @property
    def target(self) -> str: ...
    @property
    def ticket_id(self) -> int: ...


def queue_next_in_order(finished: Iterable[Finishing]) -> None:
    """When deliveries become final, the next open one of each (target, ticket) goes at once
    (marked as queued now; its message is sent on commit).

    Call inside the transaction that made them final. One statement for a whole batch: the
    ORM's OR of one condition per pair cost more worker CPU to build than PostgreSQL spent
    running it (bench/delivery.py). VALUES columns are column1, column2, … on PostgreSQL and
    SQLite alike.
    """
    after: dict[tuple[str, int], int] = {}
    for delivery in finished:
        pair = (delivery.target, delivery.ticket_id)
        after[pair] = min(after.get(pair, delivery.pk), delivery.pk)
    if not after:
        return
    table = Delivery._meta.db_table
    final = ", ".join(["%s"] * len(Delivery.FINAL_STATUSES))
    sql = f"""
        UPDATE {table} SET dispatched_at = %s
        WHERE id IN (
            SELECT MIN(n.id) FROM {table} n
            JOIN (VALUES {", ".join(["(%s, %s, %s)"] * len(after))}) v
              ON n.target = v.column1 AND n.ticket_id = v.column2 AND n.id > v.column3
            WHERE n.status NOT IN ({final})
            GROUP BY n.target, n.ticket_id)
        RETURNING id, target, tenant_id
    """  # noqa: S608
    params = [
        db_value(Delivery, "dispatched_at", timezone.now()),
        *(value for (target, ticket), pk in after.items() for value in (target, ticket, pk)),
        *Delivery.FINAL_STATUSES,
    ]
    with sql_cursor() as cursor:
        cursor.execute(sql, params)
        rows = [(pk, batch_key(target, tenant)) for pk, target, tenant in cursor.fetchall()]
    next_in_order_queued(rows)


def next_in_order_queued(rows: Sequence[tuple[int, str]]) -> None:
    """Send the queue messages of deliveries marked queued by the per-ticket order, as (id,
    batch key), once the transaction that marked them commits (at once outside one)."""
    if rows:
        transaction.on_commit(lambda: enqueue(rows), robust=True)
        # and a pump lingering on the target takes it at once (whichever comes first: the
        # other finds it claimed)
        transaction.on_commit(lambda: pump_bells_ring(key for _, key in rows), robust=True)


# --- the dispatcher ---------------------------------------------------------------------------


def deliveries_due(*, now: datetime, limit: int = 500) -> list[tuple[int, str]]:
    """Deliveries to queue now, oldest due first, as (id, batch key): claimable (see
    `_claimable_sql`) and not queued in the last PORTAL_REDISPATCH_AFTER seconds, so a
    backlog in the broker is not flooded with duplicates every second."""
    stale = now - timedelta(seconds=settings.PORTAL_REDISPATCH_AFTER)
    sql = f"""
        SELECT d.id, d.target, d.tenant_id FROM {Delivery._meta.db_table} d
        WHERE {_claimable_sql()} AND (d.dispatched_at IS NULL OR d.dispatched_at < %s)
        ORDER BY d.next_attempt_at, d.id
        LIMIT %s
    """  # noqa: S608
    with sql_cursor() as cursor:
        stale_at = db_value(Delivery, "dispatched_at", stale)
        # a token no lease has: every running batch counts
        cursor.execute(sql, [*_claimable_params(now, uuid.uuid4()), stale_at, limit])
        return [(pk, batch_key(target, tenant)) for pk, target, tenant in cursor.fetchall()]


def oldest_claimable_at(*, now: datetime) -> datetime | None:
    """When the oldest delivery that may be attempted now (see `_claimable_sql`) became due,
    or None: how far behind the workers are. Deliveries held back on purpose (a paused or
    failing partner, an older message of the ticket still open) do not count. Walks the
    due index in time order and stops at the first claimable row."""
    sql = f"""
        SELECT d.next_attempt_at FROM {Delivery._meta.db_table} d
        WHERE {_claimable_sql()}
        ORDER BY d.next_attempt_at
        LIMIT 1
    """  # noqa: S608
    with sql_cursor() as cursor:
        cursor.execute(sql, _claimable_params(now, uuid.uuid4()))
        row = cursor.fetchone()
    if row is None:
        return None
    value = row[0]
    if isinstance(value, str):  # SQLite without the ORM's converters
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return timezone.make_aware(value, UTC) if timezone.is_naive(value) else value


def deliveries_dispatch(*, now: datetime, limit: int = 500) -> int:
    """Queue every due delivery not queued recently, in batches per target; returns how
    many were queued."""
    rows = deliveries_due(now=now, limit=limit)
    if rows:
        Delivery.objects.filter(pk__in=[pk for pk, _ in rows]).update(dispatched_at=now)
        enqueue(rows)
    return len(rows)


# --- queue messages ---------------------------------------------------------------------------


def batch_key(target: str, tenant_id: int) -> str:
    """What a batch is one of: a partner, or one tenant's engine relay or operations URL
    (every tenant's relay target is "engine", but one tenant's engine must not hold up
    another's)."""
    per_tenant = (Delivery.ENGINE_TARGET, Delivery.OPERATIONS_TARGET)
    return f"{target}:{tenant_id}" if target in per_tenant else target


def parse_batch_key(key: str) -> tuple[str, int | None]:
    """(target, tenant id) of a batch key; the tenant only for the per-tenant targets."""
    for target in (Delivery.ENGINE_TARGET, Delivery.OPERATIONS_TARGET):
        if key.startswith(f"{target}:"):
            return target, int(key[len(target) + 1 :])
    return key, None


def batches_by_target(rows: Iterable[tuple[int, str]], size: int) -> list[list[int]]:
    """Group (delivery id, batch key) pairs into queue messages: one key each (a slow partner
    or engine never holds up another's batch), at most `size` ids each, in id order."""
    by_target: dict[str, list[int]] = defaultdict(list)
    for pk, target in sorted(rows):
        by_target[target].append(pk)
    return [pks[i : i + size] for pks in by_target.values() for i in range(0, len(pks), size)]


def enqueue(rows: Iterable[tuple[int, str]]) -> None:
    """Send the queue messages for these (delivery id, batch key) pairs, in batches of at
    most PORTAL_DELIVERY_BATCH ids of one target each."""
    for batch in batches_by_target(rows, settings.PORTAL_DELIVERY_BATCH):
        publish(SEND_BATCH_TASK, batch)


# --- waking pumps ---------------------------------------------------------------------------
# New deliveries are not named in queue messages: accepting an event wakes its targets, and a
# pump task per target claims that target's due deliveries from the database until none is
# left (sender.deliveries_pump). A flag per target in the cache (Redis in production) says a
# pump is queued or running, so a burst of events to one partner costs one queue message, not
# one per event; a cache write is all an event pays. The dispatcher stays the safety net: a
# wake that is lost (cache or broker down, a worker killed) delays a delivery, never loses it.

PUMP_TASK = "integrations.tasks.delivery_pump"
# Seconds a flag outlives a pump that never cleared it (its worker was killed): after that,
# the next event queues a pump again. A pump that goes on after its slice renews it.
WAKE_TTL = 60


def _flag(key: str, slot: int) -> str:
    return f"portal:pump:{key}" if slot == 0 else f"portal:pump:{key}#{slot}"


def _bell(key: str) -> str:
    return f"portal:bell:{key}"


def wake(keys: Iterable[str]) -> None:
    """Make sure a pump will look at each of these targets (batch keys) after now: queue one
    unless one is queued or running already (its flag is up), and then ring its bell (a
    pump with nothing left lingers on it a moment: `pump_bell_wait`). Never raises: a
    cache or broker that is down must not fail the caller (the dispatcher finds the rows
    later)."""
    for key in sorted(set(keys)):
        if pump_flag_take(key, ring=True):
            pump_requeue(key)  # or, refused, the flag goes down: the next event tries again


def pump_requeue(key: str, slot: int = 0, *, refresh: bool = False) -> None:
    """Queue the target's pump in `slot`, its flag up; with `refresh` (a pump that used up its
    slice goes on later) the flag gets WAKE_TTL seconds again, or a long backlog would see it
    expire under a running chain of pumps and a second chain start."""
    if refresh:
        try:
            cache.touch(_flag(key, slot), WAKE_TTL)
        except Exception:
            logger.warning("pump flag of %s: cache unavailable", key, exc_info=True)
    if not publish(PUMP_TASK, key, slot):
        pump_flag_drop(key, slot)


def pump_recruit(key: str) -> bool:
    """Queue one more pump for the target (a pump found a full batch waiting: a backlog),
    in the first free slot of PORTAL_PUMPS_PER_TARGET; False when all are taken."""
    for slot in range(1, settings.PORTAL_PUMPS_PER_TARGET):
        if pump_flag_take(key, slot):
            pump_requeue(key, slot)
            return True
    return False


def pump_flag_take(key: str, slot: int = 0, *, ring: bool = False) -> bool:
    """Raise the flag of the target's pump `slot` (0: the one events wake); False when it
    was up already, and then, with `ring`, its bell is rung (in the same round trip). A
    cache that is down counts as not up (one pump too many is harmless, one too few a
    delay)."""
    try:
        return _flag_add(_flag(key, slot), _bell(key) if ring else None)
    except Exception:
        logger.warning("pump flag of %s: cache unavailable", key, exc_info=True)
        return True


# SET the flag NX, or else ring the bell: leave one entry in its list (a pump waiting on it
# pops it; a busy pump finds it when it next waits, and looks once more for nothing).
_TAKE_OR_RING = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 1 end
if redis.call('LLEN', KEYS[2]) == 0 then
    redis.call('RPUSH', KEYS[2], '1')
    redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return 0
"""


def _redis(backend: RedisCache) -> Any:
    """One redis-py client kept on this thread's cache backend (Django's RedisCache builds a
    client object on every call: more CPU than the round trip, and every accepted event
    takes a flag)."""
    client = backend.__dict__.get("_pump_client")
    if client is None:
        redis = backend._cache  # type: ignore[attr-defined]  # Django's RedisCacheClient
        client = backend.__dict__["_pump_client"] = redis.get_client(write=True)
    return client


def _flag_add(name: str, bell: str | None = None) -> bool:
    """cache.add(name, 1, WAKE_TTL), and when it was there already and `bell` is given, ring
    that bell. On Redis through one client kept on this thread's cache (`_redis`), with the
    same key and value cache.add writes, so cache.delete and cache.touch see it; elsewhere
    there is no bell (pumps do not linger there: `bells`)."""
    backend = caches[DEFAULT_CACHE_ALIAS]  # this thread's
    if not isinstance(backend, RedisCache):
        return bool(cache.add(name, 1, WAKE_TTL))
    client = _redis(backend)
    key = backend.make_and_validate_key(name)
    value = backend._cache._serializer.dumps(1)  # type: ignore[attr-defined]
    if bell is None:
        return bool(client.set(key, value, nx=True, ex=WAKE_TTL))
    ring = backend.make_and_validate_key(bell)
    script = _script(backend, _TAKE_OR_RING)
    return bool(script(keys=[key, ring], args=[value, WAKE_TTL], client=client))


def _script(backend: RedisCache, source: str) -> Any:
    """The Lua script `source`, registered once on this thread's cache backend."""
    scripts = backend.__dict__.setdefault("_pump_scripts", {})
    if source not in scripts:
        scripts[source] = _redis(backend).register_script(source)
    return scripts[source]


# Ring the bell whether or not the flag is up (a pump that is not lingering finds the ring
# when it next waits: one look for nothing).
_RING = """
for i, bell in ipairs(KEYS) do
    if redis.call('LLEN', bell) == 0 then
        redis.call('RPUSH', bell, '1')
        redis.call('EXPIRE', bell, ARGV[1])
    end
end
return 0
"""


def pump_bells_ring(keys: Iterable[str]) -> None:
    """Ring these targets' bells (a lingering pump claims at once); nothing without bells.
    Never raises: a ring that is lost leaves the row to its queue message."""
    backend = caches[DEFAULT_CACHE_ALIAS]
    names = sorted(set(keys))
    if not names or not isinstance(backend, RedisCache):
        return
    try:
        bells = [backend.make_and_validate_key(_bell(key)) for key in names]
        _script(backend, _RING)(keys=bells, args=[WAKE_TTL], client=_redis(backend))
    except Exception:
        logger.warning("pump bells of %s: cache unavailable", names, exc_info=True)


def bells() -> bool:
    """Whether pumps have bells here: the cache is Redis (elsewhere a pump with nothing left
    ends at once, and the next event queues another)."""
    return isinstance(caches[DEFAULT_CACHE_ALIAS], RedisCache)


# Shortest wait on a bell: Redis reads a BLPOP timeout of 0 as "for ever".
_LEAST_WAIT = 0.01


def pump_bell_wait(key: str, timeout: float) -> bool | None:
    """Wait up to `timeout` seconds for the target's bell (`wake` rings it when the pump's
    flag is up already); True when it rang, False when it did not. None, at once, when
    there is no bell to wait on: not Redis, or the cache failed (down, or a Redis older than
    6.0 refusing a timeout under a second): the pump then ends, as without lingering."""
    backend = caches[DEFAULT_CACHE_ALIAS]
    if not isinstance(backend, RedisCache):
        return None
    try:
        ring = backend.make_and_validate_key(_bell(key))
        return _redis(backend).blpop([ring], timeout=max(timeout, _LEAST_WAIT)) is not None
    except Exception:
        logger.warning("pump bell of %s: cache unavailable", key, exc_info=True)
        return None


def tasks_waiting() -> bool:
    """Whether a queue message waits on the broker for a worker slot (a lingering pump then
    gives its slot back). True when the broker cannot say (not lingering is always safe)."""
    try:
        with current_app.pool.acquire(block=True, timeout=1) as conn:
            name = current_app.conf.task_default_queue
            # not passive: Redis drops an empty list, and a passive look at a queue that is
            # not there is an error; declaring a queue there writes nothing
            return bool(conn.default_channel.queue_declare(queue=name)[1])
    except Exception:
        logger.warning("could not read the broker's queue length", exc_info=True)
        return True


def pump_flag_drop(key: str, slot: int = 0) -> None:
    """Lower the flag of the target's pump `slot` (it is done): the next wake (slot 0) or
    recruit queues one again."""
    try:
        cache.delete(_flag(key, slot))
    except Exception:
        logger.warning("pump flag of %s: cache unavailable", key, exc_info=True)


def publish(task: str, *args: Any) -> bool:
    """Send one queue message for the task named `task`; True when it was sent. A broker
    error is logged, not raised: a broker that is down must not fail the caller (a delivery
    is in the database and the dispatcher queues it again; see `run_or_publish` for work
    nothing would find again)."""
    try:
        current_app.signature(task, args=args).delay()
    except Exception:
        logger.exception("could not queue %s%r", task, args)
        return False
    return True


def run_or_publish(task: str, *args: Any) -> None:
    """Queue the task named `task`, or, when the broker refuses it, run it here and now:
    for work the database would not bring back (an alert of a pause that happens once)."""
    if not publish(task, *args):
        logger.warning("running %s%r in this process instead", task, args)
        try:
            # the task's body only: no task signals (they would recycle this process's
            # database connection in the middle of the caller's work)
            current_app.tasks[task].run(*args)
        except Exception:
            logger.exception("%s%r failed", task, args)
