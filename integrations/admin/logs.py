"""Admin for what happened: tickets (with their timeline) and contacts, and what every log
list shares (time and partner filters, ticket search, `LogAdmin`); events, deliveries and
attempts are in events.py.

Built for millions of rows: no exact COUNT(*) (EstimatedCountPaginator,
show_full_result_count off), exact-match searches that hit indexes, select_related lists,
list filters whose choices never read the log (bench/logscale.py measures all of it).
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from django.contrib import admin
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from integrations import selectors
from integrations.admin.scoping import (
    EstimatedCountPaginator,
    TenantScopedAdmin,
    tenant_ids_for,
)
from integrations.models import (
    Contact,
    Tenant,
    Ticket,
)

# At most this many tickets per searched contact id (a page shows 50 rows anyway).
SEARCH_TICKETS_MAX = 1000


def is_uuid(value: str) -> bool:
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
