"""The ingest hot path (issue #7): how many SQL statements one accepted event costs, and the
ticket/contact upsert rules the hand-written statements in services/events.py must keep."""

import json
import threading

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from integrations.models import Contact, Event, Ticket
from tests.conftest import Caller, incoming_body

URL = "/api/v1/engine/incoming"

# Statements one incoming event may take (counted as tests see them: the test's own
# transaction turns BEGIN/COMMIT into SAVEPOINT/RELEASE SAVEPOINT):
#   authentication: the key (with partner and tenant) and the tenants of a named engine key (2)
#   the owner's tenant, the partners to copy it to (2)
#   SAVEPOINT, contact upsert, ticket upsert taking the next sequence number, event,
#   deliveries, RELEASE SAVEPOINT (6)
# Before issue #7 it was 11 for a known ticket and 14 for a new one (SELECT ... FOR UPDATE,
# then INSERT in a savepoint or UPDATE, and every statement built by the ORM's compiler).
INCOMING_BUDGET = 10
# With an Idempotency-Key: the key record is inserted first (1), taken over as done inside the
# event's transaction (1), and that transaction's SAVEPOINT/RELEASE wrap the whole.
IDEMPOTENT_BUDGET = INCOMING_BUDGET + 2


def _post_counting(engine_api, body, **headers) -> tuple[int, list[str]]:
    with CaptureQueriesContext(connection) as ctx:
        response = engine_api.post(URL, json.dumps(body), **headers)
    assert response.status_code == 202, response.content
    return len(ctx.captured_queries), [q["sql"][:120] for q in ctx.captured_queries]


def test_ingest_statements_new_ticket_within_budget(engine_api, partner):
    # given a key that was used a moment ago (its last_used_at write is at most once a minute)
    engine_api.post(URL, incoming_body(ticketNumber="warm-up"))
    # when an event for a ticket never seen arrives
    count, statements = _post_counting(engine_api, incoming_body(ticketNumber="brand-new"))
    # then it costs no more statements than the budget
    assert count <= INCOMING_BUDGET, "\n".join(statements)


def test_ingest_statements_known_ticket_within_budget(engine_api, partner):
    # given a ticket that exists and a key used a moment ago
    engine_api.post(URL, incoming_body())
    # when its next event arrives
    count, statements = _post_counting(engine_api, incoming_body(message="Halo lagi"))
    # then it costs no more statements than the budget, and took the next sequence number
    assert count <= INCOMING_BUDGET, "\n".join(statements)
    assert list(Event.objects.order_by("sequence").values_list("sequence", flat=True)) == [1, 2]


def test_ingest_statements_idempotent_request_within_budget(engine_api, partner):
    engine_api.post(URL, incoming_body(ticketNumber="warm-up"))
    count, statements = _post_counting(engine_api, incoming_body(), HTTP_IDEMPOTENCY_KEY="k-1")
    assert count <= IDEMPOTENT_BUDGET, "\n".join(statements)


def test_ingest_upsert_keeps_group_and_language_when_blank(engine_api, partner):
    # given a ticket that got a group and a language
    engine_api.post(URL, incoming_body(groupId="room-7", language="id"))
    # when later events carry blank ones, then new ones
    engine_api.post(URL, incoming_body(groupId="", language=""))
    kept = Ticket.objects.values_list("group_id", "language").get()
    engine_api.post(URL, incoming_body(groupId="room-8", language="en"))
    # then blanks keep the earlier values and non-blank values replace them
    assert kept == ("room-7", "id")
    assert Ticket.objects.values_list("group_id", "language").get() == ("room-8", "en")


def test_ingest_upsert_updates_ticket_fields_from_latest_event(engine_api, tenant, partner):
    engine_api.post(URL, incoming_body())
    engine_api.post(
        URL,
        incoming_body(
            customerName="Farhan A.", accountId="62999", createdDate="2021-05-01T10:00:00.000"
        ),
    )
    ticket = Ticket.objects.get()
    assert (ticket.customer_name, ticket.account_id) == ("Farhan A.", "62999")
    assert ticket.created_date.isoformat() == "2021-05-01T03:00:00+00:00"  # Asia/Jakarta
    assert ticket.last_sequence == 2
    assert Event.objects.order_by("sequence").last().payload["createdDate"] == (
        "2021-05-01T10:00:00.000"
    )


def test_ingest_upsert_reopens_closed_ticket_and_clears_close_fields(engine_api, partner):
    # given a ticket closed by a partner
    engine_api.post(URL, incoming_body())
    Ticket.objects.update(status="closed", closed_by="Desk", closed_at=timezone.now())
    # when an incoming event arrives for it
    engine_api.post(URL, incoming_body(message="Halo lagi"))
    # then it is open again with no trace of the close
    ticket = Ticket.objects.get()
    assert (ticket.status, ticket.closed_by, ticket.closed_at) == ("open", "", None)


def test_ingest_upsert_keeps_contact_first_seen_and_links_ticket(engine_api, partner):
    # given a contact seen once
    engine_api.post(URL, incoming_body())
    first = Contact.objects.get()
    # when it writes again under another name
    engine_api.post(URL, incoming_body(customerName="Farhan Akbar Jr."))
    # then first_seen stays, the rest follows the latest event, and the ticket points at it
    contact = Contact.objects.get()
    assert contact.pk == first.pk and contact.first_seen == first.first_seen
    assert contact.last_seen >= first.last_seen
    assert contact.customer_name == "Farhan Akbar Jr."
    assert Ticket.objects.get().contact_id == contact.pk


@pytest.mark.django_db(transaction=True)
def test_ingest_upsert_concurrent_first_messages_take_distinct_sequences(engine_api, partner):
    if connection.vendor != "postgresql":
        pytest.skip("concurrent requests need a server database (make test uses PostgreSQL)")
    # given 8 threads posting the first messages of one new ticket at once
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def post(n: int) -> None:
        from django.db import connections

        barrier.wait()
        response = Caller(APIClient(), engine_api.key).post(URL, incoming_body(message=f"m{n}"))
        statuses.append(response.status_code)
        connections.close_all()

    threads = [threading.Thread(target=post, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # then every one is accepted, on one ticket, with sequence numbers 1..8 and no gap
    assert statuses == [202] * 8
    ticket = Ticket.objects.get()
    sequences = sorted(Event.objects.filter(ticket=ticket).values_list("sequence", flat=True))
    assert sequences == list(range(1, 9)) and ticket.last_sequence == 8
    assert Contact.objects.count() == 1
