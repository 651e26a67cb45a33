"""Admin for what happened: tickets, contacts, events, deliveries and their attempts.

Built for millions of rows: no exact COUNT(*) (EstimatedCountPaginator,
show_full_result_count off), exact-match searches that hit indexes, select_related lists,
list filters whose choices never read the log (bench/logscale.py measures all of it).
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from django.contrib import admin, messages
from django.db.models import Q
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from integrations import selectors
from integrations.admin.scoping import (
    ADMIN,
    SUPPORT,
    EstimatedCountPaginator,
    ReadOnlyScopedInline,
    TenantScopedAdmin,
    tenant_ids_for,
)
from integrations.errors import Conflict
from integrations.models import (
    Contact,
    Delivery,
    DeliveryAttempt,
    Event,
    IdempotencyRecord,
    Tenant,
    Ticket,
    WorkerHeartbeat,
)
from integrations.services import operations

# At most this many tickets per searched contact id (a page shows 50 rows anyway).
SEARCH_TICKETS_MAX = 1000


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value.strip())
    except ValueError:
        return False
    return True


class RecentFilter(admin.SimpleListFilter):
    """Time windows that use the time index instead of a date hierarchy's aggregates."""

    title = _("time")
    parameter_name = "recent"
    field = "created_at"
    WINDOWS = {
        "1h": timedelta(hours=1),
        "24h": timedelta(hours=24),
        "7d": timedelta(days=7),
        "30d": timedelta(days=30),
    }

    def lookups(self, request, model_admin):
        return [
            ("1h", _("Last hour")),
            ("24h", _("Last 24 hours")),
            ("7d", _("Last 7 days")),
            ("30d", _("Last 30 days")),
        ]

    def queryset(self, request, queryset):
        window = self.WINDOWS.get(self.value() or "")
        if window is None:
            return queryset
        return queryset.filter(**{f"{self.field}__gte": timezone.now() - window})


class EventRecentFilter(RecentFilter):
    field = "received_at"


class TenantPartnerFilter(admin.RelatedFieldListFilter):
    """The partners of the user's tenants, read from the partner table.

    Django's RelatedOnlyFieldListFilter finds them with SELECT DISTINCT partner_id over the
    whole log on every list page (90 ms for a superuser, 350 ms for a tenant's user at
    1,000,000 events). This one also lists a partner before it has any rows.
    """

    def field_choices(self, field, request, model_admin):
        tenant_ids = tenant_ids_for(request)
        limit = {} if tenant_ids is None else {"tenant__in": tenant_ids}
        ordering = self.field_admin_ordering(field, request, model_admin)
        return field.get_choices(include_blank=False, limit_choices_to=limit, ordering=ordering)


class TenantChannelFilter(admin.SimpleListFilter):
    """Channels of the user's tenants' tickets.

    Django's filter for "ticket__channel" reads DISTINCT channel over every tenant's tickets,
    which would show one tenant another tenant's channels.
    """

    title = _("channel")
    parameter_name = "channel"

    def lookups(self, request, model_admin):
        tickets = Ticket.objects.all()
        tenant_ids = tenant_ids_for(request)
        if tenant_ids is not None:
            tickets = tickets.filter(tenant_id__in=tenant_ids)
        channels = tickets.order_by("channel").values_list("channel", flat=True).distinct()
        return [(c, c) for c in channels]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(ticket__channel=self.value())
        return queryset


def search_ticket_ids(request, term: str, *, by_number: bool) -> list[int]:
    """Ids of the user's tickets whose contact id (or, with by_number, ticket number) is
    exactly `term`.

    Always scoped by explicit tenant ids (every tenant for a superuser), so that the
    (tenant, contact_id) and (tenant, ticket_number) unique indexes answer it.
    """
    tenant_ids = tenant_ids_for(request)
    if tenant_ids is None:
        tenant_ids = list(Tenant.objects.values_list("pk", flat=True))
    tickets = Ticket.objects.filter(tenant_id__in=tenant_ids)
    ids = list(
        tickets.filter(contact__tenant_id__in=tenant_ids, contact__contact_id=term)
        .order_by()
        .values_list("pk", flat=True)[:SEARCH_TICKETS_MAX]
    )
    if by_number:
        # Unique per tenant: one ticket per tenant at most.
        ids += tickets.filter(ticket_number=term).values_list("pk", flat=True)[:SEARCH_TICKETS_MAX]
    return ids


class LogAdmin(TenantScopedAdmin):
    """Read-only log pages."""

    paginator = EstimatedCountPaginator
    show_full_result_count = False
    list_per_page = 50

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def pretty_json(value) -> str:
    return format_html(
        "<pre class='json'>{}</pre>",
        json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False),
    )


def timeline_link(ticket_id: int, label: str):
    url = reverse("admin:integrations_ticket_timeline", args=[ticket_id])
    return format_html('<a href="{}">{}</a>', url, label)


@admin.register(Ticket)
class TicketAdmin(LogAdmin):
    list_display = [
        "ticket_number",
        "tenant",
        "channel",
        "status",
        "customer_name",
        "created_date",
        "timeline",
    ]
    list_filter = ["status", "channel"]
    search_fields = ["=ticket_number", "=contact__contact_id"]
    list_select_related = ["tenant"]
    readonly_fields = ["timeline"]

    @admin.display(description=_("timeline"))
    def timeline(self, obj):
        return timeline_link(obj.pk, _("Open the timeline"))

    def get_urls(self):
        return [
            path(
                "<path:object_id>/timeline/",
                self.admin_site.admin_view(self.timeline_view),
                name="integrations_ticket_timeline",
            ),
        ] + super().get_urls()

    def timeline_view(self, request, object_id):
        ticket = get_object_or_404(
            self.get_queryset(request).select_related("tenant", "contact"), pk=object_id
        )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "ticket": ticket,
            "items": selectors.ticket_timeline(ticket=ticket),
            "title": _("Ticket %(number)s") % {"number": ticket.ticket_number},
        }
        return TemplateResponse(request, "admin/integrations/ticket/timeline.html", context)


@admin.register(Contact)
class ContactAdmin(LogAdmin):
    list_display = ["contact_id", "customer_name", "channel", "tenant", "last_seen"]
    search_fields = ["=contact_id", "customer_name"]
    list_select_related = ["tenant"]


class DeliveryInline(ReadOnlyScopedInline):
    model = Delivery
    fields = [
        "target_link",
        "status",
        "attempts",
        "last_status_code",
        "last_error",
        "next_attempt_at",
        "delivered_at",
    ]
    readonly_fields = fields

    @admin.display(description=_("delivery"))
    def target_link(self, obj):
        url = reverse("admin:integrations_delivery_change", args=[obj.pk])
        return format_html(
            '<a href="{}">{}</a>', url, obj.partner.name if obj.partner else _("Engine relay")
        )


@admin.register(Event)
class EventAdmin(LogAdmin):
    list_display = ["id", "kind", "source", "ticket_number", "channel", "tenant", "received_at"]
    list_filter = [
        EventRecentFilter,
        "kind",
        "source",
        ("partner", TenantPartnerFilter),
        TenantChannelFilter,
    ]
    # Exact values; get_search_results implements them.
    search_fields = ["ticket_number", "ticket__contact__contact_id", "id"]
    list_select_related = ["tenant", "ticket"]
    fields = [
        "id",
        "kind",
        "source",
        "partner",
        "tenant",
        "ticket_link",
        "sequence",
        "received_at",
        "idempotency_key",
        "payload_pretty",
        "raw_pretty",
    ]
    readonly_fields = fields
    inlines = [DeliveryInline]
    ordering = ["-received_at"]

    def get_search_results(self, request, queryset, search_term):
        """Exact ticket number, contact id or event id (every word must match one).

        Django's "=field" search is UPPER(field) = UPPER(term) ORed across the joined ticket
        and contact tables: no index applies and each search read the whole log (0.5-0.7 s
        a query at 1,000,000 events). Here the contact's tickets are looked up first, so the
        log is searched by its own indexed ticket_number, ticket_id and id.
        """
        for term in search_term.split():
            if "\x00" in term:  # PostgreSQL text cannot hold NUL: nothing matches
                return queryset.none(), False
            match = Q(ticket_number=term) | Q(
                ticket_id__in=search_ticket_ids(request, term, by_number=False)
            )
            if _is_uuid(term):
                match |= Q(pk=term)
            queryset = queryset.filter(match)
        return queryset, False

    @admin.display(description=_("channel"))
    def channel(self, obj):
        return obj.ticket.channel

    @admin.display(description=_("ticket"))
    def ticket_link(self, obj):
        return timeline_link(obj.ticket_id, obj.ticket_number)

    @admin.display(description=_("payload sent on"))
    def payload_pretty(self, obj):
        return pretty_json(obj.payload)

    @admin.display(description=_("body received"))
    def raw_pretty(self, obj):
        raw = bytes(obj.raw_body)
        try:
            return pretty_json(json.loads(raw))
        except ValueError:
            return format_html("<pre>{}</pre>", raw.decode("utf-8", "replace"))


class AttemptInline(ReadOnlyScopedInline):
    model = DeliveryAttempt
    fields = [
        "number",
        "created_at",
        "response_status",
        "duration_ms",
        "outcome",
        "error_class",
        "error_message",
        "response_excerpt",
    ]
    readonly_fields = fields

    @admin.display(description=_("response"))
    def response_excerpt(self, obj):
        return format_html("<pre class='excerpt'>{}</pre>", obj.response_body[:500])


@admin.register(Delivery)
class DeliveryAdmin(LogAdmin):
    tenant_path = "tenant"
    list_display = [
        "id",
        "event_link",
        "ticket_number",
        "target_name",
        "status",
        "attempts",
        "next_attempt_at",
        "last_status_code",
        "created_at",
    ]
    list_filter = [
        RecentFilter,
        "status",
        ("partner", TenantPartnerFilter),
        "endpoint",
        TenantChannelFilter,
    ]
    # Exact values; get_search_results implements them.
    search_fields = ["ticket__ticket_number", "ticket__contact__contact_id", "event__id"]
    list_select_related = ["partner", "ticket", "event"]
    fields = [
        "event_link",
        "ticket_number",
        "target_name",
        "endpoint",
        "status",
        "attempts",
        "next_attempt_at",
        "last_status_code",
        "last_error",
        "delivered_at",
        "created_at",
    ]
    readonly_fields = fields
    inlines = [AttemptInline]
    ordering = ["-id"]
    actions = ["redeliver", "cancel"]

    def get_search_results(self, request, queryset, search_term):
        """Exact ticket number, contact id or event id, each through an index (tickets
        first, as in EventAdmin). A ticket number can look like a UUID (32 hex digits):
        then both are matched."""
        for term in search_term.split():
            if "\x00" in term:  # PostgreSQL text cannot hold NUL: nothing matches
                return queryset.none(), False
            match = Q(ticket_id__in=search_ticket_ids(request, term, by_number=True))
            if _is_uuid(term):
                match |= Q(event_id=term)
            queryset = queryset.filter(match)
        return queryset, False

    @admin.display(description=_("event"))
    def event_link(self, obj):
        url = reverse("admin:integrations_event_change", args=[obj.event_id])
        return format_html('<a href="{}">{}</a>', url, obj.event_id)

    @admin.display(description=_("ticket"))
    def ticket_number(self, obj):
        return timeline_link(obj.ticket_id, obj.ticket.ticket_number)

    @admin.display(description=_("target"))
    def target_name(self, obj):
        return obj.partner.name if obj.partner else _("Engine relay")

    # Support staff may redeliver; cancelling is for tenant admins.
    def has_redeliver_permission(self, request):
        return self._allowed(request, "view")

    def has_cancel_permission(self, request):
        return self._allowed(request, "operate")

    role_permissions = {ADMIN: {"view", "operate"}, SUPPORT: {"view"}}

    def _run(self, request, queryset, service, done: str) -> None:
        count, refused = 0, 0
        for delivery in queryset:
            try:
                service(delivery=delivery)
            except Conflict:
                refused += 1
            else:
                count += 1
                self.log_change(request, delivery, done)
        messages.success(
            request,
            _("%(n)d done, %(r)d skipped (not in a state that allows it).")
            % {"n": count, "r": refused},
        )

    @admin.action(description=_("Redeliver the selected deliveries"), permissions=["redeliver"])
    def redeliver(self, request, queryset):
        self._run(request, queryset, operations.delivery_redeliver, "Redelivered.")

    @admin.action(description=_("Cancel the selected deliveries"), permissions=["cancel"])
    def cancel(self, request, queryset):
        self._run(request, queryset, operations.delivery_cancel, "Cancelled.")


@admin.register(DeliveryAttempt)
class DeliveryAttemptAdmin(LogAdmin):
    tenant_path = "delivery__tenant"
    list_display = [
        "delivery",
        "number",
        "response_status",
        "duration_ms",
        "outcome",
        "error_class",
        "created_at",
    ]
    list_filter = ["outcome"]
    list_select_related = ["delivery"]
    fields = [
        "delivery",
        "number",
        "url",
        "request_headers",
        "response_status",
        "response_headers",
        "response_body",
        "duration_ms",
        "outcome",
        "error_class",
        "error_message",
        "created_at",
    ]
    readonly_fields = fields
    ordering = ["-id"]


class SuperuserOnlyAdmin(admin.ModelAdmin):
    """Internal bookkeeping: visible to superusers, changed by nobody."""

    def has_module_permission(self, request):
        return request.user.is_superuser

    def has_view_permission(self, request, obj=None):
        return request.user.is_superuser

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


admin.site.register(
    IdempotencyRecord,
    SuperuserOnlyAdmin,
    list_display=["holder", "key", "state", "response_status", "created_at"],
)
admin.site.register(WorkerHeartbeat, SuperuserOnlyAdmin, list_display=["marker", "seen_at"])
