"""Admin for what happened: tickets (with their timeline) and contacts, and what every log
list shares (time and partner filters, ticket search, `LogAdmin`); events, deliveries and
attempts are in events.py.

Built for millions of rows: no exact COUNT(*) (EstimatedCountPaginator,
show_full_result_count off), searches that hit indexes (exact values through b-trees, parts
through the trigram indexes of migration 0013), select_related lists,
list filters whose choices never read the log (bench/logscale.py measures all of it).
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta

from django.contrib import admin
from django.db import connection
from django.db.models import Exists, OuterRef, Q
from django.db.models.expressions import RawSQL
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
    Event,
    Tenant,
    Ticket,
)

# Admin search (issue 14): exact ticket numbers, contact ids and event ids, and from
# SEARCH_PARTIAL_MIN letters or digits in a row on, parts of ticket numbers, customer names
# and message text. Tickets and events found are looked up first, as lists of ids up to these
# sizes (search_tickets, delivery_search); past them the database checks each row.
SEARCH_PARTIAL_MIN = 3
SEARCH_TICKETS_MAX = 10_000
# As many as a list's capped count reads, so the events are looked up with the plan the event
# list's count gets (with a LIMIT much smaller than the estimated matches, PostgreSQL reads
# the table hoping to stop early, and two common words that never meet read all of it).
SEARCH_EVENTS_MAX = EstimatedCountPaginator.CAP
# From this many events on (PostgreSQL) the deliveries are joined to the list of event ids
# instead of testing = ANY(list): the planner costs a long ANY as one index descent per
# element and would rather read the whole delivery table.
SEARCH_EVENTS_JOINED_FROM = 100
# Longer searches find nothing (no ticket number, contact id or word is that long, and each
# word is one more condition).
SEARCH_WORDS_MAX = 10
SEARCH_WORD_MAX_CHARS = 255
_TRIGRAM_RUN = re.compile(f"[A-Za-z0-9]{{{SEARCH_PARTIAL_MIN}}}")


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


def search_words(search_term: str) -> list[str] | None:
    """The words of an admin search (every one must match), or None when nothing can match:
    NUL or a lone surrogate (PostgreSQL text holds neither; psycopg would fail on them), more
    than SEARCH_WORDS_MAX words or a word longer than SEARCH_WORD_MAX_CHARS."""
    if "\x00" in search_term:
        return None
    try:
        search_term.encode("utf-8")
    except UnicodeEncodeError:
        return None
    words = search_term.split()
    if len(words) > SEARCH_WORDS_MAX or any(len(w) > SEARCH_WORD_MAX_CHARS for w in words):
        return None
    return words


def is_partial_word(word: str) -> bool:
    """Whether `word` is also looked for inside values: it has SEARCH_PARTIAL_MIN ASCII
    letters or digits in a row. A trigram index looks a part up by its runs of three letters
    or digits (ASCII ones under every database locale); a part without one would read the
    whole index, so shorter words match exact values only."""
    return _TRIGRAM_RUN.search(word) is not None


def search_tenant_ids(request) -> list[int]:
    """The tenants a search reads, memoized on the request: explicit ids even for a superuser
    (every tenant), so the per-tenant unique indexes (tenant, ticket_number) and (tenant,
    contact_id) answer it."""
    if not hasattr(request, "_search_tenant_ids"):
        tenant_ids = tenant_ids_for(request)
        if tenant_ids is None:
            tenant_ids = list(Tenant.objects.values_list("pk", flat=True))
        request._search_tenant_ids = tenant_ids
    return request._search_tenant_ids


def ticket_match(word: str, tenant_ids: list[int]) -> Q:
    """A condition on Ticket: its number or its contact's id is `word`; for a partial word
    (is_partial_word) also its number or customer name contains it, in any case.

    Each part has its own index (ticket_number, contact_id, the trigram indexes of
    migration 0013), so PostgreSQL reads their union (BitmapOr) and never the table. The
    contacts are looked up first: an OR across the join could use none of them.
    """
    contacts = Contact.objects.filter(tenant_id__in=tenant_ids, contact_id=word)
    match = Q(ticket_number=word) | Q(contact_id__in=list(contacts.values_list("pk", flat=True)))
    if is_partial_word(word):
        match |= Q(ticket_number__icontains=word) | Q(customer_name__icontains=word)
    return match


def search_tickets(request, word: str) -> Q:
    """A condition on a log row's `ticket_id`: the row's ticket is one of the user's tickets
    that `word` finds (ticket_match).

    The ids are looked up first, so the log is read through its ticket index. A word found
    in more than SEARCH_TICKETS_MAX tickets ("customer") is checked by the database instead
    (EXISTS, hashed or row by row through the ticket's primary key) as the list walks its
    time index: such a word matches so many rows that a page fills up after a few.
    """
    tenant_ids = search_tenant_ids(request)
    match = ticket_match(word, tenant_ids)
    ids = list(
        Ticket.objects.filter(match, tenant_id__in=tenant_ids)
        .order_by()
        .values_list("pk", flat=True)[: SEARCH_TICKETS_MAX + 1]
    )
    if len(ids) <= SEARCH_TICKETS_MAX:
        return Q(ticket_id__in=ids)
    # The row's own tenant scoping (get_queryset) covers the ticket's: same tenant.
    return Q(Exists(Ticket.objects.filter(match, pk=OuterRef("ticket_id"))))


def message_match(word: str) -> Q:
    """A condition on Event: the text of its message contains `word`, in any case; nothing
    for a word too short to be a part (is_partial_word).

    UPPER(payload->>'message') LIKE UPPER('%word%'), exactly the expression of the trigram
    index of migration 0013 (SQLite: a plain LIKE).
    """
    if not is_partial_word(word):
        return Q(pk__in=[])
    return Q(payload__message__icontains=word)


def event_search(request, words: list[str]) -> Q:
    """A condition on Event: every word finds it, by its ticket (search_tickets), part of
    its message text (message_match) or its id."""
    match = Q()
    for word in words:
        found = search_tickets(request, word) | message_match(word)
        if is_uuid(word):
            found |= Q(pk=word)
        match &= found
    return match


def delivery_search(request, words: list[str]) -> Q:
    """A condition on Delivery: its event is one that every word finds (event_search); a
    delivery shares its event's ticket, so this is every way a delivery is found.

    The events are counted first (up to SEARCH_EVENTS_MAX) and, when that few, listed, so
    the deliveries are read through their event index. More events than that are a semi-join
    (the event query as a subquery, not inside an OR, so PostgreSQL may plan it either way:
    from the events through the deliveries' event index, or along the delivery list checking
    each row's event). The count is not scoped by tenant beyond the tickets (ANDing the
    tenant index would cost more than it saves): the delivery list's own scoping covers it,
    a delivery's tenant being its event's.
    """
    events = Event.objects.filter(event_search(request, words)).order_by()
    if events[: SEARCH_EVENTS_MAX + 1].count() > SEARCH_EVENTS_MAX:
        tenant_ids = tenant_ids_for(request)
        if tenant_ids is not None:
            # (another tenant's events would be looked up only to be thrown away)
            events = events.filter(tenant_id__in=tenant_ids)
        return Q(event_id__in=events.values("pk"))
    ids = list(events.values_list("pk", flat=True))
    if connection.vendor == "postgresql" and len(ids) >= SEARCH_EVENTS_JOINED_FROM:
        return Q(event_id__in=RawSQL("SELECT unnest(%s::uuid[])", [ids]))
    return Q(event_id__in=ids)


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
    # Ticket number or contact id, or parts of a ticket number or customer name;
    # get_search_results implements them.
    search_fields = ["ticket_number", "contact__contact_id", "customer_name"]
    list_select_related = ["tenant"]
    readonly_fields = ["timeline"]

    def get_search_results(self, request, queryset, search_term):
        """Every word must find the ticket (ticket_match), through the ticket's indexes."""
        words = search_words(search_term)
        if words is None:
            return queryset.none(), False
        if words:
            tenant_ids = search_tenant_ids(request)
            queryset = queryset.filter(tenant_id__in=tenant_ids)
            for word in words:
                queryset = queryset.filter(ticket_match(word, tenant_ids))
        return queryset, False

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
    # Contact id, or part of a customer name; get_search_results implements them.
    search_fields = ["contact_id", "customer_name"]
    list_select_related = ["tenant"]

    def get_search_results(self, request, queryset, search_term):
        """Every word must be the contact id or, from SEARCH_PARTIAL_MIN letters or digits on,
        part of the customer name (any case): the (tenant, contact_id) index and the name's
        trigram index (migration 0013)."""
        words = search_words(search_term)
        if words is None:
            return queryset.none(), False
        if words:
            queryset = queryset.filter(tenant_id__in=search_tenant_ids(request))
            for word in words:
                match = Q(contact_id=word)
                if is_partial_word(word):
                    match |= Q(customer_name__icontains=word)
                queryset = queryset.filter(match)
        return queryset, False
