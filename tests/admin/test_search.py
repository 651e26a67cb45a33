"""Admin search finds parts (issue 14, item 3): part of a ticket number, part of a customer's
name, words of a message, on the event, delivery, ticket and contact lists; exact values as
before; never another tenant's rows; bad input is an empty list, not an error. Real
PostgreSQL (its trigram indexes are checked to be the ones the queries use), and SQLite in a
subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.contrib.admin.sites import site
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client, RequestFactory

from integrations.admin import logs
from integrations.models import ApiKey, Contact, Event, TenantMembership, Ticket
from integrations.services.accounts import api_key_create
from integrations.services.partners import partner_create
from tests.conftest import Caller, incoming_body

IN = "/api/v1/engine/incoming"
EVENTS = "/admin/integrations/event/"
DELIVERIES = "/admin/integrations/delivery/"
TICKETS = "/admin/integrations/ticket/"
CONTACTS = "/admin/integrations/contact/"

BUDI_TICKET = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
SITI_TICKET = "0f0e0d0c0b0a09080706050403020100"
# The other tenant's ticket shares BUDI_TICKET's middle, its customer is a Budi too, and its
# message has the same words: none of it may show up for our tenant's staff.
RIVAL_TICKET = "99999999e5f60718293a999999999999"


@pytest.fixture
def log(engine_api, partner, other_tenant):
    """Two tickets of our tenant and one of another tenant, with deliveries, via the API."""
    engine_api.post(
        IN,
        incoming_body(
            ticketNumber=BUDI_TICKET,
            contactId="c-budi",
            customerName="Budi Santoso",
            message="Halo, pesanan saya belum sampai",
        ),
    )
    engine_api.post(
        IN,
        incoming_body(
            ticketNumber=BUDI_TICKET,
            contactId="c-budi",
            customerName="Budi Santoso",
            message="Mohon dibantu ya",
        ),
    )
    engine_api.post(
        IN,
        incoming_body(
            ticketNumber=SITI_TICKET,
            contactId="c-siti",
            customerName="Siti Aminah",
            message="Terima kasih banyak",
        ),
    )
    partner_create(
        tenant=other_tenant,
        name="Rival desk",
        base_url="http://127.0.0.1:9",
        incoming_message_path="/i",
        send_message_path="/s",
    )
    _, raw = api_key_create(kind=ApiKey.Kind.ENGINE, tenants=[other_tenant])
    response = Caller(Client(), raw).post(
        IN,
        incoming_body(
            owner=other_tenant.owner,
            ticketNumber=RIVAL_TICKET,
            contactId="c-rival",
            customerName="Budi Rival",
            message="Pesanan saya belum sampai juga",
        ),
    )
    assert response.status_code == 202, response.content
    assert Event.objects.count() == 4


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def support(tenant):
    user = get_user_model().objects.create_user("sari", is_staff=True)
    TenantMembership.objects.create(user=user, tenant=tenant, role="support")
    return user


@pytest.fixture
def support_client(support):
    return _client(support)


@pytest.fixture
def superuser_client(db):
    return _client(get_user_model().objects.create_superuser("root", "root@example.com", "pw"))


def _found(client, url: str, q: str) -> set[str]:
    """What the list shows for `q`: messages (events, deliveries), ticket numbers (tickets),
    contact ids (contacts)."""
    response = client.get(url, {"q": q})
    assert response.status_code == 200
    rows = response.context["cl"].result_list
    if url == EVENTS:
        return {e.payload["message"] for e in rows}
    if url == DELIVERIES:
        return {d.event.payload["message"] for d in rows}
    if url == TICKETS:
        return {t.ticket_number for t in rows}
    return {c.contact_id for c in rows}


BUDI_MESSAGES = {"Halo, pesanan saya belum sampai", "Mohon dibantu ya"}


@pytest.mark.parametrize("url", [EVENTS, DELIVERIES])
def test_search_finds_a_ticket_by_part_of_its_number(support_client, log, url):
    # given a ticket number of 32 hex digits, when 6 of them from its middle are searched
    found = _found(support_client, url, BUDI_TICKET[10:16])
    # then that ticket's rows are found, and not the other tenant's ticket with that part
    assert found == BUDI_MESSAGES


@pytest.mark.parametrize("url", [EVENTS, DELIVERIES])
def test_search_finds_a_customers_tickets_by_part_of_their_name(support_client, log, url):
    assert _found(support_client, url, "budi") == BUDI_MESSAGES
    assert _found(support_client, url, "SANTOS") == BUDI_MESSAGES


@pytest.mark.parametrize("url", [EVENTS, DELIVERIES])
def test_search_finds_words_of_a_message_in_any_case(support_client, log, url):
    assert _found(support_client, url, "PESANAN belum") == {"Halo, pesanan saya belum sampai"}
    assert _found(support_client, url, "kasih") == {"Terima kasih banyak"}


@pytest.mark.parametrize("url", [EVENTS, DELIVERIES])
def test_every_word_must_match(support_client, log, url):
    # a message word of Budi's ticket and Siti's name: no row has both
    assert _found(support_client, url, "pesanan siti") == set()
    # a message word and the customer's name of the same ticket
    assert _found(support_client, url, "terima siti") == {"Terima kasih banyak"}
    assert _found(support_client, url, f"budi {BUDI_TICKET[:8]} dibantu") == {"Mohon dibantu ya"}


@pytest.mark.parametrize("url", [EVENTS, DELIVERIES])
def test_exact_values_still_match(support_client, log, url):
    event = Event.objects.get(payload__message="Terima kasih banyak")
    assert _found(support_client, url, SITI_TICKET) == {"Terima kasih banyak"}
    assert _found(support_client, url, "c-siti") == {"Terima kasih banyak"}
    assert _found(support_client, url, str(event.pk)) == {"Terima kasih banyak"}


def test_short_words_match_exact_values_only(support_client, log, engine_api):
    # given a two-character ticket number and a message with a two-letter word
    engine_api.post(IN, incoming_body(ticketNumber="T9", contactId="c9", message="ok ya"))
    # then the ticket number is found exactly, and two letters are never looked for inside
    # values (no trigram to look them up by)
    assert _found(support_client, EVENTS, "T9") == {"ok ya"}
    assert _found(support_client, EVENTS, "ya") == set()
    assert _found(support_client, EVENTS, "T") == set()


def test_tickets_and_contacts_are_found_by_parts(support_client, log):
    assert _found(support_client, TICKETS, BUDI_TICKET[10:16]) == {BUDI_TICKET}
    assert _found(support_client, TICKETS, "budi") == {BUDI_TICKET}
    assert _found(support_client, TICKETS, "c-siti") == {SITI_TICKET}
    assert _found(support_client, TICKETS, "aminah budi") == set()
    assert _found(support_client, CONTACTS, "BUDI") == {"c-budi"}
    assert _found(support_client, CONTACTS, "c-siti") == {"c-siti"}
    assert _found(support_client, CONTACTS, "santoso siti") == set()


@pytest.mark.parametrize("url", [EVENTS, DELIVERIES, TICKETS, CONTACTS])
def test_a_superuser_finds_every_tenants_rows(superuser_client, log, url):
    found = _found(superuser_client, url, "budi")
    expected = {
        EVENTS: BUDI_MESSAGES | {"Pesanan saya belum sampai juga"},
        DELIVERIES: BUDI_MESSAGES | {"Pesanan saya belum sampai juga"},
        TICKETS: {BUDI_TICKET, RIVAL_TICKET},
        CONTACTS: {"c-budi", "c-rival"},
    }[url]
    assert found == expected


def test_deliveries_joined_to_their_event_ids_are_the_same_rows(support_client, log, monkeypatch):
    # given event ids joined as a list from one on (PostgreSQL; SQLite tests IN (list))
    monkeypatch.setattr(logs, "SEARCH_EVENTS_JOINED_FROM", 1)
    # then the same deliveries are found
    assert _found(support_client, DELIVERIES, "budi") == BUDI_MESSAGES
    found = _found(support_client, DELIVERIES, "PESANAN belum")
    assert found == {"Halo, pesanan saya belum sampai"}


@pytest.mark.parametrize("url", [EVENTS, DELIVERIES])
def test_words_found_too_often_to_list_find_the_same_rows(support_client, log, url, monkeypatch):
    # given no lists of ids at all (a common word's path: the database checks each row)
    monkeypatch.setattr(logs, "SEARCH_TICKETS_MAX", 0)
    monkeypatch.setattr(logs, "SEARCH_EVENTS_MAX", 0)
    # then the same rows are found, and still none of the other tenant's
    assert _found(support_client, url, "budi") == BUDI_MESSAGES
    assert _found(support_client, url, "santoso a1b2c3") == BUDI_MESSAGES
    assert _found(support_client, url, "PESANAN belum") == {"Halo, pesanan saya belum sampai"}
    assert _found(support_client, url, "halo") == {"Halo, pesanan saya belum sampai"}


@pytest.mark.parametrize("url", [EVENTS, DELIVERIES, TICKETS, CONTACTS])
@pytest.mark.parametrize(
    "q",
    [
        "budi " * 11,  # more words than SEARCH_WORDS_MAX
        "b" * 256,  # a word longer than SEARCH_WORD_MAX_CHARS
        "pes_nan%",  # LIKE's own characters: looked for as they are
        "%%%",
    ],
)
def test_bad_search_input_is_an_empty_list(support, log, url, q):
    response = _client(support).get(url, {"q": q})
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == []


@pytest.mark.parametrize("url", [EVENTS, DELIVERIES, TICKETS, CONTACTS])
@pytest.mark.parametrize("query", ["q=%ED%A0%80budi%FF", "q=budi%00", "q=%00%ED%A0%80"])
def test_undecodable_query_strings_are_not_errors(support_client, log, url, query):
    # (Django's search form refuses NUL itself and lists everything, with a message)
    response = support_client.get(f"{url}?{query}")
    assert response.status_code == 200


def test_search_words_refuses_what_the_database_cannot_hold(support, log):
    # called directly: a request's query string is already decoded with replacement
    request = RequestFactory().get(EVENTS)
    request.user = support
    admin = site._registry[Event]
    for q in ("\ud800", "a\x00b"):
        queryset, _ = admin.get_search_results(request, Event.objects.all(), q)
        assert list(queryset) == []


# --- PostgreSQL: the queries use the trigram indexes ------------------------------------------


def _plan(queryset) -> str:
    """The plan with only bitmap index scans allowed (the test tables are tiny, and a walk
    along another index would do): a query whose expression the index does not have would
    still be planned, as a Seq Scan."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_indexscan = off")
        try:
            return queryset.order_by().explain()
        finally:
            cursor.execute("RESET enable_seqscan")
            cursor.execute("RESET enable_indexscan")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's indexes")
def test_partial_searches_use_the_trigram_indexes(tenant, log):
    # the SQL Django writes for each partial match is the expression its index was built on
    events = _plan(Event.objects.filter(logs.message_match("pesanan")))
    assert "event_message_trgm_idx" in events
    tickets = _plan(Ticket.objects.filter(logs.ticket_match("budi", [tenant.pk])))
    assert "ticket_number_trgm_idx" in tickets and "ticket_customer_name_trgm_idx" in tickets
    contacts = _plan(Contact.objects.filter(customer_name__icontains="budi"))
    assert "contact_customer_name_trgm_idx" in contacts


# --- SQLite (the embedded default) ------------------------------------------------------------

SQLITE_SCRIPT = """
import json
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.contrib.admin.sites import site
from django.contrib.auth import get_user_model
from django.test import RequestFactory
from django.utils import timezone
from integrations.models import Contact, Delivery, Event, Tenant, Ticket

tenant = Tenant.objects.create(owner="o1", name="One", engine_signing_secret="s")
other = Tenant.objects.create(owner="o2", name="Two", engine_signing_secret="s")
for t, number, contact_id, name, message in (
    (tenant, "a1b2c3d4e5f60718293a4b5c6d7e8f90", "c-one", "Budi Santoso", "Halo, pesanan saya"),
    (other, "99999999e5f60718293a999999999999", "c-two", "Budi Rival", "pesanan juga"),
):
    now = timezone.now()
    contact = Contact.objects.create(tenant=t, contact_id=contact_id, customer_name=name,
                                     channel="whatsapp", account_id="1", first_seen=now,
                                     last_seen=now)
    ticket = Ticket.objects.create(tenant=t, ticket_number=number, contact=contact,
                                   channel="whatsapp", account_id="1", customer_name=name,
                                   created_date=now)
    event = Event.objects.create(tenant=t, kind="incoming", source="engine", ticket=ticket,
                                 ticket_number=number, sequence=1, raw_body=b"{}",
                                 payload={"message": message}, received_at=now)
    Delivery.objects.create(event=event, tenant=t, ticket=ticket, target="engine",
                            endpoint="engine_message")
request = RequestFactory().get("/")
request.user = get_user_model().objects.create_superuser("root", "r@example.com", "pw")
found = {}
for model in (Event, Delivery, Ticket, Contact):
    admin = site._registry[model]
    for q in ("e5f607", "BUDI santoso", "PESANAN halo", "c-one santoso", "budi\\x00"):
        queryset, _ = admin.get_search_results(request, admin.get_queryset(request), q)
        found[f"{model.__name__} {q}"] = queryset.count()
print(json.dumps(found))
"""


def test_search_on_sqlite(tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path}/portal.sqlite3",
        "PORTAL_VAR_DIR": str(tmp_path),
        "DEBUG": "true",
    }
    result = subprocess.run(
        [sys.executable, "-c", SQLITE_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found == {
        "Event e5f607": 2,  # both tenants' tickets have that part (a superuser sees both)
        "Event BUDI santoso": 1,
        "Event PESANAN halo": 1,
        "Event c-one santoso": 1,  # a contact id and part of the name
        "Event budi\x00": 0,
        "Delivery e5f607": 2,
        "Delivery BUDI santoso": 1,
        "Delivery PESANAN halo": 1,
        "Delivery c-one santoso": 1,
        "Delivery budi\x00": 0,
        "Ticket e5f607": 2,
        "Ticket BUDI santoso": 1,
        "Ticket PESANAN halo": 0,  # the ticket list does not search message text
        "Ticket c-one santoso": 1,
        "Ticket budi\x00": 0,
        "Contact e5f607": 0,
        "Contact BUDI santoso": 1,
        "Contact PESANAN halo": 0,
        "Contact c-one santoso": 1,
        "Contact budi\x00": 0,
    }
