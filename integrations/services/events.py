"""Accepting events: one transaction stores the event, upserts ticket and contact, and
writes one delivery row per target (SPEC §3, §5 outbox)."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from integrations.errors import Conflict, NotFound
from integrations.models import Contact, Delivery, Event, Partner, Tenant, Ticket
from integrations.payloads import (
    CommandPayload,
    MessagePayload,
    format_created_date,
    localize_created_date,
    render_command,
    render_incoming,
    render_outgoing,
)
from integrations.services.accounts import Principal
from integrations.services.delivery_queue import batch_key, enqueue
from integrations.services.sql import insert, json_value, prep, qn


@dataclass(frozen=True)
class EngineRelay:
    """Where a tenant's partner messages and commands go (SPEC §6)."""

    base_url: str
    message_path: str
    command_path: str
    token: str

    def url_for(self, endpoint: str) -> str:
        path = (
            self.message_path
            if endpoint == Delivery.Endpoint.ENGINE_MESSAGE
            else (self.command_path)
        )
        if not self.base_url or not path:
            return ""
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")


def engine_relay_for(tenant: Tenant) -> EngineRelay:
    """The tenant's engine settings, each falling back to the portal-wide setting."""
    return EngineRelay(
        base_url=tenant.engine_base_url or settings.PORTAL_ENGINE_BASE_URL,
        message_path=tenant.engine_send_message_path or settings.PORTAL_ENGINE_SEND_MESSAGE_PATH,
        command_path=tenant.engine_command_path or settings.PORTAL_ENGINE_COMMAND_PATH,
        token=tenant.engine_token or settings.PORTAL_ENGINE_TOKEN,
    )


def _ticket_for_update(tenant: Tenant, ticket_number: str) -> Ticket | None:
    return (
        Ticket.objects.select_for_update()
        .filter(tenant=tenant, ticket_number=ticket_number)
        .first()
    )


# Hand-written SQL for the hot path: see integrations/services/sql.py for why and how.


@functools.cache
def _contact_upsert_sql() -> str:
    table = Contact._meta.db_table
    column = {f.name: qn(f.column) for f in Contact._meta.concrete_fields}
    insert = (
        *("tenant", "contact_id", "customer_name", "channel", "account_id"),
        *("first_seen", "last_seen"),
    )
    updated = ["customer_name", "channel", "account_id", "last_seen"]
    return (
        f"INSERT INTO {qn(table)} ({', '.join(column[n] for n in insert)})"  # noqa: S608
        f" VALUES ({', '.join(['%s'] * len(insert))})"
        f" ON CONFLICT ({column['tenant']}, {column['contact_id']}) DO UPDATE SET "
        + ", ".join(f"{column[n]} = EXCLUDED.{column[n]}" for n in updated)
        + f" RETURNING {column['id']}"
    )


def _contact_upsert(tenant: Tenant, msg: MessagePayload, now: datetime) -> int:
    """Insert or update the contact in one statement (INSERT … ON CONFLICT DO UPDATE);
    `first_seen` is kept from the first insert. Returns the contact's pk."""
    at = prep(Contact, "last_seen", now)
    with connection.cursor() as cursor:
        cursor.execute(
            _contact_upsert_sql(),
            [tenant.pk, msg.contact_id, msg.customer_name, msg.channel, msg.account_id, at, at],
        )
        return cursor.fetchone()[0]


@functools.cache
def _ticket_upsert_sql() -> str:
    table = qn(Ticket._meta.db_table)
    c = {f.name: qn(f.column) for f in Ticket._meta.concrete_fields}
    fields = ["tenant", "ticket_number", "contact", "channel", "account_id", "customer_name"]
    fields += ["created_date", "group_id", "language", "status", "closed_by", "closed_at"]
    fields += ["last_sequence", "created_at", "updated_at"]
    closed = f"{table}.{c['status']} = '{Ticket.Status.CLOSED}'"
    return (
        f"INSERT INTO {table} ({', '.join(c[n] for n in fields)})"  # noqa: S608
        f" VALUES ({', '.join(['%s'] * len(fields))})"
        f" ON CONFLICT ({c['tenant']}, {c['ticket_number']}) DO UPDATE SET"
        f" {c['contact']} = EXCLUDED.{c['contact']},"
        f" {c['channel']} = EXCLUDED.{c['channel']},"
        f" {c['account_id']} = EXCLUDED.{c['account_id']},"
        f" {c['customer_name']} = EXCLUDED.{c['customer_name']},"
        f" {c['created_date']} = EXCLUDED.{c['created_date']},"
        # an empty groupId or language keeps the ticket's earlier one
        f" {c['group_id']} = CASE WHEN EXCLUDED.{c['group_id']} = ''"
        f" THEN {table}.{c['group_id']} ELSE EXCLUDED.{c['group_id']} END,"
        f" {c['language']} = CASE WHEN EXCLUDED.{c['language']} = ''"
        f" THEN {table}.{c['language']} ELSE EXCLUDED.{c['language']} END,"
        # an incoming event re-opens a closed ticket
        f" {c['closed_by']} = CASE WHEN {closed} THEN '' ELSE {table}.{c['closed_by']} END,"
        f" {c['closed_at']} = CASE WHEN {closed} THEN NULL ELSE {table}.{c['closed_at']} END,"
        f" {c['status']} = EXCLUDED.{c['status']},"
        f" {c['last_sequence']} = {table}.{c['last_sequence']} + 1,"
        f" {c['updated_at']} = EXCLUDED.{c['updated_at']}"
        f" RETURNING {c['id']}, {c['last_sequence']}"
    )


def _ticket_upsert(
    tenant: Tenant, msg: MessagePayload, contact_pk: int, created_date: datetime, now: datetime
) -> tuple[int, int]:
    """Create or update the ticket of an incoming event (re-opening it) and take its next
    event sequence number, in one statement; returns (ticket pk, sequence).

    The statement locks the ticket row until the transaction ends, like SELECT … FOR UPDATE
    did: events of one ticket take their sequence numbers one after the other, in the order
    they entered. A concurrent first message of a new ticket waits on the unique index and
    then updates the row the other one inserted (PostgreSQL); SQLite runs one writer at a time.
    """
    at = prep(Ticket, "updated_at", now)
    params = [
        tenant.pk,
        msg.ticket_number,
        contact_pk,
        msg.channel,
        msg.account_id,
        msg.customer_name,
        prep(Ticket, "created_date", created_date),
        msg.group_id,
        msg.language,
        Ticket.Status.OPEN.value,
        "",
        None,
        1,  # a new ticket's first event
        at,
        at,
    ]
    with connection.cursor() as cursor:
        cursor.execute(_ticket_upsert_sql(), params)
        ticket_pk, sequence = cursor.fetchone()
    return ticket_pk, sequence


def _event_row(
    *,
    tenant: Tenant,
    ticket_id: int,
    ticket_number: str,
    sequence: int,
    kind: str,
    principal: Principal,
    payload: dict,
    raw_body: bytes,
    idempotency_key: str,
    now: datetime,
) -> Event:
    """Store the event with its ticket sequence number (taken under the ticket's row lock)."""
    event = Event(
        id=uuid.uuid4(),
        tenant=tenant,
        kind=kind,
        source=Event.Source.ENGINE if principal.is_engine else Event.Source.PARTNER,
        partner=principal.partner,
        ticket_id=ticket_id,
        ticket_number=ticket_number,
        sequence=sequence,
        raw_body=raw_body,
        payload=payload,
        idempotency_key=idempotency_key,
        received_at=now,
    )
    insert([event])
    return event


def _event_create(
    *,
    tenant: Tenant,
    ticket: Ticket,
    kind: str,
    principal: Principal,
    payload: dict,
    raw_body: bytes,
    idempotency_key: str,
    now,
) -> Event:
    """Take the ticket's next sequence number (the ticket row is locked) and store the event."""
    ticket.last_sequence += 1
    ticket.save()
    event = _event_row(
        tenant=tenant,
        ticket_id=ticket.pk,
        ticket_number=ticket.ticket_number,
        sequence=ticket.last_sequence,
        kind=kind,
        principal=principal,
        payload=payload,
        raw_body=raw_body,
        idempotency_key=idempotency_key,
        now=now,
    )
    event.ticket = ticket
    return event


def _partner_targets(tenant: Tenant, channel: str) -> list[Partner]:
    """Partners that get a copy: subscribed to the channel and not disabled by an admin.

    A paused partner still gets its rows; they wait until it is resumed (never dropped).
    """
    with connection.cursor() as cursor:
        cursor.execute(_partner_targets_sql(), [tenant.pk, Partner.State.DISABLED.value])
        rows = cursor.fetchall()
    # Only what a delivery row needs is loaded (the other fields are deferred); by name, the
    # order Partner.Meta.ordering gives within one tenant.
    partners = [
        Partner.from_db(
            connection.alias,
            ["id", "channels", "retry_schedule"],
            [pk, json_value(channels), retry_schedule],
        )
        for pk, channels, retry_schedule in rows
    ]
    return [p for p in partners if p.subscribes_to(channel)]


@functools.cache
def _partner_targets_sql() -> str:
    c = {f.name: qn(f.column) for f in Partner._meta.concrete_fields}
    return (
        f"SELECT {c['id']}, {c['channels']}, {c['retry_schedule']}"  # noqa: S608
        f" FROM {qn(Partner._meta.db_table)}"
        f" WHERE {c['tenant']} = %s AND {c['state']} <> %s ORDER BY {c['name']}"
    )


def _deliveries_create(event: Event, rows: list[Delivery]) -> list[Delivery]:
    created = insert(rows)
    waiting = [
        (d.pk, batch_key(d.target, d.tenant_id))
        for d in created
        if d.status == Delivery.Status.PENDING
    ]
    if waiting:
        # robust: a broker that is down must not fail the accepted request; the dispatcher
        # finds the rows in the database and queues them later.
        transaction.on_commit(lambda: enqueue(waiting), robust=True)
    return created


def _first_attempt_at(partner: Partner | None, now):
    """Entry 0 of the retry schedule is the delay before the first attempt (0 by default)."""
    from integrations.services.deliveries import retry_schedule_for

    delay = retry_schedule_for(partner)[0]
    return now + timedelta(seconds=delay) if delay else now


def _partner_deliveries(
    event: Event, partners: list[Partner], endpoint: str, now
) -> list[Delivery]:
    return _deliveries_create(
        event,
        [
            Delivery(
                event=event,
                tenant_id=event.tenant_id,
                ticket_id=event.ticket_id,
                partner=p,
                target=f"partner:{p.pk}",
                endpoint=endpoint,
                next_attempt_at=_first_attempt_at(p, now),
                dispatched_at=now,
            )
            for p in partners
        ],
    )


def _relay_delivery(event: Event, endpoint: str, now) -> Delivery:
    configured = bool(engine_relay_for(event.tenant).url_for(endpoint))
    status = Delivery.Status.PENDING if configured else Delivery.Status.NOT_CONFIGURED
    return _deliveries_create(
        event,
        [
            Delivery(
                event=event,
                tenant_id=event.tenant_id,
                ticket_id=event.ticket_id,
                partner=None,
                target=Delivery.ENGINE_TARGET,
                endpoint=endpoint,
                status=status,
                next_attempt_at=_first_attempt_at(None, now) if configured else None,
                dispatched_at=now if configured else None,
                last_error="" if configured else "No engine relay is configured.",
            )
        ],
    )[0]


def event_ingest_incoming(
    *, principal: Principal, msg: MessagePayload, raw_body: bytes, idempotency_key: str = ""
) -> Event:
    """Accept an engine incoming event (SPEC §3.1).

    Upserts contact and ticket (re-opening a closed ticket), stores the event and queues one
    delivery per subscribed partner. Raises Forbidden (owner not allowed).
    """
    tenant = principal.tenant_for_owner(msg.owner)
    msg = msg.with_sticker_converted(tenant.sticker_text)
    now = timezone.now()
    created_date = localize_created_date(msg.created_date, tenant.time_zone)
    # The ticket takes the message's createdDate, so the payload renders it from the message.
    payload = render_incoming(msg, created_date=format_created_date(created_date, tenant.time_zone))
    partners = _partner_targets(tenant, msg.channel)
    # No savepoint when the view's transaction (Idempotency-Key) encloses this one: nothing
    # here raises on purpose, and any error rolls the view's transaction back as a whole.
    with transaction.atomic(savepoint=False):
        contact_pk = _contact_upsert(tenant, msg, now)
        ticket_pk, sequence = _ticket_upsert(tenant, msg, contact_pk, created_date, now)
        event = _event_row(
            tenant=tenant,
            ticket_id=ticket_pk,
            ticket_number=msg.ticket_number,
            sequence=sequence,
            kind=Event.Kind.INCOMING,
            principal=principal,
            payload=payload,
            raw_body=raw_body,
            idempotency_key=idempotency_key,
            now=now,
        )
        _partner_deliveries(event, partners, Delivery.Endpoint.INCOMING, now)
    return event


def _existing_ticket(tenant: Tenant, ticket_number: str) -> Ticket:
    ticket = _ticket_for_update(tenant, ticket_number)
    if ticket is None:
        raise NotFound(f"No ticket {ticket_number!r} for this owner.", code="ticket_not_found")
    return ticket


def _check_channel(ticket: Ticket, channel: str) -> None:
    if ticket.channel != channel:
        raise Conflict(
            f"Ticket {ticket.ticket_number!r} is on channel {ticket.channel!r}, not {channel!r}.",
            code="channel_mismatch",
        )


def _outgoing_event_create(
    tenant: Tenant,
    ticket: Ticket,
    msg: MessagePayload,
    principal: Principal,
    raw_body: bytes,
    idempotency_key: str,
    now: datetime,
) -> Event:
    """Store an outgoing event (engine's or partner's) on a locked existing ticket; the
    payload carries the ticket's creation date."""
    payload = render_outgoing(
        msg, created_date=format_created_date(ticket.created_date, tenant.time_zone)
    )
    return _event_create(
        tenant=tenant,
        ticket=ticket,
        kind=Event.Kind.OUTGOING,
        principal=principal,
        payload=payload,
        raw_body=raw_body,
        idempotency_key=idempotency_key,
        now=now,
    )


def event_ingest_engine_outgoing(
    *, principal: Principal, msg: MessagePayload, raw_body: bytes, idempotency_key: str = ""
) -> Event:
    """Accept an outgoing message from the engine itself (bot greeting, platform agent).

    Mirrored to every subscribed partner's send-message path; accepted on a closed ticket
    without re-opening it. Raises Forbidden, NotFound (unknown ticket).
    """
    tenant = principal.tenant_for_owner(msg.owner)
    msg = msg.with_sticker_converted(tenant.sticker_text)
    now = timezone.now()
    with transaction.atomic():
        ticket = _existing_ticket(tenant, msg.ticket_number)
        event = _outgoing_event_create(
            tenant, ticket, msg, principal, raw_body, idempotency_key, now
        )
        _partner_deliveries(
            event, _partner_targets(tenant, ticket.channel), Delivery.Endpoint.SEND, now
        )
    return event


def event_ingest_partner_outgoing(
    *, principal: Principal, msg: MessagePayload, raw_body: bytes, idempotency_key: str = ""
) -> Event:
    """Accept a partner's reply to the customer; relayed to the engine only (no echo).

    Raises Forbidden, NotFound (unknown ticket), Conflict (ticket closed, other channel).
    """
    tenant = principal.tenant_for_owner(msg.owner)
    now = timezone.now()
    with transaction.atomic():
        ticket = _existing_ticket(tenant, msg.ticket_number)
        if ticket.status == Ticket.Status.CLOSED:
            raise Conflict(f"Ticket {ticket.ticket_number!r} is closed.", code="ticket_closed")
        _check_channel(ticket, msg.channel)
        event = _outgoing_event_create(
            tenant, ticket, msg, principal, raw_body, idempotency_key, now
        )
        _relay_delivery(event, Delivery.Endpoint.ENGINE_MESSAGE, now)
    return event


def event_ingest_command(
    *, principal: Principal, cmd: CommandPayload, raw_body: bytes, idempotency_key: str = ""
) -> Event:
    """Apply a partner's ticket command (`close`) and relay it to the engine.

    Closing a closed ticket is logged as an event but queues no relay.
    Raises Forbidden, NotFound (unknown ticket), Conflict (other channel).
    """
    tenant = principal.tenant_for_owner(cmd.owner)
    now = timezone.now()
    with transaction.atomic():
        ticket = _existing_ticket(tenant, cmd.ticket_number)
        _check_channel(ticket, cmd.channel)
        already_closed = ticket.status == Ticket.Status.CLOSED
        if not already_closed:
            ticket.status = Ticket.Status.CLOSED
            ticket.closed_at = now
            ticket.closed_by = principal.partner.name if principal.partner else "engine"
        event = _event_create(
            tenant=tenant,
            ticket=ticket,
            kind=Event.Kind.COMMAND,
            principal=principal,
            payload=render_command(cmd),
            raw_body=raw_body,
            idempotency_key=idempotency_key,
            now=now,
        )
        if not already_closed:
            _relay_delivery(event, Delivery.Endpoint.ENGINE_COMMAND, now)
    return event
