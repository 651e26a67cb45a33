"""Admin for events, deliveries and their attempts (with redeliver and cancel), and the
superuser-only tables."""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseNotAllowed
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import Truncator
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from integrations import explain
from integrations.admin import display
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
    tenant_ids_for,
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


def refusal(exc: Conflict) -> str:
    """Why a resend or cancel was refused, in the user's language."""
    reasons = {
        "not_final": gettext("It is still on its way: only a finished delivery can be resent."),
        "not_cancellable": gettext(
            "Only a pending or retrying delivery can be cancelled (this one is finished or "
            "being sent right now)."
        ),
        "not_configured": gettext(
            "Its target is not configured yet (engine relay or operations URL): set it first."
        ),
    }
    return reasons.get(exc.code, str(exc))


def several_tenants(request) -> bool:
    """Whether the user sees more than one tenant's rows (then lists name the tenant)."""
    tenant_ids = tenant_ids_for(request)
    return tenant_ids is None or len(tenant_ids) > 1


class DeliveryInline(ReadOnlyScopedInline):
    model = Delivery
    fields = [
        "target_link",
        "status_badge",
        "attempts",
        "last_status_code",
        "error",
        "next_attempt_at",
        "delivered_at",
    ]
    readonly_fields = fields

    @admin.display(description=_("delivery"))
    def target_link(self, obj):
        url = reverse("admin:integrations_delivery_change", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, target_label(obj))

    @admin.display(description=_("status"))
    def status_badge(self, obj):
        return display.status_badge(obj)

    @admin.display(description=_("last error"))
    def error(self, obj):
        return display.delivery_error(obj)


def target_label(delivery: Delivery) -> str:
    return explain.target_name(
        delivery.target, delivery.partner.name if delivery.partner_id else None
    )


@admin.register(Event)
class EventAdmin(LogAdmin):
    list_display = ["short", "kind", "source", "ticket", "message", "channel", "received_at"]
    list_filter = [
        EventRecentFilter,
        "kind",
        "source",
        ("partner", TenantPartnerFilter),
        TenantChannelFilter,
    ]
    # (shows the search box; get_search_results implements the search: whole ids and parts)
    search_fields = ["ticket_number", "ticket__contact__contact_id", "id"]
    list_display_links = None  # the short id is the link (no link inside a link)
    list_select_related = ["ticket"]
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

    def get_list_display(self, request):
        shown = list(super().get_list_display(request))
        if several_tenants(request):
            shown.insert(shown.index("channel"), "tenant")
        return shown

    def get_list_select_related(self, request):
        related = list(super().get_list_select_related(request))
        return related + ["tenant"] if several_tenants(request) else related

    @admin.display(description=_("event"), ordering="received_at")
    def short(self, obj):
        return display.short_id(
            obj.pk, url=reverse("admin:integrations_event_change", args=[obj.pk])
        )

    @admin.display(description=_("ticket"), ordering="ticket_number")
    def ticket(self, obj):
        return display.short_id(
            obj.ticket_number,
            url=reverse("admin:integrations_ticket_timeline", args=[obj.ticket_id]),
        )

    @admin.display(description=_("message"))
    def message(self, obj):
        payload = obj.payload if isinstance(obj.payload, dict) else {}
        if obj.kind == Event.Kind.COMMAND:  # the engine's command word, as sent
            return format_html("<code>{}</code>", str(payload.get("event", "")))
        text = payload.get("message") or ""
        if not isinstance(text, str):
            text = ""
        kind = payload.get("messageType")
        if kind and kind != "text" and isinstance(kind, str):
            text = f"[{display.message_type_label(kind)}] {text}".strip()
        return Truncator(text).chars(60) or "—"

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

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("delivery")

    fields = [
        "number",
        "created_at",
        "response_status",
        "duration_ms",
        "outcome_label",
        "error",
        "response_excerpt",
        "resend",
    ]
    readonly_fields = fields

    @admin.display(description="")
    def resend(self, obj):
        """A Resend button on every attempt of a finished delivery; it submits the page's own
        form (its CSRF token) to the delivery's resend URL."""
        if not obj.delivery.is_final:
            return ""
        url = reverse("admin:integrations_delivery_resend", args=[obj.delivery_id])
        return format_html(
            '<button type="submit" formaction="{}" class="resend-attempt">{}</button>',
            url,
            gettext("Resend"),
        )

    @admin.display(description=_("outcome"))
    def outcome_label(self, obj):
        return format_html(
            '<span class="outcome outcome-{}">{}</span>',
            obj.outcome,
            explain.attempt_outcome(obj, obj.delivery),
        )

    @admin.display(description=_("error"))
    def error(self, obj):
        return display.attempt_error(obj)

    @admin.display(description=_("response"))
    def response_excerpt(self, obj):
        return format_html("<pre class='excerpt'>{}</pre>", obj.response_body[:500])


class DeliveryChangeList(ChangeList):
    """The delivery list's page, with what each waiting row waits for found in one query
    (explain.blockers) instead of one per row."""

    def get_results(self, request):
        super().get_results(request)
        found = explain.blockers(list(self.result_list))
        for delivery in self.result_list:
            delivery.blocker = found.get(delivery.pk)


@admin.register(Delivery)
class DeliveryAdmin(LogAdmin):
    tenant_path = "tenant"
    change_form_template = "admin/integrations/delivery/change_form.html"
    # What answers "did it arrive?" first; full ids on hover and copy.
    list_display = [
        "status_badge",
        "target_name",
        "ticket_number",
        "result",
        "attempts",
        "created_at",
        "event_short",
    ]
    list_display_links = None
    list_filter = [
        RecentFilter,
        "status",
        ("partner", TenantPartnerFilter),
        "endpoint",
        TenantChannelFilter,
    ]
    # (shows the search box; get_search_results implements the search: whole ids and parts)
    search_fields = ["ticket__ticket_number", "ticket__contact__contact_id", "event__id"]
    list_select_related = ["partner", "ticket"]
    fields = [
        "state",
        "target_name",
        "ticket_number",
        "event_link",
        "endpoint",
        "attempts",
        "next_attempt_at",
        "last_status_code",
        "error",
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

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, obj):
        url = reverse("admin:integrations_delivery_change", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, display.status_badge(obj))

    @admin.display(description=_("status"))
    def state(self, obj):
        """The status badge and, for a waiting delivery, what it waits for."""
        badge = display.status_badge(obj)
        held = explain.holdup(obj, now=timezone.now())
        if held is None:
            return badge
        if held.blocker is not None:
            url = reverse("admin:integrations_delivery_change", args=[held.blocker.pk])
            return format_html(
                '{} <span class="holdup">{} <a href="{}" id="blocking-delivery">{}</a></span>',
                badge,
                held.text,
                url,
                gettext("Open it"),
            )
        return format_html('{} <span class="holdup">{}</span>', badge, held.text)

    @admin.display(description=_("result"))
    def result(self, obj):
        """HTTP status or the error in words; for a held delivery, what it waits for."""
        if obj.status in Delivery.WAITING_STATUSES:
            blocker = getattr(obj, "blocker", None)  # (DeliveryChangeList, for the page)
            if blocker is not None:
                url = reverse("admin:integrations_delivery_change", args=[blocker.pk])
                return format_html(
                    '<a href="{}" class="holdup">{}</a>',
                    url,
                    gettext("Waiting for message #%(n)s") % {"n": blocker.event.sequence},
                )
        if obj.status == Delivery.Status.SUCCEEDED:
            return f"HTTP {obj.last_status_code}" if obj.last_status_code else "—"
        return display.delivery_error(obj)

    @admin.display(description=_("last error"))
    def error(self, obj):
        return display.delivery_error(obj)

    @admin.display(description=_("event"))
    def event_link(self, obj):
        url = reverse("admin:integrations_event_change", args=[obj.event_id])
        return format_html(
            "{} · {}",
            display.short_id(obj.event_id, url=url),
            gettext("message #%(n)s of the ticket") % {"n": obj.event.sequence},
        )

    @admin.display(description=_("event"))
    def event_short(self, obj):
        url = reverse("admin:integrations_event_change", args=[obj.event_id])
        return display.short_id(obj.event_id, url=url)

    @admin.display(description=_("ticket"))
    def ticket_number(self, obj):
        return display.short_id(
            obj.ticket.ticket_number,
            url=reverse("admin:integrations_ticket_timeline", args=[obj.ticket_id]),
        )

    @admin.display(description=_("target"))
    def target_name(self, obj):
        return target_label(obj)

    def get_changelist(self, request, **kwargs):
        return DeliveryChangeList

    def get_urls(self):
        return [
            path(
                "<path:object_id>/resend/",
                self.admin_site.admin_view(self.resend_view),
                name="integrations_delivery_resend",
            ),
            path(
                "<path:object_id>/cancel/",
                self.admin_site.admin_view(self.cancel_view),
                name="integrations_delivery_cancel",
            ),
        ] + super().get_urls()

    def change_view(self, request, object_id, form_url="", extra_context=None):
        delivery = self.get_object(request, object_id)
        extra_context = extra_context or {}
        if delivery is not None:
            extra_context["can_resend"] = delivery.is_final and self._allowed(
                request, "view", delivery
            )
            extra_context["can_cancel"] = (
                delivery.status in Delivery.WAITING_STATUSES
                and self._allowed(request, "operate", delivery)
            )
        return super().change_view(request, object_id, form_url, extra_context)

    def _one(self, request, object_id, permission: str):
        delivery = self.get_object(request, object_id)
        if delivery is None or not self._allowed(request, permission, delivery):
            raise PermissionDenied
        return delivery

    def resend_view(self, request, object_id):
        """Resend one delivery from its page (or one of its attempts' rows); POST only."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        delivery = self._one(request, object_id, "view")
        try:
            operations.delivery_redeliver(delivery=delivery)
        except Conflict as exc:
            messages.error(request, refusal(exc))
        else:
            self.log_change(request, delivery, "Redelivered.")
            messages.success(
                request,
                gettext("Resent: it goes out within seconds. Reload to see the new attempt."),
            )
        return redirect("admin:integrations_delivery_change", delivery.pk)

    def cancel_view(self, request, object_id):
        """Cancel one waiting delivery: a confirmation page first (GET), then the POST."""
        delivery = self._one(request, object_id, "operate")
        if request.method == "POST" and request.POST.get("confirmed") == "yes":
            try:
                operations.delivery_cancel(delivery=delivery)
            except Conflict as exc:
                messages.error(request, refusal(exc))
            else:
                self.log_change(request, delivery, "Cancelled.")
                messages.success(request, gettext("Cancelled: it will not be sent."))
            return redirect("admin:integrations_delivery_change", delivery.pk)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": gettext("Cancel this delivery?"),
            "delivery": delivery,
            "target": target_label(delivery),
        }
        return TemplateResponse(request, "admin/integrations/delivery/cancel_confirm.html", context)

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


class OutcomeFilter(admin.SimpleListFilter):
    """Attempt outcomes in words (the stored values are the webhook classifier's)."""

    title = _("outcome")
    parameter_name = "outcome"

    def lookups(self, request, model_admin):
        return [(key, explain.outcome_label(key)) for key in explain.OUTCOME_LABELS]

    def queryset(self, request, queryset):
        if self.value() in explain.OUTCOME_LABELS:
            return queryset.filter(outcome=self.value())
        return queryset


@admin.register(DeliveryAttempt)
class DeliveryAttemptAdmin(LogAdmin):
    tenant_path = "delivery__tenant"
    list_display = [
        "delivery",
        "number",
        "response_status",
        "duration_ms",
        "outcome_text",
        "error_class",
        "created_at",
    ]
    list_filter = [OutcomeFilter]
    list_select_related = ["delivery"]
    fields = [
        "delivery",
        "number",
        "url_code",
        "request_headers_pretty",
        "response_status",
        "response_headers_pretty",
        "response_body",
        "duration_ms",
        "outcome_text",
        "error",
        "created_at",
    ]
    readonly_fields = fields
    ordering = ["-id"]

    @admin.display(description=_("outcome"), ordering="outcome")
    def outcome_text(self, obj):
        return explain.outcome_label(obj.outcome)

    @admin.display(description=_("URL"))
    def url_code(self, obj):
        return format_html("<code>{}</code>", obj.url)

    @admin.display(description=_("request headers"))
    def request_headers_pretty(self, obj):
        return pretty_json(obj.request_headers)

    @admin.display(description=_("response headers"))
    def response_headers_pretty(self, obj):
        return pretty_json(obj.response_headers)

    @admin.display(description=_("error"))
    def error(self, obj):
        return display.attempt_error(obj)


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
