"""Partner outgoing and command events, engine outgoing mirrors (SPEC §3.2, §3.3)."""

import pytest

from integrations.models import Delivery, Event, Ticket
from integrations.services.partners import partner_create
from tests.conftest import command_body, incoming_body, outgoing_body

OUT = "/api/v1/outgoing"
CMD = "/api/v1/command"
ENGINE_OUT = "/api/v1/engine/outgoing"


@pytest.fixture
def ticket(engine_api, partner):
    engine_api.post("/api/v1/engine/incoming", incoming_body())
    return Ticket.objects.get()


def test_partner_outgoing_relays_to_engine_only(partner_api, ticket, tenant, settings):
    # given an engine relay configured for the tenant
    tenant.engine_base_url = "http://127.0.0.1:9/engine"
    tenant.engine_send_message_path = "/messages"
    tenant.save()
    # when the partner replies
    response = partner_api.post(OUT, outgoing_body())
    # then it is stored with the ticket's createdDate and goes to the engine relay only
    assert response.status_code == 200 and response.json()["status"] == "success"
    event = Event.objects.get(pk=response.json()["eventId"])
    assert event.kind == "outgoing" and event.source == "partner"
    assert event.payload["createdDate"] == "2021-04-28T15:39:37.945"
    deliveries = list(event.deliveries.all())
    assert [(d.target, d.endpoint, d.status) for d in deliveries] == [
        ("engine", "engine_message", "pending")
    ]


def test_partner_outgoing_without_engine_is_not_configured(partner_api, ticket):
    response = partner_api.post(OUT, outgoing_body())
    delivery = Delivery.objects.get(event_id=response.json()["eventId"])
    assert delivery.status == "not_configured"


def test_partner_outgoing_unknown_ticket_is_404(partner_api, ticket):
    response = partner_api.post(OUT, outgoing_body(ticketNumber="nope"))
    assert response.status_code == 404 and response.json()["code"] == "ticket_not_found"


def test_partner_outgoing_closed_ticket_is_409(partner_api, ticket):
    Ticket.objects.update(status="closed")
    response = partner_api.post(OUT, outgoing_body())
    assert response.status_code == 409 and response.json()["code"] == "ticket_closed"


def test_partner_outgoing_other_channel_is_409(partner_api, ticket):
    response = partner_api.post(OUT, outgoing_body(channel="telegram"))
    assert response.status_code == 409 and response.json()["code"] == "channel_mismatch"


def test_partner_outgoing_refuses_sticker(partner_api, ticket):
    response = partner_api.post(OUT, outgoing_body(messageType="sticker"))
    assert response.status_code == 400 and "messageType" in response.json()["errors"]


def test_partner_outgoing_other_owner_is_403(partner_api, ticket, other_tenant):
    response = partner_api.post(OUT, outgoing_body(owner=other_tenant.owner))
    assert response.status_code == 403 and response.json()["code"] == "owner_forbidden"


def test_partner_outgoing_cannot_reach_other_tenants_ticket(
    other_partner_api, ticket, other_tenant
):
    # the other tenant's partner names its own owner but our ticket number
    response = other_partner_api.post(OUT, outgoing_body(owner=other_tenant.owner))
    assert response.status_code == 404


def test_partner_outgoing_is_never_mirrored_to_partners(partner_api, ticket, tenant):
    partner_create(
        tenant=tenant,
        name="Second",
        base_url="http://127.0.0.1:9",
        incoming_message_path="/i",
        send_message_path="/s",
    )
    response = partner_api.post(OUT, outgoing_body())
    targets = list(
        Delivery.objects.filter(event_id=response.json()["eventId"]).values_list(
            "target", flat=True
        )
    )
    assert targets == ["engine"]


def test_engine_outgoing_mirrors_to_partners_send_path(engine_api, ticket, partner):
    response = engine_api.post(ENGINE_OUT, outgoing_body(message="Selamat datang"))
    assert response.status_code == 202
    delivery = Delivery.objects.get(event_id=response.json()["eventId"])
    assert delivery.partner == partner and delivery.endpoint == "send"


def test_engine_outgoing_accepted_on_closed_ticket_without_reopening(engine_api, ticket):
    Ticket.objects.update(status="closed")
    response = engine_api.post(ENGINE_OUT, outgoing_body())
    assert response.status_code == 202
    assert Ticket.objects.get().status == "closed"


def test_engine_outgoing_unknown_ticket_is_404(engine_api, ticket):
    response = engine_api.post(ENGINE_OUT, outgoing_body(ticketNumber="missing"))
    assert response.status_code == 404


def test_engine_outgoing_converts_sticker(engine_api, ticket):
    response = engine_api.post(ENGINE_OUT, outgoing_body(messageType="sticker", message=""))
    payload = Event.objects.get(pk=response.json()["eventId"]).payload
    assert payload["messageType"] == "text" and payload["message"] == "Stiker"


def test_command_close_closes_ticket_and_relays(partner_api, ticket, partner):
    response = partner_api.post(CMD, command_body(event="CLOSE"))
    assert response.status_code == 200
    ticket.refresh_from_db()
    assert ticket.status == "closed" and ticket.closed_by == partner.name
    assert ticket.closed_at is not None
    event = Event.objects.get(pk=response.json()["eventId"])
    assert event.kind == "command" and event.payload["event"] == "close"
    assert [d.target for d in event.deliveries.all()] == ["engine"]


def test_command_close_on_closed_ticket_logs_without_relay(partner_api, ticket):
    first = partner_api.post(CMD, command_body())
    second = partner_api.post(CMD, command_body())
    assert second.status_code == 200
    assert second.json()["eventId"] != first.json()["eventId"]
    assert not Delivery.objects.filter(event_id=second.json()["eventId"]).exists()
    assert Event.objects.filter(kind="command").count() == 2


def test_command_unknown_event_is_400_listing_allowed(partner_api, ticket):
    response = partner_api.post(CMD, command_body(event="reopen"))
    assert response.status_code == 400
    assert "close" in response.json()["errors"]["event"][0]


def test_command_unknown_ticket_is_404(partner_api, ticket):
    assert partner_api.post(CMD, command_body(ticketNumber="zzz")).status_code == 404


def test_command_other_channel_is_409(partner_api, ticket):
    response = partner_api.post(CMD, command_body(channel="line"))
    assert response.status_code == 409 and response.json()["code"] == "channel_mismatch"


def test_command_requires_partner_key(engine_api, ticket):
    assert engine_api.post(CMD, command_body()).status_code == 403


def test_incoming_after_close_reopens(engine_api, partner_api, ticket):
    partner_api.post(CMD, command_body())
    engine_api.post("/api/v1/engine/incoming", incoming_body(message="again"))
    assert Ticket.objects.get().status == "open"
