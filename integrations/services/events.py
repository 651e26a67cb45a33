"""Accepting events: one transaction stores the event, upserts ticket and contact, and
writes one delivery row per target (SPEC §3, §5 outbox)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
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


def _contact_upsert(tenant: Tenant, msg: MessagePayload, now) -> Contact:
    """Insert or update the contact in one statement (INSERT … ON CONFLICT DO UPDATE);
    `first_seen` is kept from the first insert."""
    contact = Contact(
        tenant=tenant,
        contact_id=msg.contact_id,
        customer_name=msg.customer_name,
        channel=msg.channel,
        account_id=msg.account_id,
        first_seen=now,
        last_seen=now,
    )
    Contact.objects.bulk_create(
        [contact],
        update_conflicts=True,
        unique_fields=["tenant", "contact_id"],
        update_fields=["customer_name", "channel", "account_id", "last_seen"],
    )
    return contact


def _ticket_upsert(tenant: Tenant, msg: MessagePayload, contact: Contact) -> Ticket:
    """Lock or create the ticket of an incoming event; an incoming event re-opens it."""
    created_date = localize_created_date(msg.created_date, tenant.time_zone)
    ticket = _ticket_for_update(tenant, msg.ticket_number)
    if ticket is None:
        try:
            with transaction.atomic():
                ticket = Ticket.objects.create(
                    tenant=tenant,
                    ticket_number=msg.ticket_number,
                    contact=contact,
                    channel=msg.channel,
                    account_id=msg.account_id,
                    customer_name=msg.customer_name,
                    created_date=created_date,
                    group_id=msg.group_id,
                    language=msg.language,
                )
        except IntegrityError:  # a concurrent first message created it: lock that row
            ticket = _ticket_for_update(tenant, msg.ticket_number)
        else:
            return ticket  # our own uncommitted insert: no one else can lock it before commit
    ticket.contact = contact
    ticket.channel = msg.channel
    ticket.account_id = msg.account_id
    ticket.customer_name = msg.customer_name
    ticket.created_date = created_date
    ticket.group_id = msg.group_id or ticket.group_id
    ticket.language = msg.language or ticket.language
    if ticket.status == Ticket.Status.CLOSED:
        ticket.status = Ticket.Status.OPEN
        ticket.closed_at = None
        ticket.closed_by = ""
    return ticket


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
    return Event.objects.create(
        tenant=tenant,
        kind=kind,
        source=Event.Source.ENGINE if principal.is_engine else Event.Source.PARTNER,
        partner=principal.partner,
        ticket=ticket,
        ticket_number=ticket.ticket_number,
        sequence=ticket.last_sequence,
        raw_body=raw_body,
        payload=payload,
        idempotency_key=idempotency_key,
        received_at=now,
    )


def _partner_targets(tenant: Tenant, channel: str) -> list[Partner]:
    """Partners that get a copy: subscribed to the channel and not disabled by an admin.

    A paused partner still gets its rows; they wait until it is resumed (never dropped).
    """
    partners = Partner.objects.filter(tenant=tenant).exclude(state=Partner.State.DISABLED)
    return [p for p in partners if p.subscribes_to(channel)]


def _deliveries_create(event: Event, rows: list[Delivery]) -> list[Delivery]:
    created = Delivery.objects.bulk_create(rows)
    waiting = [d.pk for d in created if d.status == Delivery.Status.PENDING]
    if waiting:
        from integrations.tasks import deliveries_enqueue

        # robust: a broker that is down must not fail the accepted request; the dispatcher
        # finds the rows in the database and queues them later.
        transaction.on_commit(lambda: deliveries_enqueue(waiting), robust=True)
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
    with transaction.atomic():
        contact = _contact_upsert(tenant, msg, now)
        ticket = _ticket_upsert(tenant, msg, contact)
        payload = render_incoming(
            msg, created_date=format_created_date(ticket.created_date, tenant.time_zone)
        )
        event = _event_create(
            tenant=tenant,
            ticket=ticket,
            kind=Event.Kind.INCOMING,
            principal=principal,
            payload=payload,
            raw_body=raw_body,
            idempotency_key=idempotency_key,
            now=now,
        )
        _partner_deliveries(
            event, _partner_targets(tenant, msg.channel), Delivery.Endpoint.INCOMING, now
        )
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
        payload = render_outgoing(
            msg, created_date=format_created_date(ticket.created_date, tenant.time_zone)
        )
        event = _event_create(
            tenant=tenant,
            ticket=ticket,
            kind=Event.Kind.OUTGOING,
            principal=principal,
            payload=payload,
            raw_body=raw_body,
            idempotency_key=idempotency_key,
            now=now,
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
        payload = render_outgoing(
            msg, created_date=format_created_date(ticket.created_date, tenant.time_zone)
        )
        event = _event_create(
            tenant=tenant,
            ticket=ticket,
            kind=Event.Kind.OUTGOING,
            principal=principal,
            payload=payload,
            raw_body=raw_body,
            idempotency_key=idempotency_key,
            now=now,
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
