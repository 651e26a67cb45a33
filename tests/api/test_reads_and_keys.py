"""History, contact and event lookups; keys, tenants and rate limits."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from integrations.models import ApiKey, Delivery, Partner
from integrations.services.accounts import api_key_create, api_key_revoke
from integrations.services.partners import partner_create
from tests.conftest import Caller, command_body, incoming_body, outgoing_body

IN = "/api/v1/engine/incoming"
TICKET = "294c9ea88f7e649f8c37ae895ebab247"


@pytest.fixture
def conversation(engine_api, partner_api, partner):
    ids = [engine_api.post(IN, incoming_body(message=f"m{i}")).json()["eventId"] for i in range(3)]
    ids.append(partner_api.post("/api/v1/outgoing", outgoing_body()).json()["eventId"])
    partner_api.post("/api/v1/command", command_body())
    return ids


def test_history_lists_messages_oldest_first_with_deliveries(partner_api, conversation, partner):
    response = partner_api.get(f"/api/v1/tickets/{TICKET}/messages")
    assert response.status_code == 200
    body = response.json()
    assert [r["eventId"] for r in body["results"]] == conversation
    assert [r["direction"] for r in body["results"]] == ["incoming"] * 3 + ["outgoing"]
    assert [r["source"] for r in body["results"]] == ["engine"] * 3 + ["partner"]
    assert body["results"][0]["message"] == "m0"
    assert body["results"][0]["deliveries"] == [
        {"target": f"partner:{partner.pk}", "status": "pending"}
    ]
    assert body["results"][3]["deliveries"] == [{"target": "engine", "status": "not_configured"}]
    assert body["results"][0]["createdAt"].endswith("Z")
    assert body["next"] is None


def test_history_paginates_with_cursor(partner_api, conversation):
    first = partner_api.get(f"/api/v1/tickets/{TICKET}/messages", limit=3).json()
    assert len(first["results"]) == 3 and first["next"]
    second = partner_api.client.get(
        first["next"], HTTP_AUTHORIZATION=f"Bearer {partner_api.key}"
    ).json()
    assert [r["eventId"] for r in second["results"]] == conversation[3:]
    assert second["next"] is None


@pytest.mark.parametrize("limit", ["0", "101", "abc", "-5"])
def test_history_rejects_bad_limit(partner_api, conversation, limit):
    response = partner_api.get(f"/api/v1/tickets/{TICKET}/messages", limit=limit)
    assert response.status_code == 400 and "limit" in response.json()["errors"]


def test_history_hides_other_partners_deliveries(partner_api, engine_api, tenant):
    other, _, _ = partner_create(
        tenant=tenant,
        name="Other desk",
        base_url="http://127.0.0.1:9",
        incoming_message_path="/i",
        send_message_path="/s",
    )
    engine_api.post(IN, incoming_body())
    results = partner_api.get(f"/api/v1/tickets/{TICKET}/messages").json()["results"]
    assert len(Delivery.objects.all()) == 2
    assert all(d["target"] != f"partner:{other.pk}" for d in results[0]["deliveries"])


def test_history_of_other_tenant_ticket_is_404(other_partner_api, conversation):
    response = other_partner_api.get(f"/api/v1/tickets/{TICKET}/messages")
    assert response.status_code == 404 and response.json()["code"] == "ticket_not_found"


def test_contact_lookup(partner_api, conversation):
    body = partner_api.get("/api/v1/contacts/d61d77735f3fe08bcf6d6b96fa06ba9d").json()
    assert body["customerName"] == "Farhan Akbar" and body["accountId"] == "628128778222"
    assert body["channel"] == "whatsapp"
    assert body["tickets"] == [{"ticketNumber": TICKET, "status": "closed"}]
    assert body["firstSeen"] <= body["lastSeen"]


@pytest.mark.parametrize("encoded", [True, False])
def test_ids_with_a_slash_can_be_read_back(partner_api, engine_api, partner, encoded):
    # given a ticket number and a contact id that contain "/" (the engine's own format)
    from tests.conftest import incoming_body

    body = incoming_body(ticketNumber="2026/12/0042", contactId="wa/628128778222")
    assert engine_api.post("/api/v1/engine/incoming", body).status_code == 202
    # when a partner reads them back, percent-encoded or as they are
    ticket = "2026%2F12%2F0042" if encoded else "2026/12/0042"
    contact = "wa%2F628128778222" if encoded else "wa/628128778222"
    history = partner_api.get(f"/api/v1/tickets/{ticket}/messages")
    found = partner_api.get(f"/api/v1/contacts/{contact}")
    # then both are found
    assert history.status_code == 200 and len(history.json()["results"]) == 1
    assert found.status_code == 200 and found.json()["contactId"] == "wa/628128778222"
    assert [t["ticketNumber"] for t in found.json()["tickets"]] == ["2026/12/0042"]


def test_contact_of_other_tenant_is_404(other_partner_api, conversation):
    response = other_partner_api.get("/api/v1/contacts/d61d77735f3fe08bcf6d6b96fa06ba9d")
    assert response.status_code == 404


def test_event_lookup_by_partner_and_engine(partner_api, engine_api, conversation, partner):
    for caller in (partner_api, engine_api):
        body = caller.get(f"/api/v1/events/{conversation[0]}").json()
        assert body["eventId"] == conversation[0] and body["kind"] == "incoming"
        assert body["deliveries"][0]["status"] == "pending"
        assert body["deliveries"][0]["partnerName"] == partner.name


@pytest.mark.parametrize("event_id", ["not-a-uuid", "00000000-0000-0000-0000-000000000000"])
def test_event_lookup_unknown_is_404(partner_api, event_id):
    response = partner_api.get(f"/api/v1/events/{event_id}")
    assert response.status_code == 404 and response.json()["code"] == "event_not_found"


def test_event_of_other_tenant_is_404(other_partner_api, conversation):
    assert other_partner_api.get(f"/api/v1/events/{conversation[0]}").status_code == 404


def test_unknown_api_path_gets_envelope(partner_api):
    response = partner_api.get("/api/v1/nothing/here")
    assert response.status_code == 404 and response.json()["status"] == "error"


@pytest.mark.parametrize(
    "path", ["/api/v1/nothing-here", "/api/v2/engine/incoming", "/api/v1/engine/incoming/"]
)
@pytest.mark.parametrize("method", ["post", "put", "patch", "delete", "get"])
def test_unknown_api_path_gets_envelope_whatever_the_method(db, path, method):
    # a browser-like client that enforces CSRF, as a real server does
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    if method == "get":
        response = client.get(path)
    else:
        response = getattr(client, method)(path, data="{}", content_type="application/json")
    assert response.status_code == 404, response.content[:200]
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == "not_found"


# --- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "not_authenticated"),
        ("Basic abc", "invalid_key"),
        ("Bearer ", "invalid_key"),
        ("Bearer prt_000000000000.nope", "invalid_key"),
        ("Bearer no-dot-at-all", "invalid_key"),
    ],
)
def test_api_refuses_missing_or_bad_key(tenant, header, code):
    client = APIClient()
    extra = {"HTTP_AUTHORIZATION": header} if header is not None else {}
    response = client.post(IN, data=incoming_body(), format="json", **extra)
    assert response.status_code == 401
    assert response.json()["code"] == code
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_api_refuses_right_prefix_wrong_secret(partner_api):
    prefix = partner_api.key.split(".")[0]
    bad = Caller(partner_api.client, f"{prefix}.wrongsecret")
    assert bad.get("/api/v1/contacts/x").status_code == 401


def test_api_refuses_revoked_and_expired_keys(partner):
    revoked, raw_revoked = api_key_create(kind=ApiKey.Kind.PARTNER, partner=partner)
    api_key_revoke(key=revoked)
    _, raw_expired = api_key_create(
        kind=ApiKey.Kind.PARTNER, partner=partner, expires_at=timezone.now() - timedelta(seconds=1)
    )
    for raw, code in ((raw_revoked, "key_revoked"), (raw_expired, "key_expired")):
        response = Caller(APIClient(), raw).get("/api/v1/contacts/x")
        assert response.status_code == 401 and response.json()["code"] == code


def test_api_rotation_both_keys_work(partner, partner_api):
    _, second = api_key_create(kind=ApiKey.Kind.PARTNER, partner=partner)
    for raw in (partner_api.key, second):
        assert Caller(APIClient(), raw).get("/api/v1/contacts/x").status_code == 404


def test_api_disabled_partner_is_403(partner, partner_api):
    Partner.objects.filter(pk=partner.pk).update(state="disabled")
    response = partner_api.get("/api/v1/contacts/x")
    assert response.status_code == 403 and response.json()["code"] == "partner_disabled"


def test_api_paused_partner_still_works(partner, partner_api):
    Partner.objects.filter(pk=partner.pk).update(state="paused")
    assert partner_api.get("/api/v1/contacts/x").status_code == 404


def test_engine_key_for_all_tenants_acts_for_later_ones(db):
    from tests.factories import TenantFactory

    _, raw = api_key_create(kind=ApiKey.Kind.ENGINE)
    later = TenantFactory(owner="latecomer")
    response = Caller(APIClient(), raw).post(IN, incoming_body(owner=later.owner))
    assert response.status_code == 202


def test_partner_rate_limit_answers_429_with_retry_after(partner, partner_api, settings):
    Partner.objects.filter(pk=partner.pk).update(rate_limit="3/minute")
    codes = [partner_api.get("/api/v1/contacts/x").status_code for _ in range(4)]
    assert codes == [404, 404, 404, 429]
    response = partner_api.get("/api/v1/contacts/x")
    assert response.json()["code"] == "rate_limited"
    assert int(response["Retry-After"]) >= 1


def test_engine_keys_are_not_rate_limited(engine_api, settings, partner):
    settings.PORTAL_PARTNER_RATE = "1/minute"
    codes = {engine_api.post(IN, incoming_body()).status_code for _ in range(5)}
    assert codes == {202}


def test_engine_key_whose_tenants_are_deleted_acts_for_none(db):
    from tests.factories import TenantFactory

    # given an engine key for tenant A only, and another tenant B
    a, b = TenantFactory(owner="tenant-a"), TenantFactory(owner="tenant-b")
    _, raw = api_key_create(kind=ApiKey.Kind.ENGINE, tenants=[a])
    # when A is deleted
    a.delete()
    # then the key may not act for B (it does not become an every-tenant key)
    response = Caller(APIClient(), raw).post(IN, incoming_body(owner=b.owner))
    assert response.status_code == 403
