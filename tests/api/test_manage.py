"""The management API (SPEC §8): management tokens, every operation × role × tenant, and
each operation doing what the admin does (integrations/api/manage.py)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from integrations.models import ApiKey, Delivery, Partner, SigningSecret
from integrations.services.management import management_token_create, management_token_revoke
from tests.conftest import incoming_body
from tests.factories import TenantFactory
from tests.support.outbox import send_one

M = "/api/v1/manage"
IN = "/api/v1/engine/incoming"


class Token:
    """A management-API client bound to one token."""

    def __init__(self, raw: str) -> None:
        self.raw = raw
        self.client = APIClient()

    def call(self, method: str, path: str, body: dict | None = None, **extra):
        kwargs = {"HTTP_AUTHORIZATION": f"Bearer {self.raw}", **extra}
        if body is not None:
            kwargs.update(data=json.dumps(body), content_type="application/json")
        return getattr(self.client, method.lower())(path, **kwargs)


@pytest.fixture
def admin_token(tenant):
    return Token(management_token_create(tenant=tenant, role="admin", name="ci")[1])


@pytest.fixture
def support_token(tenant):
    return Token(management_token_create(tenant=tenant, role="support")[1])


@pytest.fixture
def other_admin(db):
    other = TenantFactory(owner="other-tenant-0000000000000000001", name="Other")
    return Token(management_token_create(tenant=other, role="admin")[1])


@pytest.fixture
def delivered(engine_api, partner, partner_server_factory):
    """One event delivered to the partner (succeeded) and one dead, with their attempts."""
    server = partner_server_factory(lambda r, n: (200, b"{}", {}) if n == 1 else (400, b"", {}))
    Partner.objects.filter(pk=partner.pk).update(base_url=server.url)
    for ticket in ("T-1", "T-2"):
        engine_api.post(IN, incoming_body(ticketNumber=ticket))
    for delivery in Delivery.objects.order_by("id"):
        send_one(delivery_id=delivery.pk)
    return list(Delivery.objects.order_by("id"))


# --- the scoping table -----------------------------------------------------------------------

# (method, path with {p} partner id / {k} key prefix / {d} delivery id, body, admin only)
OPERATIONS = [
    ("GET", "/tenant", None, False),
    ("GET", "/partners", None, False),
    ("POST", "/partners", "new_partner", True),
    ("GET", "/partners/{p}", None, False),
    ("PATCH", "/partners/{p}", {"sendMessagePath": "/send2"}, True),
    ("POST", "/partners/{p}/disable", {}, True),
    ("POST", "/partners/{p}/resume", {}, True),
    ("GET", "/partners/{p}/keys", None, False),
    ("POST", "/partners/{p}/keys", {"name": "ci"}, True),
    ("DELETE", "/partners/{p}/keys/{k}", None, True),
    ("POST", "/partners/{p}/secrets", {}, True),
    ("POST", "/partners/{p}/test", {}, False),
    ("POST", "/partners/{p}/recover", "window", False),
    ("POST", "/partners/{p}/portal-links", {}, True),
    ("GET", "/deliveries", None, False),
    ("GET", "/deliveries/{d}", None, False),
    ("POST", "/deliveries/{d}/redeliver", {}, False),
    ("POST", "/deliveries/{d}/cancel", {}, True),
    ("GET", "/tickets/{t}", None, False),
    ("PATCH", "/tenant", {"operationsUrl": ""}, True),
]
OPS_IDS = [f"{m} {p}" for m, p, _, _ in OPERATIONS]


def _body(kind, n: int):
    if kind == "new_partner":
        return {
            "name": f"New {n}",
            "baseUrl": "http://127.0.0.1:9",
            "incomingMessagePath": "/i",
            "sendMessagePath": "/s",
        }
    if kind == "window":
        now = timezone.now()
        return {"since": (now - timedelta(days=1)).isoformat(), "until": now.isoformat()}
    return kind


def _world(delivered, partner):
    dead, done = delivered[1], delivered[0]
    key = ApiKey.objects.filter(partner=partner).first()
    return {"p": partner.pk, "k": key.prefix, "t": "T-1", "d": dead.pk, "done": done.pk}


@pytest.mark.parametrize(("method", "path", "body", "admin_only"), OPERATIONS, ids=OPS_IDS)
@pytest.mark.parametrize("role", ["admin", "support"])
def test_every_operation_by_role_on_its_own_tenant(
    role, method, path, body, admin_only, admin_token, support_token, delivered, partner
):
    token = admin_token if role == "admin" else support_token
    ids = _world(delivered, partner)
    if path.startswith("/deliveries/{d}/cancel"):
        Delivery.objects.filter(pk=ids["d"]).update(status="retrying")  # cancellable
    response = token.call(method, M + path.format(**ids), _body(body, 1))
    if role == "support" and admin_only:
        assert response.status_code == 403, response.content
        assert response.json()["code"] == "admin_role_required"
    else:
        assert 200 <= response.status_code < 300, response.content


# (the operations whose path names an object; the others act on the caller's own tenant)
ON_OBJECTS = [op for op in OPERATIONS if "{" in op[1]]


@pytest.mark.parametrize(
    ("method", "path", "body", "admin_only"),
    ON_OBJECTS,
    ids=[f"{m} {p}" for m, p, _, _ in ON_OBJECTS],
)
def test_another_tenants_objects_are_404(
    method, path, body, admin_only, other_admin, delivered, partner
):
    response = other_admin.call(
        method, M + path.format(**_world(delivered, partner)), _body(body, 2)
    )
    assert response.status_code == 404, response.content
    assert response.json()["status"] == "error"


def test_lists_never_show_another_tenants_rows(other_admin, delivered):
    assert other_admin.call("GET", f"{M}/partners").json()["results"] == []
    assert other_admin.call("GET", f"{M}/deliveries").json()["results"] == []


# --- tokens -----------------------------------------------------------------------------------


def test_only_management_tokens_are_let_in(engine_api, partner_api, admin_token, tenant):
    for raw in (engine_api.key, partner_api.key, "", "mgt_000000000000.nope"):
        response = Token(raw).call("GET", f"{M}/partners")
        assert response.status_code == 401, raw
        assert response.json()["status"] == "error"
    # and a management token is refused by the event API
    response = admin_token.call("POST", IN, incoming_body())
    assert response.status_code == 401


def test_a_revoked_or_expired_token_fails_at_once(tenant):
    token, raw = management_token_create(tenant=tenant, role="admin")
    assert Token(raw).call("GET", f"{M}/tenant").status_code == 200
    management_token_revoke(token=token)
    response = Token(raw).call("GET", f"{M}/tenant")
    assert (response.status_code, response.json()["code"]) == (401, "token_revoked")
    token, raw = management_token_create(
        tenant=tenant, role="admin", expires_at=timezone.now() + timedelta(seconds=60)
    )
    type(token).objects.filter(pk=token.pk).update(expires_at=timezone.now())
    assert Token(raw).call("GET", f"{M}/tenant").json()["code"] == "token_expired"


def test_create_management_token_prints_it_once(tenant, capsys):
    call_command("create_management_token", "--owner", tenant.owner, "--role", "support")
    printed = json.loads(capsys.readouterr().out)
    assert printed["role"] == "support" and printed["token"].startswith("mgt_")
    answer = Token(printed["token"]).call("GET", f"{M}/tenant").json()
    assert answer == {
        "owner": tenant.owner,
        "name": tenant.name,
        "timeZone": tenant.time_zone,
        "operationsUrl": "",
        "role": "support",
    }


# --- each operation ---------------------------------------------------------------------------


def test_a_partner_is_created_changed_and_its_key_works(admin_token, tenant, engine_api):
    body = {
        "name": "Helpdesk",
        "baseUrl": "https://desk.example.com/hooks",
        "incomingMessagePath": "/incoming",
        "sendMessagePath": "/send",
        "channels": ["whatsapp"],
    }
    created = admin_token.call("POST", f"{M}/partners", body)
    assert created.status_code == 201, created.content
    shown = created.json()
    assert shown["apiKey"].startswith("prt_") and shown["signingSecret"].startswith("whsec_")
    # the key it was given works on the event API at once
    engine_api.post(IN, incoming_body(ticketNumber="K-1"))
    outgoing = APIClient().post(
        "/api/v1/outgoing",
        data=json.dumps(
            {
                "ticketNumber": "K-1",
                "channel": "whatsapp",
                "messageType": "text",
                "message": "hi",
                "mediaLink": "",
                "customerName": "C",
                "owner": tenant.owner,
            }
        ),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {shown['apiKey']}",
    )
    assert outgoing.status_code in (200, 202), outgoing.content
    # and reading it back shows no secret, with its health
    pid = shown["partnerId"]
    read = admin_token.call("GET", f"{M}/partners/{pid}").json()
    assert "apiKey" not in read and read["health"]["waiting"] == 1  # K-1, not sent yet
    # a change is validated like the admin's, every problem named
    bad = admin_token.call(
        "PATCH", f"{M}/partners/{pid}", {"baseUrl": "desk.example", "timeout": 999, "colour": 1}
    )
    assert bad.status_code == 400
    assert set(bad.json()["errors"]) == {"colour"}
    bad = admin_token.call(
        "PATCH", f"{M}/partners/{pid}", {"baseUrl": "desk.example", "timeout": 999}
    )
    assert bad.status_code == 400 and {"base_url", "timeout"} <= set(bad.json()["errors"])
    good = admin_token.call("PATCH", f"{M}/partners/{pid}", {"sendMessagePath": "/v2/send"})
    assert good.status_code == 200 and good.json()["sendMessagePath"] == "/v2/send"
    # a name taken in the tenant is a conflict
    taken = admin_token.call("POST", f"{M}/partners", {**body, "baseUrl": "https://x.example"})
    assert taken.status_code == 409 and taken.json()["code"] == "duplicate_name"
    # missing fields are named
    missing = admin_token.call("POST", f"{M}/partners", {"name": "Only"})
    assert missing.status_code == 400
    assert {"baseUrl", "incomingMessagePath", "sendMessagePath"} <= set(missing.json()["errors"])
    # and each change is in the admin's history, with the token that made it
    messages = list(
        LogEntry.objects.filter(object_id=str(pid)).values_list("change_message", flat=True)
    )
    assert any(m.startswith("Created.") for m in messages)
    assert any(m.startswith("Changed sendMessagePath.") for m in messages)
    assert all("management API, token mgt_" in m for m in messages)


def test_keys_are_listed_added_and_revoked_at_once(admin_token, partner_with_key, partner_api):
    partner, raw, _ = partner_with_key
    pid = partner.pk
    added = admin_token.call("POST", f"{M}/partners/{pid}/keys", {"name": "second"})
    assert added.status_code == 201
    new_key = added.json()["apiKey"]
    listed = admin_token.call("GET", f"{M}/partners/{pid}/keys").json()["results"]
    assert {k["prefix"] for k in listed} == {raw.split(".")[0], new_key.split(".")[0]}
    assert all("apiKey" not in k for k in listed)
    # when the first key is revoked, it fails at once; the second still works
    prefix = raw.split(".")[0]
    assert admin_token.call("DELETE", f"{M}/partners/{pid}/keys/{prefix}").status_code == 204
    assert partner_api.get("/api/v1/events/00000000-0000-0000-0000-000000000000").status_code == 401
    second = APIClient().get(
        "/api/v1/events/00000000-0000-0000-0000-000000000000",
        HTTP_AUTHORIZATION=f"Bearer {new_key}",
    )
    assert second.status_code == 404
    assert admin_token.call("DELETE", f"{M}/partners/{pid}/keys/prt_nope").status_code == 404
    # and an expiry in the past is refused
    past = (timezone.now() - timedelta(hours=1)).isoformat()
    bad = admin_token.call("POST", f"{M}/partners/{pid}/keys", {"expiresAt": past})
    assert bad.status_code == 400 and "expiresAt" in bad.json()["errors"]


def test_secret_rotation_keeps_the_old_one_for_a_day(admin_token, partner):
    answer = admin_token.call("POST", f"{M}/partners/{partner.pk}/secrets")
    assert answer.status_code == 201
    shown = answer.json()
    assert shown["signingSecret"].startswith("whsec_")
    assert SigningSecret.objects.filter(partner=partner).count() == 2
    previous = timezone.datetime.fromisoformat(shown["previousExpiresAt"].replace("Z", "+00:00"))
    assert timedelta(hours=23) < previous - timezone.now() <= timedelta(hours=24)


def test_disable_and_resume(admin_token, partner):
    disabled = admin_token.call("POST", f"{M}/partners/{partner.pk}/disable", {"reason": "off"})
    assert disabled.json()["state"] == "disabled" and disabled.json()["stateReason"] == "off"
    resumed = admin_token.call("POST", f"{M}/partners/{partner.pk}/resume")
    assert resumed.json()["state"] == "active"


def test_test_event_reports_the_partners_answer(support_token, partner, partner_server_factory):
    server = partner_server_factory(lambda r, n: (200, b'{"status":"success"}', {}))
    Partner.objects.filter(pk=partner.pk).update(base_url=server.url)
    probe = support_token.call("POST", f"{M}/partners/{partner.pk}/test").json()
    assert probe["statusCode"] == 200 and probe["outcome"] == "success"
    assert probe["responseExcerpt"] == '{"status":"success"}'
    assert len(server.received) == 1


def test_deliveries_filter_paginate_and_show_their_attempts(support_token, delivered, partner):
    done, dead = delivered
    everything = support_token.call("GET", f"{M}/deliveries").json()
    assert [d["deliveryId"] for d in everything["results"]] == [dead.pk, done.pk]
    assert everything["next"] is None
    only_dead = support_token.call(
        "GET", f"{M}/deliveries", QUERY_STRING=f"status=dead&partnerId={partner.pk}"
    ).json()["results"]
    assert [d["deliveryId"] for d in only_dead] == [dead.pk]
    assert only_dead[0]["ticketNumber"] == "T-2" and only_dead[0]["lastStatusCode"] == 400
    by_ticket = support_token.call("GET", f"{M}/deliveries", QUERY_STRING="ticketNumber=T-1")
    assert [d["deliveryId"] for d in by_ticket.json()["results"]] == [done.pk]
    # one at a time, by the next link
    first = support_token.call("GET", f"{M}/deliveries", QUERY_STRING="limit=1").json()
    assert len(first["results"]) == 1 and "cursor=" in first["next"]
    second = support_token.call("GET", first["next"].split("testserver")[1]).json()
    assert [d["deliveryId"] for d in second["results"]] == [done.pk] and second["next"] is None
    # bad filters are named
    bad = support_token.call(
        "GET", f"{M}/deliveries", QUERY_STRING="status=lost&limit=0&eventId=x&since=yesterday"
    )
    assert bad.status_code == 400 and {"status", "eventId"} <= set(bad.json()["errors"])
    # and the detail has the attempt log
    detail = support_token.call("GET", f"{M}/deliveries/{dead.pk}").json()
    assert [a["statusCode"] for a in detail["attemptLog"]] == [400]
    assert detail["attemptLog"][0]["outcome"] == "dead"


def test_redeliver_recover_and_cancel(admin_token, support_token, delivered, partner):
    done, dead = delivered
    again = support_token.call("POST", f"{M}/deliveries/{dead.pk}/redeliver")
    assert again.status_code == 200 and again.json()["status"] == "pending"
    # redelivering what is not final is a conflict
    twice = support_token.call("POST", f"{M}/deliveries/{dead.pk}/redeliver")
    assert twice.status_code == 409 and twice.json()["code"] == "not_final"
    cancelled = admin_token.call("POST", f"{M}/deliveries/{dead.pk}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    # recover: dead ones in the window go again
    Delivery.objects.filter(pk=dead.pk).update(status="dead")
    now = timezone.now()
    window = {
        "since": (now - timedelta(hours=1)).isoformat(),
        "until": (now + timedelta(seconds=1)).isoformat(),
    }
    assert support_token.call("POST", f"{M}/partners/{partner.pk}/recover", window).json() == {
        "queued": 1
    }
    bad = support_token.call("POST", f"{M}/partners/{partner.pk}/recover", {"since": "soon"})
    assert bad.status_code == 400 and {"since", "until"} <= set(bad.json()["errors"])
    # (a well-formed time that does not exist is a 400 too, found by schemathesis)
    window = {"since": "2024-01-01T12:00:00Z", "until": "2024-01-01T12:99:00Z"}
    bad = support_token.call("POST", f"{M}/partners/{partner.pk}/recover", window)
    assert bad.status_code == 400 and set(bad.json()["errors"]) == {"until"}
    # (and an offset PostgreSQL refuses, or a time out of range in UTC: found by schemathesis)
    odd = support_token.call(
        "GET", f"{M}/deliveries", QUERY_STRING="since=0186-03-11T16%3A12%3A53%2B23%3A42"
    )
    assert odd.status_code == 200
    edge = support_token.call(
        "GET", f"{M}/deliveries", QUERY_STRING="since=0001-01-01T00%3A00%3A00%2B05%3A00"
    )
    assert edge.status_code == 400 and "since" in edge.json()["errors"]


def test_ticket_timeline(support_token, delivered):
    ticket = support_token.call("GET", f"{M}/tickets/T-1").json()
    assert ticket["ticketNumber"] == "T-1"
    (event,) = ticket["timeline"]
    assert event["kind"] == "incoming" and event["deliveries"][0]["status"] == "succeeded"
    assert support_token.call("GET", f"{M}/tickets/nope").status_code == 404


def test_operations_url_is_set_and_its_secret_shown_once(admin_token, tenant):
    answer = admin_token.call("PATCH", f"{M}/tenant", {"operationsUrl": "https://ops.example/h"})
    assert answer.status_code == 200
    secret = answer.json()["operationsSigningSecret"]
    tenant.refresh_from_db()
    assert str(tenant.operations_signing_secret) == secret
    again = admin_token.call("PATCH", f"{M}/tenant", {"operationsUrl": "https://ops.example/h2"})
    assert "operationsSigningSecret" not in again.json()
    bad = admin_token.call("PATCH", f"{M}/tenant", {"operationsUrl": "ops.example"})
    assert bad.status_code == 400


def test_bodies_are_checked_before_anything(admin_token, partner):
    url = f"{M}/partners/{partner.pk}"
    not_json = admin_token.client.patch(
        url, data="x", content_type="text/plain", HTTP_AUTHORIZATION=f"Bearer {admin_token.raw}"
    )
    assert not_json.status_code == 415
    broken = admin_token.client.patch(
        url,
        data="{",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {admin_token.raw}",
    )
    assert broken.status_code == 400
    wrong_types = admin_token.call("PATCH", url, {"name": 5, "channels": "whatsapp"})
    assert wrong_types.status_code == 400
    assert set(wrong_types.json()["errors"]) == {"name", "channels"}


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest",
        "http://10.0.0.5",
        "http://[fd00::1]:8080",
        "http://[::ffff:192.168.1.1]",
    ],
)
def test_a_partner_url_the_outbound_policy_blocks_is_refused(admin_token, partner, url):
    answer = admin_token.call("PATCH", f"{M}/partners/{partner.pk}", {"baseUrl": url})
    assert answer.status_code == 400, answer.content
    assert "may not send to" in answer.json()["errors"]["base_url"][0]
    # (the allowlisted loopback of the tests is accepted)
    ok = admin_token.call("PATCH", f"{M}/partners/{partner.pk}", {"baseUrl": "http://127.0.0.1:9"})
    assert ok.status_code == 200


# --- found by review: inputs that must be a 400 (or nothing), never a 500 -------------------


@pytest.mark.parametrize(
    "query",
    ["limit=²", "cursor=²", "partnerId=²", f"cursor={'9' * 5000}", f"partnerId={'9' * 30}"],
)
def test_numbers_python_would_not_take_are_a_400(support_token, query):
    answer = support_token.call("GET", f"{M}/deliveries", QUERY_STRING=query)
    assert answer.status_code == 400, answer.content


def test_nul_and_surrogates_are_refused_or_match_nothing(admin_token, support_token, partner):
    assert (
        support_token.call("GET", f"{M}/deliveries", QUERY_STRING="ticketNumber=a%00b").json()[
            "results"
        ]
        == []
    )
    assert admin_token.call("DELETE", f"{M}/partners/{partner.pk}/keys/prt%00x").status_code == 404
    for body in ({"name": "a\x00b"}, {"sendMessagePath": "/a\x00"}, {"name": "\ud800x"}):
        raw = json.dumps(body)  # (json escapes them: \\u0000, \\ud800)
        answer = admin_token.client.patch(
            f"{M}/partners/{partner.pk}",
            data=raw,
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {admin_token.raw}",
        )
        assert answer.status_code == 400, (body, answer.content)


def test_a_huge_timeout_is_a_400(admin_token, partner):
    answer = admin_token.client.patch(
        f"{M}/partners/{partner.pk}",
        data='{"timeout": ' + "9" * 400 + "}",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {admin_token.raw}",
    )
    assert answer.status_code == 400 and "timeout" in answer.json()["errors"]


def test_the_operations_url_password_is_never_answered(admin_token, support_token, tenant):
    admin_token.call("PATCH", f"{M}/tenant", {"operationsUrl": "https://ops:s3cr3t@ops.example/h"})
    for token in (admin_token, support_token):
        shown = token.call("GET", f"{M}/tenant").json()["operationsUrl"]
        assert shown == "https://ops:***@ops.example/h"
    # sending back what GET shows keeps the password
    admin_token.call("PATCH", f"{M}/tenant", {"operationsUrl": "https://ops:***@ops.example/h"})
    tenant.refresh_from_db()
    assert tenant.operations_url == "https://ops:s3cr3t@ops.example/h"
