"""Operations webhooks (SPEC §10): a tenant with an operations URL is told, by signed and
retried deliveries of the outbox, when a partner is paused or resumed and when a delivery
goes dead; a tenant without one is told nothing (integrations/outbox/notices.py)."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from integrations.models import Delivery, Event, Partner, Tenant, TenantMembership
from integrations.outbox.notices import OPERATIONS_TICKET
from integrations.services.accounts import operations_secret_rotate, tenant_update
from integrations.services.operations import partner_resume
from tests.conftest import OWNER, incoming_body
from tests.support.outbox import send_one

IN = "/api/v1/engine/incoming"


def _notices() -> list[Delivery]:
    return list(
        Delivery.objects.filter(target=Delivery.OPERATIONS_TARGET)
        .select_related("event")
        .order_by("id")
    )


def _send_due() -> None:
    """Send what is due, notices included, as the workers would (ids in order)."""
    for pk in Delivery.objects.filter(status="pending").order_by("id").values_list("pk", flat=True):
        send_one(delivery_id=pk)


@pytest.fixture
def ops_server(partner_server_factory):
    return partner_server_factory(lambda r, n: (200, b'{"status":"success"}', {}))


@pytest.fixture
def ops_tenant(tenant, ops_server):
    return tenant_update(tenant=tenant, operations_url=f"{ops_server.url}/ops")


def test_a_paused_partner_and_its_dead_delivery_are_told_signed(
    ops_tenant, ops_server, engine_api, partner, partner_server_factory
):
    # given a partner that answers 410 Gone (its delivery is dead and it is paused)
    gone = partner_server_factory(lambda r, n: (410, b"", {}))
    Partner.objects.filter(pk=partner.pk).update(base_url=gone.url)
    engine_api.post(IN, incoming_body())
    delivery = Delivery.objects.get(target=f"partner:{partner.pk}")
    # when it is sent
    assert send_one(delivery_id=delivery.pk) == "dead"
    # then two notices wait, in the order things happened: the dead delivery, then the pause
    notices = _notices()
    assert [n.event.payload["type"] for n in notices] == ["delivery.dead", "partner.paused"]
    assert all(n.status == "pending" and n.partner_id is None for n in notices)
    assert [n.event.ticket_number for n in notices] == [OPERATIONS_TICKET] * 2
    # and once sent, the operations URL got both, signed with the tenant's operations secret
    for notice in notices:
        assert send_one(delivery_id=notice.pk) == "succeeded"
    received = ops_server.on("/ops")
    assert len(received) == 2
    verifier = Webhook(str(ops_tenant.operations_signing_secret))
    bodies = [verifier.verify(r.body, dict(r.headers)) for r in received]
    dead, paused = bodies
    assert paused == {
        "type": "partner.paused",
        "occurredAt": paused["occurredAt"],
        "owner": OWNER,
        "partnerId": partner.pk,
        "reason": "The partner answered 410 Gone.",
    }
    assert paused["occurredAt"].endswith("Z")
    assert dead["type"] == "delivery.dead" and dead["deliveryId"] == delivery.pk
    assert dead["partnerId"] == partner.pk and dead["owner"] == OWNER
    assert "410" in dead["reason"]
    # (each notice's webhook-id is its event's id, so a receiver can dedupe)
    assert [r.webhook_id for r in received] == [str(n.event_id) for n in notices]


def test_a_resume_is_told_after_the_pause(ops_tenant, ops_server, partner):
    # given a paused partner whose pause was told
    from integrations.outbox.health import partner_pause

    assert partner_pause(partner_id=partner.pk, reason="test pause", now=timezone.now())
    # when an admin resumes it (and pausing a paused partner tells nothing again)
    assert not partner_pause(partner_id=partner.pk, reason="again", now=timezone.now())
    partner_resume(partner=partner)
    _send_due()
    # then the operations URL heard the pause, then the resume, once each
    types = [json.loads(r.body)["type"] for r in ops_server.on("/ops")]
    assert types == ["partner.paused", "partner.resumed"]
    # and resuming an active partner tells nothing
    partner_resume(partner=partner)
    assert len(_notices()) == 2


def test_a_failing_operations_url_is_retried_and_never_told_of_itself(
    tenant, partner_server_factory, partner
):
    failing = partner_server_factory(lambda r, n: (503, b"busy", {}) if n == 1 else (400, b"", {}))
    tenant_update(tenant=tenant, operations_url=failing.url)
    Partner.objects.filter(pk=partner.pk).update(retry_schedule="0,0")
    from integrations.outbox.health import partner_pause

    partner_pause(partner_id=partner.pk, reason="test", now=timezone.now())
    (notice,) = _notices()
    # the first try fails (503): retried like any delivery
    assert send_one(delivery_id=notice.pk) == "retrying"
    Delivery.objects.filter(pk=notice.pk).update(next_attempt_at=timezone.now())
    # the second is refused (400): dead, and no notice of the notice's death
    assert send_one(delivery_id=notice.pk) == "dead"
    assert len(_notices()) == 1


def test_without_an_operations_url_nothing_is_told(
    tenant, engine_api, partner, partner_server_factory
):
    gone = partner_server_factory(lambda r, n: (410, b"", {}))
    Partner.objects.filter(pk=partner.pk).update(base_url=gone.url)
    engine_api.post(IN, incoming_body())
    assert send_one(delivery_id=Delivery.objects.get().pk) == "dead"
    assert Partner.objects.get(pk=partner.pk).state == "paused"
    assert _notices() == [] and not Event.objects.filter(kind="operations").exists()


def test_a_notice_whose_url_was_removed_is_not_configured(ops_tenant, partner):
    from integrations.outbox.health import partner_pause

    partner_pause(partner_id=partner.pk, reason="test", now=timezone.now())
    tenant_update(tenant=ops_tenant, operations_url="")
    (notice,) = _notices()
    assert send_one(delivery_id=notice.pk) == "not_configured"
    notice.refresh_from_db()
    assert notice.last_error == "No operations URL is configured."


def test_a_partner_never_sees_the_operations_notices(ops_tenant, partner, partner_api):
    from integrations.outbox.health import partner_pause

    partner_pause(partner_id=partner.pk, reason="test", now=timezone.now())
    Partner.objects.filter(pk=partner.pk).update(state="active")
    (notice,) = _notices()
    assert partner_api.get(f"/api/v1/events/{notice.event_id}").status_code == 404
    history = partner_api.get("/api/v1/tickets/operations%20notices/messages")
    assert history.status_code == 404


# --- the admin ------------------------------------------------------------------------------


def _admin(tenant, role: str) -> Client:
    user = get_user_model().objects.create_user(f"u-{role}", is_staff=True)
    TenantMembership.objects.create(user=user, tenant=tenant, role=role)
    client = Client()
    client.force_login(user)
    return client


def _form(tenant: Tenant, **changes) -> dict:
    return {
        "name": tenant.name,
        "time_zone": "Asia/Jakarta",
        "sticker_text": "Stiker",
        "retention_days": "30",
        "engine_base_url": "",
        "engine_send_message_path": "",
        "engine_command_path": "",
        "engine_token": "",
        "operations_url": "",
        **changes,
    }


def test_a_tenant_admin_sets_the_operations_url_and_sees_its_secret_once(tenant):
    client = _admin(tenant, "admin")
    url = reverse("admin:integrations_tenant_change", args=[tenant.pk])
    # when the admin sets an operations URL
    response = client.post(
        url, _form(tenant, operations_url="https://ops.example/hooks"), follow=True
    )
    tenant.refresh_from_db()
    secret = str(tenant.operations_signing_secret)
    # then it is saved, with a new signing secret shown on the next page only
    assert tenant.operations_url == "https://ops.example/hooks" and secret.startswith("whsec_")
    assert secret in response.content.decode()
    assert secret not in client.get(url).content.decode()
    # and saving again keeps it; asking for a new one shows the new one once
    client.post(url, _form(tenant, operations_url="https://ops.example/hooks"))
    tenant.refresh_from_db()
    assert str(tenant.operations_signing_secret) == secret
    response = client.post(
        url,
        _form(tenant, operations_url="https://ops.example/hooks", new_operations_secret="on"),
        follow=True,
    )
    tenant.refresh_from_db()
    assert str(tenant.operations_signing_secret) != secret
    assert str(tenant.operations_signing_secret) in response.content.decode()
    # and a URL that is not one is refused with the reason
    response = client.post(url, _form(tenant, operations_url="ops.example"))
    assert (
        response.status_code == 200
        and "operations_url" in response.context["adminform"].form.errors
    )


def test_support_staff_see_whether_a_secret_is_set_but_cannot_change_it(tenant):
    operations_secret_rotate(tenant=tenant)
    html = (
        _admin(tenant, "support")
        .get(reverse("admin:integrations_tenant_change", args=[tenant.pk]))
        .content.decode()
    )
    assert "new_operations_secret" not in html
    assert str(tenant.operations_signing_secret) not in html
    assert "set (never shown)" in html


def test_an_operations_url_keeps_its_slash_and_its_password_is_never_shown(tenant):
    tenant_update(tenant=tenant, operations_url="https://ops:pa55word@ops.example/hook/")
    tenant.refresh_from_db()
    assert tenant.operations_url == "https://ops:pa55word@ops.example/hook/"
    url = reverse("admin:integrations_tenant_change", args=[tenant.pk])
    admin, support = _admin(tenant, "admin"), _admin(tenant, "support")
    for client in (admin, support):
        html = client.get(url).content.decode()
        assert "pa55word" not in html and "ops:***@ops.example/hook/" in html
    # saving the page as shown keeps the stored password
    shown = "https://ops:***@ops.example/hook/"
    assert admin.post(url, _form(tenant, operations_url=shown)).status_code == 302
    tenant.refresh_from_db()
    assert tenant.operations_url == "https://ops:pa55word@ops.example/hook/"


def test_a_not_configured_notice_is_redelivered_once_the_url_is_back(
    ops_tenant, ops_server, partner
):
    from integrations.errors import Conflict
    from integrations.outbox.health import partner_pause
    from integrations.services.operations import delivery_redeliver

    partner_pause(partner_id=partner.pk, reason="test", now=timezone.now())
    tenant_update(tenant=ops_tenant, operations_url="")
    (notice,) = _notices()
    assert send_one(delivery_id=notice.pk) == "not_configured"
    notice.refresh_from_db()
    with pytest.raises(Conflict, match="operations URL"):
        delivery_redeliver(delivery=notice)
    tenant_update(tenant=ops_tenant, operations_url=f"{ops_server.url}/ops")
    notice.refresh_from_db()
    assert delivery_redeliver(delivery=notice).status == "pending"
    assert send_one(delivery_id=notice.pk) == "succeeded"
