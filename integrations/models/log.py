"""What happened: contacts, tickets, events, deliveries, attempts, idempotency records,
worker heartbeats."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from integrations.models.accounts import Partner, Tenant


class Contact(models.Model):
    """A customer as the engine knows them (`contactId`), unique per tenant."""

    tenant = models.ForeignKey(
        Tenant, verbose_name=_("tenant"), on_delete=models.CASCADE, related_name="contacts"
    )
    contact_id = models.CharField(_("contact ID"), max_length=255)
    customer_name = models.CharField(_("customer name"), max_length=500)
    channel = models.CharField(_("channel"), max_length=50)
    account_id = models.CharField(_("account ID"), max_length=255)
    first_seen = models.DateTimeField(_("first seen"))
    last_seen = models.DateTimeField(_("last seen"))

    class Meta:
        verbose_name = _("contact")
        verbose_name_plural = _("contacts")
        constraints = [
            models.UniqueConstraint(fields=["tenant", "contact_id"], name="contact_tenant_id_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.customer_name} ({self.contact_id})"


class Ticket(models.Model):
    """A conversation (`ticketNumber`), unique per tenant."""

    class Status(models.TextChoices):
        OPEN = "open", _("Open")
        CLOSED = "closed", _("Closed")

    tenant = models.ForeignKey(
        Tenant, verbose_name=_("tenant"), on_delete=models.CASCADE, related_name="tickets"
    )
    ticket_number = models.CharField(_("ticket number"), max_length=100)
    contact = models.ForeignKey(
        Contact,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="tickets",
        verbose_name=_("contact"),
    )
    channel = models.CharField(_("channel"), max_length=50)
    account_id = models.CharField(_("account ID"), max_length=255)
    customer_name = models.CharField(_("customer name"), max_length=500)
    created_date = models.DateTimeField(
        _("created date"), help_text=_("When the engine created the ticket.")
    )
    group_id = models.CharField(_("group ID"), max_length=255, blank=True)
    language = models.CharField(_("language"), max_length=255, blank=True)
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.OPEN
    )
    closed_by = models.CharField(_("closed by"), max_length=255, blank=True)
    closed_at = models.DateTimeField(_("closed at"), null=True, blank=True)
    # The sequence number of the ticket's latest event; events take the next one under the
    # ticket's row lock, so per-ticket order is the order events entered the portal.
    last_sequence = models.PositiveBigIntegerField(_("last sequence"), default=0)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("ticket")
        verbose_name_plural = _("tickets")
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "ticket_number"], name="ticket_tenant_number_uniq"
            )
        ]
        indexes = [models.Index(fields=["ticket_number"], name="ticket_number_idx")]

    def __str__(self) -> str:
        return self.ticket_number


class Event(models.Model):
    """One message or command that entered the portal, with the exact bytes received."""

    class Kind(models.TextChoices):
        INCOMING = "incoming", _("Incoming")
        OUTGOING = "outgoing", _("Outgoing")
        COMMAND = "command", _("Command")
        OPERATIONS = "operations", _("Operations notice")

    class Source(models.TextChoices):
        ENGINE = "engine", _("Engine")
        PARTNER = "partner", _("Partner")
        PORTAL = "portal", _("Portal")

    id = models.UUIDField(_("ID"), primary_key=True, default=uuid.uuid4, editable=False)
    # (no index of its own: (tenant, -received_at) starts with it)
    tenant = models.ForeignKey(
        Tenant,
        verbose_name=_("tenant"),
        on_delete=models.CASCADE,
        related_name="events",
        db_index=False,
    )
    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices)
    source = models.CharField(_("source"), max_length=16, choices=Source.choices)
    partner = models.ForeignKey(
        Partner,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="events",
        verbose_name=_("partner"),
    )
    # (no index of its own: the unique (ticket, sequence) starts with it)
    ticket = models.ForeignKey(
        Ticket,
        verbose_name=_("ticket"),
        on_delete=models.CASCADE,
        related_name="events",
        db_index=False,
    )
    ticket_number = models.CharField(_("ticket number"), max_length=100)
    sequence = models.PositiveBigIntegerField(_("sequence"))
    raw_body = models.BinaryField(_("raw body"))
    payload = models.JSONField(_("payload"), help_text=_("The normalized payload sent on."))
    idempotency_key = models.CharField(_("idempotency key"), max_length=255, blank=True)
    received_at = models.DateTimeField(_("received at"), db_index=True)
    # The id of the API request that brought the event (X-Request-ID), on the worker's log
    # lines about its deliveries too; and, with tracing on, that request's W3C traceparent,
    # so the deliveries' spans join its trace (SPEC §10).
    # (defaults in the database too: bulk loads and raw inserts that name neither still work)
    request_id = models.CharField(_("request ID"), max_length=64, blank=True, db_default="")
    trace_context = models.CharField(_("trace context"), max_length=128, blank=True, db_default="")

    class Meta:
        verbose_name = _("event")
        verbose_name_plural = _("events")
        ordering = ["-received_at"]
        constraints = [
            models.UniqueConstraint(fields=["ticket", "sequence"], name="event_ticket_seq_uniq")
        ]
        indexes = [
            models.Index(fields=["tenant", "-received_at"], name="event_tenant_time_idx"),
            models.Index(fields=["ticket_number"], name="event_ticket_number_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {str(self.id)[:8]}"


class Delivery(models.Model):
    """One event to one target: a partner endpoint or the engine relay."""

    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        DELIVERING = "delivering", _("Delivering")
        RETRYING = "retrying", _("Retrying")
        SUCCEEDED = "succeeded", _("Succeeded")
        DEAD = "dead", _("Dead")
        CANCELLED = "cancelled", _("Cancelled")
        NOT_CONFIGURED = "not_configured", _("Not configured")

    FINAL_STATUSES = (Status.SUCCEEDED, Status.DEAD, Status.CANCELLED, Status.NOT_CONFIGURED)
    WAITING_STATUSES = (Status.PENDING, Status.RETRYING)

    class Endpoint(models.TextChoices):
        INCOMING = "incoming", _("Partner incoming-message path")
        SEND = "send", _("Partner send-message path")
        ENGINE_MESSAGE = "engine_message", _("Engine send-message path")
        ENGINE_COMMAND = "engine_command", _("Engine command path")
        OPERATIONS = "operations", _("Tenant operations URL")

    ENGINE_TARGET = "engine"
    # the tenant's operations URL (SPEC §10; integrations/outbox/notices.py)
    OPERATIONS_TARGET = "operations"

    # (event, tenant and partner have no index of their own: the unique (event, target),
    # (tenant, -created_at) and (partner, status, id) start with them; issue #16)
    event = models.ForeignKey(
        Event,
        verbose_name=_("event"),
        on_delete=models.CASCADE,
        related_name="deliveries",
        db_index=False,
    )
    tenant = models.ForeignKey(
        Tenant,
        verbose_name=_("tenant"),
        on_delete=models.CASCADE,
        related_name="deliveries",
        db_index=False,
    )
    ticket = models.ForeignKey(
        Ticket, verbose_name=_("ticket"), on_delete=models.CASCADE, related_name="deliveries"
    )
    partner = models.ForeignKey(
        Partner,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="deliveries",
        verbose_name=_("partner"),
        db_index=False,
    )
    # "partner:<id>" or "engine": one delivery per (event, target), and the order key.
    target = models.CharField(_("target"), max_length=64)
    endpoint = models.CharField(_("endpoint"), max_length=16, choices=Endpoint.choices)
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.PENDING
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    # `attempts` when the delivery was last redelivered by hand: the retry schedule starts
    # over from here, while attempt numbers keep counting up.
    retry_base = models.PositiveIntegerField(_("retry base"), default=0)
    next_attempt_at = models.DateTimeField(_("next attempt at"), null=True, blank=True)
    # When a queue message was last sent for it; the dispatcher re-sends only after a while,
    # so a backlog in the broker is not flooded with duplicates every second.
    dispatched_at = models.DateTimeField(_("dispatched at"), null=True, blank=True)
    lease_token = models.UUIDField(_("lease token"), null=True, blank=True)
    lease_expires_at = models.DateTimeField(_("lease expires at"), null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(
        _("last status code"), null=True, blank=True
    )
    last_error = models.CharField(_("last error"), max_length=500, blank=True)
    delivered_at = models.DateTimeField(_("delivered at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("delivery")
        verbose_name_plural = _("deliveries")
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["event", "target"], name="delivery_event_target_uniq")
        ]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"], name="delivery_due_idx"),
            # The per-ticket order check (a ticket's older open deliveries to a target) reads
            # only open deliveries: a partial index holds those, not a ticket's whole history.
            models.Index(
                fields=["target", "ticket", "id"],
                name="delivery_open_order_idx",
                condition=~models.Q(
                    status__in=["succeeded", "dead", "cancelled", "not_configured"]
                ),
            ),
            models.Index(fields=["tenant", "-created_at"], name="delivery_tenant_time_idx"),
            # (partner, status) counts and the management API's list of a partner's
            # deliveries by status, newest first (a backwards read of this index)
            models.Index(fields=["partner", "status", "id"], name="delivery_partner_status_id_idx"),
        ]

    def __str__(self) -> str:
        return gettext("Delivery #%(id)s") % {"id": self.pk}

    @property
    def is_final(self) -> bool:
        return self.status in self.FINAL_STATUSES


class DeliveryAttempt(models.Model):
    """One HTTP try of a delivery, as sent and as answered (no secrets stored)."""

    delivery = models.ForeignKey(
        Delivery, verbose_name=_("delivery"), on_delete=models.CASCADE, related_name="attempts_log"
    )
    number = models.PositiveIntegerField(_("number"))
    url = models.CharField(_("URL"), max_length=2600)
    request_headers = models.JSONField(_("request headers"), default=dict)
    response_status = models.PositiveSmallIntegerField(_("response status"), null=True, blank=True)
    response_headers = models.JSONField(_("response headers"), default=dict)
    response_body = models.TextField(_("response body"), blank=True, help_text=_("First 8 KiB."))
    duration_ms = models.PositiveIntegerField(_("duration (ms)"), default=0)
    outcome = models.CharField(_("outcome"), max_length=16, blank=True)
    error_class = models.CharField(_("error class"), max_length=64, blank=True)
    error_message = models.CharField(_("error message"), max_length=1000, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("delivery attempt")
        verbose_name_plural = _("delivery attempts")
        ordering = ["delivery_id", "number"]
        constraints = [
            models.UniqueConstraint(
                fields=["delivery", "number"], name="attempt_delivery_number_uniq"
            )
        ]

    def __str__(self) -> str:
        return gettext("Attempt %(n)s of delivery #%(id)s") % {
            "n": self.number,
            "id": self.delivery_id,
        }


class IdempotencyRecord(models.Model):
    """Remembers an accepted POST under its Idempotency-Key for 24 h (SPEC §3.5)."""

    class State(models.TextChoices):
        IN_PROGRESS = "in_progress", _("In progress")
        DONE = "done", _("Done")

    holder = models.CharField(
        _("holder"), max_length=64, help_text=_("partner:<id> or enginekey:<id>")
    )
    key = models.CharField(_("key"), max_length=255)
    request_hash = models.CharField(_("request hash"), max_length=64)
    state = models.CharField(
        _("state"), max_length=16, choices=State.choices, default=State.IN_PROGRESS
    )
    response_status = models.PositiveSmallIntegerField(_("response status"), null=True, blank=True)
    response_body = models.JSONField(_("response body"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"))

    class Meta:
        verbose_name = _("idempotency record")
        verbose_name_plural = _("idempotency records")
        constraints = [
            models.UniqueConstraint(fields=["holder", "key"], name="idempotency_holder_key_uniq")
        ]
        indexes = [models.Index(fields=["created_at"], name="idempotency_created_idx")]

    def __str__(self) -> str:
        return f"{self.holder} {self.key}"


class WorkerHeartbeat(models.Model):
    """A marker and when it was last written: `scheduler` and `worker:<hostname>`, written
    by beat and each worker as they run (/readyz reads them), or a marker of the `ping`
    task: proof that a task went through the broker and reached the database (tests)."""

    marker = models.CharField(_("marker"), max_length=100, unique=True)
    seen_at = models.DateTimeField(_("seen at"))

    class Meta:
        verbose_name = _("worker heartbeat")
        verbose_name_plural = _("worker heartbeats")

    def __str__(self) -> str:
        return self.marker
