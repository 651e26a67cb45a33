"""Accepting events (SPEC §3): one service takes a parsed, valid event, stores it atomically
(event, ticket, contact, one delivery row per target: in a transaction it owns, or for an
incoming event without an Idempotency-Key in one statement that needs none) and completes
its Idempotency-Key record in the same transaction; the outbox sends the deliveries after
the commit (SPEC §5).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from django.db import transaction
from django.utils import timezone

from integrations import instruments
from integrations.errors import Conflict, NotFound
from integrations.models import Delivery, Event, Ticket
from integrations.outbox.queue import batch_key, wake
from integrations.outbox.targets import NO_RELAY, first_attempt_at, relay_url
from integrations.payloads import (
    CommandPayload,
    MessagePayload,
    format_created_date,
    localize_created_date,
    render_command,
    render_incoming,
    render_outgoing,
)
from integrations.services import ingest_sql
from integrations.services.accounts import Principal
from integrations.services.idempotency import (
    IdempotencyRequest,
    Replay,
    idempotency_abandon,
    idempotency_begin,
    idempotency_complete,
)
from integrations.services.ingest_sql import CallerTenant, NewDelivery, PartnerTarget

logger = logging.getLogger(__name__)


class Route(StrEnum):
    """Which door an event came in by (SPEC §4): it decides what is checked and who gets it."""

    ENGINE_INCOMING = "engine_incoming"
    ENGINE_OUTGOING = "engine_outgoing"
    PARTNER_OUTGOING = "partner_outgoing"
    COMMAND = "command"


@dataclass(frozen=True)
class Answer:
    """What the API answers: the status and body of the first acceptance (a replay of an
    Idempotency-Key answers the same as the first time)."""

    status: int
    body: dict[str, Any]
    replayed: bool = False


def event_accept(
    *,
    route: Route,
    principal: Principal,
    payload: MessagePayload | CommandPayload,
    raw_body: bytes,
    status: int,
    idempotency: IdempotencyRequest | None = None,
) -> Answer:
    """Accept one parsed, valid event; answer `status` with its `eventId`.

    With an Idempotency-Key (`idempotency`): a repeat answers the first answer (replayed), a
    concurrent duplicate waits for the first, another body under the same key is a Conflict;
    the record is completed in the transaction that stores the event, so "event stored" and
    "key remembered" are one fact, and forgotten when the event is refused.
    Raises Forbidden (owner not allowed), NotFound (unknown ticket), Conflict (ticket closed,
    other channel, Idempotency-Key conflicts).
    """
    ingest = _INGEST[route]
    key = idempotency.key if idempotency else ""
    if idempotency is None:
        if route in _ATOMIC_ALONE:
            event_id = ingest(principal, payload, raw_body, key)
        else:
            with transaction.atomic():
                event_id = ingest(principal, payload, raw_body, key)
        _counted(route, principal, payload, event_id)
        return Answer(status, _accepted(event_id))
    record = idempotency_begin(request=idempotency)
    if isinstance(record, Replay):
        return Answer(record.status, record.body, replayed=True)
    try:
        with transaction.atomic():
            event_id = ingest(principal, payload, raw_body, key)
            body = _accepted(event_id)
            idempotency_complete(record_id=record, status=status, body=body)
    except BaseException:
        idempotency_abandon(record_id=record)
        raise
    _counted(route, principal, payload, event_id)
    return Answer(status, body)


def _counted(
    route: Route,
    principal: Principal,
    payload: MessagePayload | CommandPayload,
    event_id: uuid.UUID,
) -> None:
    """The accepted event's metric and log line (SPEC §10; the request id is bound)."""
    kind, source = _KIND[route], str(_source(principal))
    instruments.event_accepted(kind=kind, source=source)
    ids: dict[str, object] = {"tenant": payload.owner, "event_id": str(event_id)}
    if principal.partner is not None:
        ids["partner_id"] = principal.partner.pk
    logger.info(
        "event accepted: %s from %s", kind, source, extra={**ids, "kind": kind, "route": route}
    )


def _accepted(event_id: uuid.UUID) -> dict[str, Any]:
    return {"status": "success", "eventId": str(event_id)}


# --- one function per route; each runs inside event_accept's transaction, but for the routes
# --- of _ATOMIC_ALONE without an Idempotency-Key (their writes are atomic on their own) -----


def _source(principal: Principal) -> str:
    return Event.Source.ENGINE if principal.is_engine else Event.Source.PARTNER


def _wake_on_commit(keys: list[str]) -> None:
    """Wake the targets (batch keys) of new pending deliveries once the event is committed
    (queue.wake: at most one queue message per target is waiting); robust: a cache or
    broker that is down must not fail the accepted request (the dispatcher finds the rows
    later)."""
    if keys:
        transaction.on_commit(lambda: wake(keys), robust=True)


def _partner_rows(targets: list[PartnerTarget], *, endpoint: str, now) -> list[NewDelivery]:
    """One delivery per partner that gets a copy of the event (SPEC §3.2), due when its
    schedule says the first attempt is."""
    rows = []
    for p in targets:
        due = first_attempt_at(p.retry_schedule, now)
        rows.append(
            NewDelivery(
                partner_id=p.id,
                target=f"partner:{p.id}",
                endpoint=endpoint,
                status=Delivery.Status.PENDING,
                next_attempt_at=due,
                dispatched_at=_dispatched(due, now),
            )
        )
    return rows


def _wake_rows(rows: list[NewDelivery]) -> None:
    """Wake the pumps of the new rows that are theirs (due now) once stored."""
    _wake_on_commit([row.target for row in rows if row.dispatched_at is not None])


def _dispatched(due: datetime, now: datetime) -> datetime | None:
    """A new delivery due now is its target's pump's (marked as queued); one whose schedule
    delays the first attempt is the dispatcher's, which queues it when it is due (no pump
    would look for it before then)."""
    return now if due <= now else None


def _relay_delivery(
    *, event_id: uuid.UUID, tenant: CallerTenant, ticket_id: int, endpoint: str, now
) -> None:
    """The engine relay's delivery (SPEC §6): `not_configured` (final) with no engine."""
    configured = bool(relay_url(tenant, endpoint))
    due = first_attempt_at("", now) if configured else None
    row = NewDelivery(
        partner_id=None,
        target=Delivery.ENGINE_TARGET,
        endpoint=endpoint,
        status=Delivery.Status.PENDING if configured else Delivery.Status.NOT_CONFIGURED,
        next_attempt_at=due,
        dispatched_at=_dispatched(due, now) if due is not None else None,
        last_error="" if configured else NO_RELAY,
    )
    ingest_sql.deliveries_insert(
        event_id=event_id, tenant_id=tenant.pk, ticket_id=ticket_id, rows=[row], now=now
    )
    if row.dispatched_at is not None:
        _wake_on_commit([batch_key(Delivery.ENGINE_TARGET, tenant.pk)])


def _incoming(principal: Principal, msg: Any, raw_body: bytes, key: str) -> uuid.UUID:
    """An engine incoming event (SPEC §3.1): upserts contact and ticket (re-opening a
    closed ticket), one delivery per subscribed partner. Its writes are atomic on their own
    (ingest_sql.incoming_store: one statement on PostgreSQL), so it needs no transaction."""
    tenant, targets = principal.tenant_targets_for_owner(msg.owner, channel=msg.channel)
    msg = msg.with_sticker_converted(tenant.sticker_text)
    now = timezone.now()
    created_date = localize_created_date(msg.created_date, tenant.time_zone)
    # The ticket takes the message's createdDate, so the payload renders it from the message.
    payload = render_incoming(msg, created_date=format_created_date(created_date, tenant.time_zone))
    rows = _partner_rows(targets, endpoint=Delivery.Endpoint.INCOMING, now=now)
    event_id = ingest_sql.incoming_store(
        tenant_id=tenant.pk,
        msg=msg,
        created_date=created_date,
        source=_source(principal),
        partner_id=principal.partner.pk if principal.partner else None,
        raw_body=raw_body,
        payload=payload,
        idempotency_key=key,
        deliveries=rows,
        now=now,
    )
    _wake_rows(rows)
    return event_id


def _locked_ticket(tenant: CallerTenant, ticket_number: str) -> Ticket:
    """The ticket under a row lock (events of one ticket take their sequence numbers in
    order); raises NotFound."""
    ticket = (
        Ticket.objects.select_for_update()
        .filter(tenant_id=tenant.pk, ticket_number=ticket_number)
        .first()
    )
    if ticket is None:
        raise NotFound(f"No ticket {ticket_number!r} for this owner.", code="ticket_not_found")
    return ticket


def _check_channel(ticket: Ticket, channel: str) -> None:
    if ticket.channel != channel:
        raise Conflict(
            f"Ticket {ticket.ticket_number!r} is on channel {ticket.channel!r}, not {channel!r}.",
            code="channel_mismatch",
        )


def _event_on_ticket(
    principal: Principal,
    ticket: Ticket,
    kind: str,
    payload: dict[str, Any],
    raw_body: bytes,
    key: str,
    now: datetime,
) -> uuid.UUID:
    """Store an event on a locked existing ticket, with the ticket's next sequence number
    (the ticket's other changes, if any, are saved with it)."""
    ticket.last_sequence += 1
    ticket.save()
    return ingest_sql.event_insert(
        tenant_id=ticket.tenant_id,
        kind=kind,
        source=_source(principal),
        partner_id=principal.partner.pk if principal.partner else None,
        ticket_id=ticket.pk,
        ticket_number=ticket.ticket_number,
        sequence=ticket.last_sequence,
        raw_body=raw_body,
        payload=payload,
        idempotency_key=key,
        received_at=now,
    )


def _outgoing_payload(tenant: CallerTenant, ticket: Ticket, msg: MessagePayload) -> dict[str, Any]:
    """An outgoing event carries the ticket's creation date (SPEC §3.2)."""
    created = format_created_date(ticket.created_date, tenant.time_zone)
    return render_outgoing(msg, created_date=created)


def _engine_outgoing(principal: Principal, msg: Any, raw_body: bytes, key: str) -> uuid.UUID:
    """A message the platform itself sent (bot greeting, platform agent): mirrored to every
    subscribed partner's send-message path; accepted on a closed ticket without re-opening
    it (SPEC §3.2)."""
    tenant = principal.tenant_for_owner(msg.owner)
    msg = msg.with_sticker_converted(tenant.sticker_text)
    now = timezone.now()
    ticket = _locked_ticket(tenant, msg.ticket_number)
    payload = _outgoing_payload(tenant, ticket, msg)
    event_id = _event_on_ticket(principal, ticket, Event.Kind.OUTGOING, payload, raw_body, key, now)
    # the ticket's channel decides who gets a copy (the message's may differ)
    targets = ingest_sql.partner_targets(tenant_id=tenant.pk, channel=ticket.channel)
    rows = _partner_rows(targets, endpoint=Delivery.Endpoint.SEND, now=now)
    ingest_sql.deliveries_insert(
        event_id=event_id, tenant_id=tenant.pk, ticket_id=ticket.pk, rows=rows, now=now
    )
    _wake_rows(rows)
    return event_id


def _partner_outgoing(principal: Principal, msg: Any, raw_body: bytes, key: str) -> uuid.UUID:
    """A partner's reply to the customer: relayed to the engine only, never back to a
    partner (SPEC §3.2). The ticket must be open and on the same channel."""
    tenant = principal.tenant_for_owner(msg.owner)
    now = timezone.now()
    ticket = _locked_ticket(tenant, msg.ticket_number)
    if ticket.status == Ticket.Status.CLOSED:
        raise Conflict(f"Ticket {ticket.ticket_number!r} is closed.", code="ticket_closed")
    _check_channel(ticket, msg.channel)
    payload = _outgoing_payload(tenant, ticket, msg)
    event_id = _event_on_ticket(principal, ticket, Event.Kind.OUTGOING, payload, raw_body, key, now)
    _relay_delivery(
        event_id=event_id,
        tenant=tenant,
        ticket_id=ticket.pk,
        endpoint=Delivery.Endpoint.ENGINE_MESSAGE,
        now=now,
    )
    return event_id


def _command(principal: Principal, cmd: Any, raw_body: bytes, key: str) -> uuid.UUID:
    """A partner's ticket command (`close`, SPEC §3.3), relayed to the engine. Closing a
    closed ticket is stored as an event but relays nothing."""
    tenant = principal.tenant_for_owner(cmd.owner)
    now = timezone.now()
    ticket = _locked_ticket(tenant, cmd.ticket_number)
    _check_channel(ticket, cmd.channel)
    already_closed = ticket.status == Ticket.Status.CLOSED
    if not already_closed:
        ticket.status = Ticket.Status.CLOSED
        ticket.closed_at = now
        ticket.closed_by = principal.partner.name if principal.partner else "engine"
    payload = render_command(cmd)
    event_id = _event_on_ticket(principal, ticket, Event.Kind.COMMAND, payload, raw_body, key, now)
    if not already_closed:
        _relay_delivery(
            event_id=event_id,
            tenant=tenant,
            ticket_id=ticket.pk,
            endpoint=Delivery.Endpoint.ENGINE_COMMAND,
            now=now,
        )
    return event_id


# The event kind each route stores (the `kind` label of portal_events_accepted_total).
_KIND: dict[Route, str] = {
    Route.ENGINE_INCOMING: Event.Kind.INCOMING.value,
    Route.ENGINE_OUTGOING: Event.Kind.OUTGOING.value,
    Route.PARTNER_OUTGOING: Event.Kind.OUTGOING.value,
    Route.COMMAND: Event.Kind.COMMAND.value,
}

# Routes whose writes are atomic on their own (one statement, or a transaction of their
# own): without an Idempotency-Key record to complete with them, no transaction around.
_ATOMIC_ALONE = frozenset({Route.ENGINE_INCOMING})

_INGEST: dict[Route, Callable[[Principal, Any, bytes, str], uuid.UUID]] = {
    Route.ENGINE_INCOMING: _incoming,
    Route.ENGINE_OUTGOING: _engine_outgoing,
    Route.PARTNER_OUTGOING: _partner_outgoing,
    Route.COMMAND: _command,
}
