"""Health endpoints and the constraints that keep the data true."""

import pytest
from django.db import IntegrityError, connection, transaction
from django.test import Client
from django.utils import timezone

from integrations.models import ApiKey, Contact, Delivery, Event, Ticket
from integrations.services.heartbeats import heartbeat_record
from tests.factories import ContactFactory, PartnerFactory, TenantFactory, TicketFactory


def test_healthz_answers_without_database():
    assert Client().get("/healthz").json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_reports_database_and_broker(settings):
    heartbeat_record("scheduler")
    heartbeat_record("worker:w1@host")
    response = Client().get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json()["database"] == connection.vendor


@pytest.mark.django_db
def test_readyz_is_503_when_broker_is_unreachable(settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"
    response = Client().get("/readyz")
    assert response.status_code == 503
    assert "broker unreachable" in response.json()["problems"][0]


@pytest.mark.django_db
def test_ticket_number_unique_per_tenant_only():
    a, b = TenantFactory(), TenantFactory()
    TicketFactory(tenant=a, ticket_number="T1")
    TicketFactory(tenant=b, ticket_number="T1")
    with pytest.raises(IntegrityError):
        TicketFactory(tenant=a, ticket_number="T1")


@pytest.mark.django_db
def test_contact_unique_per_tenant_only():
    a, b = TenantFactory(), TenantFactory()
    ContactFactory(tenant=a, contact_id="C1")
    ContactFactory(tenant=b, contact_id="C1")
    with pytest.raises(IntegrityError), transaction.atomic():
        ContactFactory(tenant=a, contact_id="C1")
    assert Contact.objects.count() == 2


def _event(ticket, sequence):
    return Event.objects.create(
        tenant=ticket.tenant,
        kind="incoming",
        source="engine",
        ticket=ticket,
        ticket_number=ticket.ticket_number,
        sequence=sequence,
        raw_body=b"{}",
        payload={},
        received_at=timezone.now(),
    )


@pytest.mark.django_db
def test_event_sequence_unique_per_ticket():
    ticket = TicketFactory()
    _event(ticket, 1)
    with pytest.raises(IntegrityError):
        _event(ticket, 1)


@pytest.mark.django_db
def test_one_delivery_per_event_and_target():
    ticket = TicketFactory()
    partner = PartnerFactory(tenant=ticket.tenant)
    event = _event(ticket, 1)
    fields = {
        "event": event,
        "tenant": ticket.tenant,
        "ticket": ticket,
        "partner": partner,
        "target": f"partner:{partner.pk}",
        "endpoint": "incoming",
    }
    Delivery.objects.create(**fields)
    with pytest.raises(IntegrityError):
        Delivery.objects.create(**fields)


@pytest.mark.django_db
def test_api_key_kind_must_match_partner():
    with pytest.raises(IntegrityError):
        ApiKey.objects.create(kind="partner", partner=None, prefix="prt_x", key_hash="0" * 64)


@pytest.mark.django_db
def test_dispatcher_index_exists():
    with connection.cursor() as cursor:
        indexes = connection.introspection.get_constraints(cursor, Delivery._meta.db_table)
    assert indexes["delivery_due_idx"]["columns"] == ["status", "next_attempt_at"]
    assert Ticket._meta.db_table


def test_the_root_leads_to_the_admin(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"] == "/admin/"
