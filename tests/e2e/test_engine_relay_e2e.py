"""Engine relay end to end (SPEC §6): a partner's reply and its close command reach a fake
engine on loopback through a real worker, retried while the engine answers 503."""

from standardwebhooks.webhooks import Webhook

from integrations.models import Delivery, Ticket
from tests.conftest import command_body, incoming_body, outgoing_body
from tests.support.processes import wait_for

OK = (200, b'{"status":"success"}', {})


def test_reply_and_close_reach_the_engine_signed_after_503s(
    workers, engine_api, partner_api, partner, tenant, partner_server_factory
):
    # given an engine that answers 503 twice, then accepts
    engine = partner_server_factory(lambda r, n: (503, b"", {}) if n <= 2 else OK)
    tenant.engine_base_url = engine.url + "/api"
    tenant.engine_send_message_path = "/messages"
    tenant.engine_command_path = "/commands"
    tenant.engine_token = "tok-123"
    tenant.save()
    partner.base_url = partner_server_factory().url
    partner.save()
    workers.start_worker()
    workers.start_beat()
    # when the partner replies and then closes the ticket
    engine_api.post("/api/v1/engine/incoming", incoming_body())
    partner_api.post("/api/v1/outgoing", outgoing_body(message="Terima kasih"))
    partner_api.post("/api/v1/command", command_body())
    # then both reach the engine, in order, with bearer token and a valid signature
    wait_for(
        lambda: not Delivery.objects.exclude(status="succeeded").exists(),
        60,
        "every delivery to succeed",
        workers.logs,
    )
    accepted = [r for r in engine.received if r.status == 200]
    assert [r.path for r in accepted] == ["/api/messages", "/api/commands"]
    assert accepted[0].json == {
        **outgoing_body(message="Terima kasih"),
        "createdDate": "2021-04-28T15:39:37.945",
    }
    assert accepted[1].json == command_body()
    for item in engine.received:
        assert item.headers["Authorization"] == "Bearer tok-123"
        Webhook(tenant.engine_signing_secret).verify(item.body, item.headers)
    assert len(engine.received) == 4  # two 503s retried
    assert Ticket.objects.get().status == "closed"


def test_without_engine_relay_is_not_configured_and_ticket_closes(
    workers, engine_api, partner_api, partner, partner_server_factory
):
    partner.base_url = partner_server_factory().url
    partner.save()
    workers.start_worker()
    engine_api.post("/api/v1/engine/incoming", incoming_body())
    response = partner_api.post("/api/v1/command", command_body())
    assert response.status_code == 200
    assert Delivery.objects.get(event_id=response.json()["eventId"]).status == "not_configured"
    assert Ticket.objects.get().status == "closed"
