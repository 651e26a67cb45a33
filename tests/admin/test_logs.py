"""Log pages: search by ticket number, contact id or event id; timeline order; no COUNT(*)
over the whole table."""

import pytest
from django.contrib.auth import get_user_model
from django.core.paginator import EmptyPage
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from integrations.admin.events import EventAdmin
from integrations.admin.scoping import EstimatedCountPaginator
from integrations.models import Delivery, Event, TenantMembership, Ticket
from tests.conftest import incoming_body

IN = "/api/v1/engine/incoming"
UUIDISH_TICKET = "294c9ea88f7e649f8c37ae895ebab247"  # 32 hex digits: also parses as a UUID


@pytest.fixture
def support_client(tenant):
    user = get_user_model().objects.create_user("sari", is_staff=True)
    TenantMembership.objects.create(user=user, tenant=tenant, role="support")
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def two_tickets(engine_api, partner):
    engine_api.post(IN, incoming_body(ticketNumber=UUIDISH_TICKET, message="first"))
    engine_api.post(IN, incoming_body(ticketNumber="T-2", contactId="c-2", message="second"))
    return Event.objects.order_by("received_at")


@pytest.mark.parametrize(
    ("term", "expected"),
    [(UUIDISH_TICKET, {"first"}), ("T-2", {"second"}), ("c-2", {"second"}), ("nothing", set())],
)
def test_delivery_search_by_ticket_or_contact(support_client, two_tickets, term, expected):
    response = support_client.get("/admin/integrations/delivery/", {"q": term})
    shown = {d.event.payload["message"] for d in response.context["cl"].result_list}
    assert shown == expected


def test_delivery_and_event_search_by_event_id(support_client, two_tickets):
    event = two_tickets.last()
    for url in ("/admin/integrations/delivery/", "/admin/integrations/event/"):
        response = support_client.get(url, {"q": str(event.pk)})
        rows = list(response.context["cl"].result_list)
        assert len(rows) == 1
        assert getattr(rows[0], "event_id", rows[0].pk) == event.pk


def test_timeline_lists_events_in_order_with_deliveries(support_client, two_tickets, engine_api):
    engine_api.post(IN, incoming_body(ticketNumber="T-2", contactId="c-2", message="third"))
    ticket = Ticket.objects.get(ticket_number="T-2")
    response = support_client.get(f"/admin/integrations/ticket/{ticket.pk}/timeline/")
    html = response.content.decode()
    assert html.index("second") < html.index("third")
    assert html.count("Pending") == 2


def test_log_lists_never_count_the_whole_table(support_client, two_tickets):
    with CaptureQueriesContext(connection) as queries:
        response = support_client.get("/admin/integrations/delivery/")
    assert response.status_code == 200
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts and all("LIMIT" in sql.upper() for sql in counts), counts
    assert response.context["cl"].paginator.__class__ is EstimatedCountPaginator


def test_estimated_paginator_caps_filtered_counts(two_tickets):
    paginator = EstimatedCountPaginator(Delivery.objects.filter(status="pending"), 50)
    EstimatedCountPaginator.CAP, cap = 1, EstimatedCountPaginator.CAP
    try:
        assert paginator.count == 2  # CAP + 1: "more than the cap"
    finally:
        EstimatedCountPaginator.CAP = cap


def test_pages_past_a_capped_count_are_served_while_there_are_rows(
    engine_api, partner, monkeypatch
):
    # given 5 events, a cap of 1 (the count stops at 2) and pages of 2
    for i in range(5):
        engine_api.post(IN, incoming_body(ticketNumber=f"T-{i}", message=f"m{i}"))
    monkeypatch.setattr(EstimatedCountPaginator, "CAP", 1)
    paginator = EstimatedCountPaginator(
        Event.objects.filter(kind="incoming").order_by("received_at"), 2
    )
    assert paginator.capped and paginator.num_pages == 1
    # when page 3 is asked for, then it is served, with the last event, and is the last page
    page = paginator.page(3)
    assert [e.payload["message"] for e in page.object_list] == ["m4"]
    assert not page.has_next() and paginator.num_pages == 3
    # and a page past the rows is still an empty page
    with pytest.raises(EmptyPage):
        EstimatedCountPaginator(Event.objects.filter(kind="incoming"), 2).page(4)


def test_the_last_page_of_a_capped_count_is_whole_and_leads_on(engine_api, partner, monkeypatch):
    # given 10 events and a cap of 4: the count stops at 5, which is 3 pages of 2
    for i in range(10):
        engine_api.post(IN, incoming_body(ticketNumber=f"T-{i}", message=f"m{i}"))
    monkeypatch.setattr(EstimatedCountPaginator, "CAP", 4)
    events = Event.objects.filter(kind="incoming").order_by("received_at")
    paginator = EstimatedCountPaginator(events, 2)
    assert paginator.capped and paginator.num_pages == 3
    # when page 3 is shown, then it is a whole page with a next one (not cut at the cap)
    page = paginator.page(3)
    assert [e.payload["message"] for e in page.object_list] == ["m4", "m5"]
    assert page.has_next()


def test_a_tenant_users_deep_admin_page_is_a_page_not_a_redirect(
    support_client, engine_api, partner, monkeypatch
):
    # given more events than the cap, so the tenant's count is capped
    for i in range(4):
        engine_api.post(IN, incoming_body(ticketNumber=f"T-{i}", message=f"m{i}"))
    monkeypatch.setattr(EstimatedCountPaginator, "CAP", 1)
    monkeypatch.setattr(EventAdmin, "list_per_page", 1)
    # when a page past the capped count is opened
    response = support_client.get("/admin/integrations/event/", {"p": "4"})
    # then it is that page (oldest event last: the list is newest first), with a way back
    assert response.status_code == 200
    rows = list(response.context["cl"].result_list)
    assert [e.payload["message"] for e in rows] == ["m0"]
    assert "?p=3" in response.content.decode()


def test_support_sees_inlines_of_visible_objects(support_client, two_tickets, partner):
    # deliveries on the event page, API keys on the partner page (read-only)
    event = two_tickets.first()
    page = support_client.get(f"/admin/integrations/event/{event.pk}/change/").content.decode()
    assert partner.name in page and "Pending" in page
    page = support_client.get(f"/admin/integrations/partner/{partner.pk}/change/")
    assert partner.api_keys.get().prefix in page.content.decode()
