"""Admin for events, deliveries and their attempts (with redeliver and cancel), and the
superuser-only tables."""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from integrations.admin.forms import confirm_first
from integrations.admin.logs import (
    EventRecentFilter,
    LogAdmin,
    RecentFilter,
    TenantChannelFilter,
    TenantPartnerFilter,
    delivery_search,
    event_search,
    pretty_json,
    search_words,
    timeline_link,
)
from integrations.admin.scoping import (
    ADMIN,
    SUPPORT,
    ReadOnlyScopedInline,
)
from integrations.errors import Conflict
from integrations.models import (
    Delivery,
    DeliveryAttempt,
    Event,
    IdempotencyRecord,
    WorkerHeartbeat,
)
from integrations.services import operations


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
    # (shows the search box; get_search_results implements the search: whole ids and parts)
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
        """Every word must find the event: its ticket (ticket number or contact id, or part
        of a ticket number or customer name), its id, or part of its message text.

        Django's search ORs its fields across the joined ticket and contact tables, where no
        index applies (0.5-0.7 s a query at 1,000,000 events). Here the tickets are looked up
        first (search_tickets), and the message through its own trigram index, so each word
        is a union of index scans; a very common word ("pesanan") is tested on each row
        instead while the list walks its time index, where a page fills up after a few rows
        (bench/logscale.py measures both).
        """
        words = search_words(search_term)
        if words is None:
            return queryset.none(), False
        if words:
            queryset = queryset.filter(event_search(request, words))
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
    # (shows the search box; get_search_results implements the search: whole ids and parts)
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
        """Every word must find the delivery's event, as in EventAdmin (its ticket, its id
        or part of its message): the events are looked up first (delivery_search), so the
        deliveries are read through their event index. A ticket number can look like a UUID
        (32 hex digits): then both are matched."""
        words = search_words(search_term)
        if words is None:
            return queryset.none(), False
        if words:
            queryset = queryset.filter(delivery_search(request, words))
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
    action_permissions = {"redeliver": "view", "cancel": "operate"}

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
        asked = confirm_first(
            self,
            request,
            queryset,
            question=_("Cancel these deliveries?"),
            consequence=_(
                "A cancelled delivery is never sent; the next message of its ticket goes on."
            ),
        )
        if asked is not None:
            return asked
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
