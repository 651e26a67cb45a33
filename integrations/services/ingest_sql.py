"""The ingest write path's hand-written SQL (SPEC §3, §5): what one accepted event writes.

Every accepted event runs these statements, and building them through the ORM's query
compiler took about a quarter of the web process's CPU per request (py-spy on
bench/ingest.py, docs/PERFORMANCE.md). So each statement below is one function with its
reason; its text is built once per process from the models' metadata (table and column names
are never spelled out by hand) and only the values are adapted per call, as each field's own
get_db_prep_save would (outbox.sql.db_values: JSON, bytes, UUIDs and datetimes come out right on
PostgreSQL and SQLite alike). INSERT … ON CONFLICT and RETURNING run on PostgreSQL and on
SQLite >= 3.35; an incoming event's writes are one statement on PostgreSQL only (a
data-modifying WITH). Only names from the models' metadata, fixed SQL and placeholders are
formatted in (hence S608).
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db import connection, models, transaction
from django.utils import dateparse, timezone

from integrations import logs, tracing
from integrations.models import (
    ApiKey,
    Contact,
    Delivery,
    Event,
    IdempotencyRecord,
    Partner,
    Tenant,
    Ticket,
)
from integrations.outbox.sql import columns as _columns
from integrations.outbox.sql import db_values, sql_cursor
from integrations.payloads import MessagePayload


def _qn(name: str) -> str:
    return connection.ops.quote_name(name)


def _values(model: type[models.Model], row: dict[str, Any]) -> list[Any]:
    """The row's values, adapted by each field as the ORM would."""
    return db_values(model, row)


@functools.cache
def _insert_sql(model: type[models.Model], names: tuple[str, ...], rows: int, tail: str) -> str:
    c = _columns(model)
    row = "(" + ", ".join(["%s"] * len(names)) + ")"
    return (
        f"INSERT INTO {_qn(model._meta.db_table)} ({', '.join(c[n] for n in names)})"  # noqa: S608
        f" VALUES {', '.join([row] * rows)}{tail}"
    )


def _insert_select_sql(
    model: type[models.Model],
    names: tuple[str, ...],
    source: str,
    exprs: dict[str, str],
    tail: str,
) -> str:
    """INSERT … SELECT of one row from `source` (a CTE's name): each column a placeholder,
    or the expression `exprs` gives for it (a column of the CTE)."""
    c = _columns(model)
    values = ", ".join(exprs.get(n, "%s") for n in names)
    return (
        f"INSERT INTO {_qn(model._meta.db_table)} ({', '.join(c[n] for n in names)})"  # noqa: S608
        f" SELECT {values} FROM {source}{tail}"
    )


def _datetime(value: Any) -> datetime | None:
    """A datetime column as read without the ORM (SQLite gives text), aware in UTC."""
    if value is None or isinstance(value, datetime):
        parsed = value
    else:
        parsed = dateparse.parse_datetime(str(value))
    if parsed is not None and timezone.is_naive(parsed):
        parsed = timezone.make_aware(parsed, UTC)
    return parsed


# --- who is calling -------------------------------------------------------------------------
# Every API request authenticates, and every event names its tenant: loading ApiKey, Partner
# and Tenant instances cost more than the rest of an accepted event (the ORM's compiler, and
# a Tenant decrypts its three secrets on load). These read the few columns a caller needs in
# one SELECT each, on every request: nothing is cached, so a revoked key, a disabled partner
# or an inactive tenant is refused by the very next request.

_TENANT_FIELDS = ("id", "owner", "is_active", "time_zone", "sticker_text", "engine_base_url")
_TENANT_FIELDS += ("engine_send_message_path", "engine_command_path")


@dataclass(frozen=True)
class CallerTenant:
    """What accepting an event needs of its tenant (no secrets)."""

    pk: int
    owner: str
    is_active: bool
    time_zone: str
    sticker_text: str
    engine_base_url: str
    engine_send_message_path: str
    engine_command_path: str


def _tenant(row: Sequence[Any]) -> CallerTenant:
    pk, owner, active, zone, sticker, base, send_path, command_path = row
    return CallerTenant(pk, owner, bool(active), zone, sticker, base, send_path, command_path)


@dataclass(frozen=True)
class CallerPartner:
    """What the API needs of a partner key's partner."""

    pk: int
    name: str
    state: str
    rate_limit: str
    tenant: CallerTenant

    @property
    def tenant_id(self) -> int:
        return self.tenant.pk


@dataclass(frozen=True)
class CallerKey:
    """An API key as authentication reads it."""

    pk: int
    prefix: str
    kind: str
    key_hash: str
    revoked_at: datetime | None
    expires_at: datetime | None
    last_used_at: datetime | None
    all_tenants: bool
    partner: CallerPartner | None


@functools.cache
def _key_sql() -> str:
    k, p, t = _columns(ApiKey), _columns(Partner), _columns(Tenant)
    keys = ("id", "prefix", "kind", "key_hash", "revoked_at", "expires_at", "last_used_at")
    keys += ("all_tenants",)
    return (
        "SELECT "  # noqa: S608
        + ", ".join(
            [f"k.{k[n]}" for n in keys]
            + [f"p.{p[n]}" for n in ("id", "name", "state", "rate_limit")]
            + [f"t.{t[n]}" for n in _TENANT_FIELDS]
        )
        + f" FROM {_qn(ApiKey._meta.db_table)} k"
        f" LEFT JOIN {_qn(Partner._meta.db_table)} p ON p.{p['id']} = k.{k['partner']}"
        f" LEFT JOIN {_qn(Tenant._meta.db_table)} t ON t.{t['id']} = p.{p['tenant']}"
        f" WHERE k.{k['prefix']} = %s"
    )


def key_lookup(prefix: str) -> CallerKey | None:
    """The API key with this prefix, with its partner and the partner's tenant; None when
    there is none."""
    with sql_cursor() as cursor:
        cursor.execute(_key_sql(), [prefix])
        row = cursor.fetchone()
    if row is None:
        return None
    pk, prefix, kind, key_hash, revoked, expires, used, all_tenants = row[:8]
    partner = None
    if row[8] is not None:
        partner = CallerPartner(row[8], row[9], row[10], row[11], _tenant(row[12:]))
    return CallerKey(
        pk,
        prefix,
        kind,
        key_hash,
        _datetime(revoked),
        _datetime(expires),
        _datetime(used),
        bool(all_tenants),
        partner,
    )


@functools.cache
def _tenant_sql(named: bool) -> str:
    t = _columns(Tenant)
    through = ApiKey.tenants.through
    n = _columns(through)
    columns = ", ".join(f"t.{t[n]}" for n in _TENANT_FIELDS)
    where = f"t.{t['owner']} = %s AND t.{t['is_active']}"
    if named:
        where += (
            f" AND EXISTS (SELECT 1 FROM {_qn(through._meta.db_table)} n"  # noqa: S608
            f" WHERE n.{n['apikey']} = %s AND n.{n['tenant']} = t.{t['id']})"
        )
    return f"SELECT {columns} FROM {_qn(Tenant._meta.db_table)} t WHERE {where}"  # noqa: S608


def active_tenant(owner: str, *, named_by_key: int | None = None) -> CallerTenant | None:
    """The active tenant whose Tenant ID is `owner` (and, with `named_by_key`, that this
    engine key names among its tenants), or None."""
    params: list[Any] = [owner] if named_by_key is None else [owner, named_by_key]
    with sql_cursor() as cursor:
        cursor.execute(_tenant_sql(named_by_key is not None), params)
        row = cursor.fetchone()
    return _tenant(row) if row is not None else None


# --- accepting an event ------------------------------------------------------------------------


@dataclass(frozen=True)
class PartnerTarget:
    """What a delivery row needs of a partner that gets a copy of an event."""

    id: int
    retry_schedule: str


@functools.cache
def _partner_targets_sql() -> str:
    c = _columns(Partner)
    return (
        f"SELECT {c['id']}, {c['channels']}, {c['retry_schedule']}"  # noqa: S608
        f" FROM {_qn(Partner._meta.db_table)}"
        f" WHERE {c['tenant']} = %s AND {c['state']} <> %s ORDER BY {c['name']}"
    )


def partner_targets(*, tenant_id: int, channel: str) -> list[PartnerTarget]:
    """The tenant's partners that get a copy of an event on `channel`: subscribed to it (no
    channels means every channel) and not disabled by an admin; by name. A paused partner
    still gets its rows: they wait until it is resumed (never dropped).

    One SELECT of three columns: loading Partner instances cost more than the query."""
    with sql_cursor() as cursor:
        cursor.execute(_partner_targets_sql(), [tenant_id, Partner.State.DISABLED.value])
        return _subscribed(cursor.fetchall(), channel)


@functools.cache
def _tenant_targets_sql(named: bool) -> str:
    p = _columns(Partner)
    select, _, rest = _tenant_sql(named).partition(" FROM ")
    table, _, where = rest.partition(" WHERE ")
    return (
        f"{select}, p.{p['id']}, p.{p['channels']}, p.{p['retry_schedule']}"  # noqa: S608
        f" FROM {table} LEFT JOIN {_qn(Partner._meta.db_table)} p"
        f" ON p.{p['tenant']} = t.{_columns(Tenant)['id']} AND p.{p['state']} <> %s"
        f" WHERE {where} ORDER BY p.{p['name']}"
    )


def active_tenant_targets(
    owner: str, *, channel: str, named_by_key: int | None = None
) -> tuple[CallerTenant, list[PartnerTarget]] | None:
    """`active_tenant` and, read in the same SELECT, its `partner_targets` for `channel`:
    one round trip where an engine event needs both."""
    params: list[Any] = [Partner.State.DISABLED.value, owner]
    if named_by_key is not None:
        params.append(named_by_key)
    with sql_cursor() as cursor:
        cursor.execute(_tenant_targets_sql(named_by_key is not None), params)
        rows = cursor.fetchall()
    if not rows:
        return None
    width = len(_TENANT_FIELDS)
    partners = [row[width:] for row in rows if row[width] is not None]
    return _tenant(rows[0][:width]), _subscribed(partners, channel)


@dataclass(frozen=True)
class KeyState:
    """What a request must check again of an API key it took from the process's cache."""

    pk: int
    revoked_at: datetime | None
    expires_at: datetime | None
    last_used_at: datetime | None


@functools.cache
def _key_tenant_targets_sql() -> str:
    k, t, p = _columns(ApiKey), _columns(Tenant), _columns(Partner)
    through = ApiKey.tenants.through
    n = _columns(through)
    columns = [f"k.{k[name]}" for name in ("revoked_at", "expires_at", "last_used_at")]
    columns += [f"t.{t[name]}" for name in _TENANT_FIELDS]
    columns += [f"p.{p[name]}" for name in ("id", "channels", "retry_schedule")]
    return (
        f"SELECT {', '.join(columns)} FROM {_qn(ApiKey._meta.db_table)} k"  # noqa: S608
        f" LEFT JOIN {_qn(Tenant._meta.db_table)} t"
        f" ON t.{t['owner']} = %s AND t.{t['is_active']} AND (k.{k['all_tenants']} OR EXISTS"
        f" (SELECT 1 FROM {_qn(through._meta.db_table)} n"
        f" WHERE n.{n['apikey']} = k.{k['id']} AND n.{n['tenant']} = t.{t['id']}))"
        f" LEFT JOIN {_qn(Partner._meta.db_table)} p"
        f" ON p.{p['tenant']} = t.{t['id']} AND p.{p['state']} <> %s"
        f" WHERE k.{k['id']} = %s AND k.{k['key_hash']} = %s AND k.{k['partner']} IS NULL"
        f" ORDER BY p.{p['name']}"
    )


def key_tenant_targets(
    key: CallerKey, owner: str, *, channel: str
) -> tuple[KeyState, tuple[CallerTenant, list[PartnerTarget]] | None] | None:
    """`active_tenant_targets` for the engine key `key` (all its tenants, or those it names,
    read now), with the key's row read again in the same SELECT: None when the key is gone,
    else its state and the tenant and targets (None when the key may not act for `owner`).
    For a key the process took from its cache (accounts.principal_authenticate): its check
    and the tenant's lookup are one round trip."""
    key_id = key.pk
    params = [owner, Partner.State.DISABLED.value, key_id, key.key_hash]
    with sql_cursor() as cursor:
        cursor.execute(_key_tenant_targets_sql(), params)
        rows = cursor.fetchall()
    if not rows:
        return None
    revoked, expires, used = rows[0][:3]
    state = KeyState(key_id, _datetime(revoked), _datetime(expires), _datetime(used))
    width = len(_TENANT_FIELDS)
    if rows[0][3] is None:
        return state, None
    partners = [row[3 + width :] for row in rows if row[3 + width] is not None]
    return state, (_tenant(rows[0][3 : 3 + width]), _subscribed(partners, channel))


def _subscribed(rows: Sequence[Sequence[Any]], channel: str) -> list[PartnerTarget]:
    """The (id, channels, retry_schedule) rows subscribed to `channel`: no channels means
    every channel."""
    targets = []
    for pk, channels, schedule in rows:
        subscribed = json.loads(channels) if isinstance(channels, (str, bytes)) else channels
        if not subscribed or channel in subscribed:
            targets.append(PartnerTarget(id=pk, retry_schedule=schedule))
    return targets


CONTACT_FIELDS = ("tenant", "contact_id", "customer_name", "channel", "account_id")
CONTACT_FIELDS += ("first_seen", "last_seen")


@functools.cache
def _contact_upsert_sql() -> str:
    c = _columns(Contact)
    updated = ("customer_name", "channel", "account_id", "last_seen")
    return _insert_sql(
        Contact,
        CONTACT_FIELDS,
        1,
        f" ON CONFLICT ({c['tenant']}, {c['contact_id']}) DO UPDATE SET "
        + ", ".join(f"{c[n]} = EXCLUDED.{c[n]}" for n in updated)
        + f" RETURNING {c['id']}",
    )


def _contact_row(*, tenant_id: int, msg: MessagePayload, now: datetime) -> dict[str, Any]:
    return dict(
        zip(
            CONTACT_FIELDS,
            (tenant_id, msg.contact_id, msg.customer_name, msg.channel, msg.account_id, now, now),
            strict=True,
        )
    )


def contact_upsert(*, tenant_id: int, msg: MessagePayload, now: datetime) -> int:
    """Insert or update the event's contact in one statement; `first_seen` is kept from the
    first insert. Returns the contact's pk."""
    row = _contact_row(tenant_id=tenant_id, msg=msg, now=now)
    with sql_cursor() as cursor:
        cursor.execute(_contact_upsert_sql(), _values(Contact, row))
        return cursor.fetchone()[0]


TICKET_FIELDS = ("tenant", "ticket_number", "contact", "channel", "account_id")
TICKET_FIELDS += ("customer_name", "created_date", "group_id", "language", "status")
TICKET_FIELDS += ("closed_by", "closed_at", "last_sequence", "created_at", "updated_at")


@functools.cache
def _ticket_upsert_tail() -> str:
    table = _qn(Ticket._meta.db_table)
    c = _columns(Ticket)
    closed = f"{table}.{c['status']} = '{Ticket.Status.CLOSED}'"
    return (
        f" ON CONFLICT ({c['tenant']}, {c['ticket_number']}) DO UPDATE SET"
        f" {c['contact']} = EXCLUDED.{c['contact']},"
        f" {c['channel']} = EXCLUDED.{c['channel']},"
        f" {c['account_id']} = EXCLUDED.{c['account_id']},"
        f" {c['customer_name']} = EXCLUDED.{c['customer_name']},"
        f" {c['created_date']} = EXCLUDED.{c['created_date']},"
        # Rule: an empty groupId or language keeps the ticket's earlier one.
        f" {c['group_id']} = CASE WHEN EXCLUDED.{c['group_id']} = ''"
        f" THEN {table}.{c['group_id']} ELSE EXCLUDED.{c['group_id']} END,"
        f" {c['language']} = CASE WHEN EXCLUDED.{c['language']} = ''"
        f" THEN {table}.{c['language']} ELSE EXCLUDED.{c['language']} END,"
        # Rule: an incoming event re-opens a closed ticket (who closed it, and when, go).
        f" {c['closed_by']} = CASE WHEN {closed} THEN '' ELSE {table}.{c['closed_by']} END,"
        f" {c['closed_at']} = CASE WHEN {closed} THEN NULL ELSE {table}.{c['closed_at']} END,"
        f" {c['status']} = EXCLUDED.{c['status']},"
        # The event's place in its ticket (SPEC §5 order).
        f" {c['last_sequence']} = {table}.{c['last_sequence']} + 1,"
        f" {c['updated_at']} = EXCLUDED.{c['updated_at']}"
        f" RETURNING {c['id']}, {c['last_sequence']}"
    )


def _ticket_row(
    *, tenant_id: int, msg: MessagePayload, contact_pk: int | None, created_date: datetime, now
) -> dict[str, Any]:
    """The ticket row an incoming event inserts (or updates by `_ticket_upsert_tail`'s
    rules); `contact_pk` None where the statement takes it from the contact it upserts."""
    values = (tenant_id, msg.ticket_number, contact_pk, msg.channel, msg.account_id)
    values += (msg.customer_name, created_date, msg.group_id, msg.language)
    # a new ticket is open, and this event is its first (sequence 1)
    values += (Ticket.Status.OPEN.value, "", None, 1, now, now)
    return dict(zip(TICKET_FIELDS, values, strict=True))


def ticket_upsert(
    *, tenant_id: int, msg: MessagePayload, contact_pk: int, created_date: datetime, now: datetime
) -> tuple[int, int]:
    """Create or update the ticket of an incoming event and take its next event sequence
    number, in one statement; returns (ticket pk, sequence). The rules it applies to an
    existing ticket: channel, accountId, customerName, createdDate and contact are the
    event's; an empty groupId or language keeps the earlier one; a closed ticket re-opens.

    The statement locks the ticket row until the transaction ends: events of one ticket take
    their sequence numbers one after the other, in the order they entered. A concurrent first
    message of a new ticket waits on the unique index and then updates the row the other one
    inserted (PostgreSQL); SQLite runs one writer at a time.
    """
    row = _ticket_row(
        tenant_id=tenant_id, msg=msg, contact_pk=contact_pk, created_date=created_date, now=now
    )
    with sql_cursor() as cursor:
        sql = _insert_sql(Ticket, TICKET_FIELDS, 1, _ticket_upsert_tail())
        cursor.execute(sql, _values(Ticket, row))
        ticket_pk, sequence = cursor.fetchone()
    return ticket_pk, sequence


EVENT_FIELDS = ("id", "tenant", "kind", "source", "partner", "ticket", "ticket_number")
EVENT_FIELDS += ("sequence", "raw_body", "payload", "idempotency_key", "received_at")
EVENT_FIELDS += ("request_id", "trace_context")


def event_insert(
    *,
    tenant_id: int,
    kind: str,
    source: str,
    partner_id: int | None,
    ticket_id: int,
    ticket_number: str,
    sequence: int,
    raw_body: bytes,
    payload: dict[str, Any],
    idempotency_key: str,
    received_at: datetime,
) -> uuid.UUID:
    """Store an event with its ticket sequence number (taken under the ticket's row lock);
    returns its new id."""
    event_id = uuid.uuid4()
    row = _event_row(
        id=event_id,
        tenant=tenant_id,
        kind=kind,
        source=source,
        partner=partner_id,
        ticket=ticket_id,
        ticket_number=ticket_number,
        sequence=sequence,
        raw_body=raw_body,
        payload=payload,
        idempotency_key=idempotency_key,
        received_at=received_at,
    )
    with sql_cursor() as cursor:
        cursor.execute(_insert_sql(Event, EVENT_FIELDS, 1, ""), _values(Event, row))
    return event_id


def _event_row(**fields: Any) -> dict[str, Any]:
    """An event row of `fields`, with the request's id and trace context, in EVENT_FIELDS'
    order (the order of the placeholders)."""
    fields.update(request_id=logs.current("request_id"), trace_context=tracing.traceparent())
    return {name: fields[name] for name in EVENT_FIELDS if name in fields}


@dataclass(frozen=True)
class NewDelivery:
    """One delivery row of a new event."""

    partner_id: int | None
    target: str
    endpoint: str
    status: str
    next_attempt_at: datetime | None
    dispatched_at: datetime | None
    last_error: str = ""


DELIVERY_FIELDS = ("event", "tenant", "ticket", "partner", "target", "endpoint", "status")
DELIVERY_FIELDS += ("attempts", "retry_base", "next_attempt_at", "dispatched_at", "last_error")
DELIVERY_FIELDS += ("created_at", "updated_at")


def deliveries_insert(
    *,
    event_id: uuid.UUID,
    tenant_id: int,
    ticket_id: int,
    rows: Sequence[NewDelivery],
    now: datetime,
) -> list[int]:
    """Store an event's delivery rows in one statement; returns their ids in `rows` order
    (RETURNING yields them in VALUES order, as the ORM's bulk_create relies on too)."""
    if not rows:
        return []
    params: list[Any] = []
    for r in rows:
        params += _values(Delivery, _delivery_row(event_id, tenant_id, ticket_id, r, now))
    sql = _insert_sql(Delivery, DELIVERY_FIELDS, len(rows), f" RETURNING {_qn('id')}")
    with sql_cursor() as cursor:
        cursor.execute(sql, params)
        return [pk for (pk,) in cursor.fetchall()]


def _delivery_row(
    event_id: uuid.UUID | None, tenant_id: int, ticket_id: int | None, r: NewDelivery, now
) -> dict[str, Any]:
    values = (event_id, tenant_id, ticket_id, r.partner_id, r.target, r.endpoint, r.status)
    values += (0, 0, r.next_attempt_at, r.dispatched_at, r.last_error, now, now)
    return dict(zip(DELIVERY_FIELDS, values, strict=True))


# --- an incoming event in one statement ----------------------------------------------------

# The columns of a new event's deliveries that differ between its rows (the rest are the
# event's): one array each, unnested into rows by the statement.
_PER_DELIVERY = ("partner", "target", "status", "next_attempt_at", "dispatched_at", "last_error")


@functools.cache
def _incoming_sql(with_deliveries: bool) -> str:
    """An incoming event's writes as one statement (PostgreSQL: data-modifying WITH): the
    contact upsert, the ticket upsert taking its next sequence number from the contact's id,
    the event on that ticket and sequence, and its deliveries from arrays (`_PER_DELIVERY`).
    One statement is atomic on its own: it needs no transaction around it."""
    t = _columns(Ticket)
    ticket = _insert_select_sql(
        Ticket, TICKET_FIELDS, "c", {"contact": f"c.{_qn('id')}"}, _ticket_upsert_tail()
    )
    ticket_of = {"ticket": f"k.{t['id']}", "sequence": f"k.{t['last_sequence']}"}
    event = _insert_select_sql(Event, EVENT_FIELDS, "k", ticket_of, "")
    sql = f"WITH c AS ({_contact_upsert_sql()}), k AS ({ticket}), e AS ({event} RETURNING 1)"
    if with_deliveries:
        arrays = ", ".join(f"%s::{_array_type(n)}[]" for n in _PER_DELIVERY)
        rows = f"k, unnest({arrays}) AS x({', '.join(_PER_DELIVERY)})"
        exprs = {n: f"x.{n}" for n in _PER_DELIVERY} | {"ticket": f"k.{t['id']}"}
        deliveries = _insert_select_sql(Delivery, DELIVERY_FIELDS, rows, exprs, " RETURNING 1")
        sql += f", d AS ({deliveries})"
    return f"{sql} SELECT k.{t['id']}, k.{t['last_sequence']} FROM k"  # noqa: S608


def _array_type(name: str) -> str:
    """The element type of a delivery column's array: text for strings (an explicit cast to
    varchar(n) would cut a longer value short where the column's own assignment refuses it),
    else the column's type."""
    field = Delivery._meta.get_field(name)
    if field.get_internal_type() in ("CharField", "TextField"):
        return "text"
    return str(field.db_type(connection))


def incoming_store(
    *,
    tenant_id: int,
    msg: MessagePayload,
    created_date: datetime,
    source: str,
    partner_id: int | None,
    raw_body: bytes,
    payload: dict[str, Any],
    idempotency_key: str,
    deliveries: Sequence[NewDelivery],
    now: datetime,
) -> uuid.UUID:
    """Store an incoming event with everything it writes (SPEC §3.1): its contact and ticket
    upserted by `contact_upsert`'s and `ticket_upsert`'s rules, the event with the ticket's
    next sequence number, and its delivery rows; returns the event's id.

    Atomic on its own: on PostgreSQL one statement, so without a transaction around it it
    commits alone (no BEGIN, no COMMIT: one round trip for all of it); elsewhere the four
    statements in a transaction (a savepoint inside the caller's).
    """
    if connection.vendor != "postgresql":
        with transaction.atomic():
            contact = contact_upsert(tenant_id=tenant_id, msg=msg, now=now)
            ticket, sequence = ticket_upsert(
                tenant_id=tenant_id, msg=msg, contact_pk=contact, created_date=created_date, now=now
            )
            event_id = event_insert(
                tenant_id=tenant_id,
                kind=Event.Kind.INCOMING.value,
                source=source,
                partner_id=partner_id,
                ticket_id=ticket,
                ticket_number=msg.ticket_number,
                sequence=sequence,
                raw_body=raw_body,
                payload=payload,
                idempotency_key=idempotency_key,
                received_at=now,
            )
            deliveries_insert(
                event_id=event_id, tenant_id=tenant_id, ticket_id=ticket, rows=deliveries, now=now
            )
        return event_id
    event_id = uuid.uuid4()
    ticket = _ticket_row(
        tenant_id=tenant_id, msg=msg, contact_pk=None, created_date=created_date, now=now
    )
    del ticket["contact"]  # the statement's: the upserted contact's id
    event = _event_row(  # without ticket and sequence: the statement takes the ticket's
        id=event_id,
        tenant=tenant_id,
        kind=Event.Kind.INCOMING.value,
        source=source,
        partner=partner_id,
        ticket_number=msg.ticket_number,
        raw_body=raw_body,
        payload=payload,
        idempotency_key=idempotency_key,
        received_at=now,
    )
    params = _values(Contact, _contact_row(tenant_id=tenant_id, msg=msg, now=now))
    params += _values(Ticket, ticket)
    params += _values(Event, event)
    if deliveries:
        if len({r.endpoint for r in deliveries}) != 1:
            raise ValueError("the deliveries of one event go to one endpoint")
        first = _delivery_row(event_id, tenant_id, None, deliveries[0], now)
        shared = {n: v for n, v in first.items() if n not in _PER_DELIVERY and n != "ticket"}
        params += _values(Delivery, shared)
        rows = []  # each row's own columns only, adapted; then one array per column
        for r in deliveries:
            row = _delivery_row(None, 0, None, r, now)
            rows.append(_values(Delivery, {n: row[n] for n in _PER_DELIVERY}))
        params += [list(column) for column in zip(*rows, strict=True)]
    with sql_cursor() as cursor:
        cursor.execute(_incoming_sql(bool(deliveries)), params)
        if cursor.fetchone() is None:  # cannot happen: an upsert always yields its row
            raise RuntimeError("the incoming event's statement stored no ticket")
    return event_id


@functools.cache
def _idempotency_insert_sql() -> str:
    c = _columns(IdempotencyRecord)
    names = ("holder", "key", "request_hash", "state", "created_at")
    return _insert_sql(
        IdempotencyRecord,
        names,
        1,
        f" ON CONFLICT ({c['holder']}, {c['key']}) DO NOTHING RETURNING {c['id']}",
    )


def idempotency_record_insert(
    *, holder: str, key: str, fingerprint: str, now: datetime
) -> int | None:
    """Insert an in-progress Idempotency-Key record; its id, or None when the key is taken.

    One statement that cannot fail on the unique key, so it needs no transaction or savepoint
    of its own: outside a transaction it commits at once, as a concurrent duplicate must see.
    Every request with a key runs it.
    """
    row = {
        "holder": holder,
        "key": key,
        "request_hash": fingerprint,
        "state": IdempotencyRecord.State.IN_PROGRESS.value,
        "created_at": now,
    }
    with sql_cursor() as cursor:
        cursor.execute(_idempotency_insert_sql(), _values(IdempotencyRecord, row))
        found = cursor.fetchone()
    return found[0] if found else None
