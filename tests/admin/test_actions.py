"""Admin actions go through the services, are logged in the admin's history, and respect
roles; invitations and secrets are shown once."""

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.urls import reverse

from integrations.models import ApiKey, Delivery, Partner, SigningSecret, TenantMembership
from tests.conftest import incoming_body


def _action(client, model: str, action: str, ids: list[int]):
    return client.post(
        reverse(f"admin:integrations_{model}_changelist"),
        # (confirmed: an action that cannot be undone asks first; test_confirmations below)
        {"action": action, "_selected_action": ids, "confirmed": "yes"},
        follow=True,
    )


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_disable_and_resume_partner_are_logged(admin_client_, partner):
    _action(admin_client_, "partner", "disable_partners", [partner.pk])
    partner.refresh_from_db()
    assert partner.state == "disabled"
    _action(admin_client_, "partner", "resume_partners", [partner.pk])
    partner.refresh_from_db()
    assert partner.state == "active"
    history = list(
        LogEntry.objects.filter(object_id=str(partner.pk)).values_list("change_message", flat=True)
    )
    assert "Disabled." in history and "Resumed." in history


def test_rotate_secret_and_new_key_are_shown_once(admin_client_, partner):
    response = _action(admin_client_, "partner", "rotate_secrets", [partner.pk])
    newest = SigningSecret.objects.filter(partner=partner).order_by("-created_at").first()
    assert any(newest.secret in m for m in _messages(response))
    assert SigningSecret.objects.filter(partner=partner, expires_at__isnull=False).count() == 1
    response = _action(admin_client_, "partner", "new_keys", [partner.pk])
    assert ApiKey.objects.filter(partner=partner).count() == 2
    assert any("prt_" in m for m in _messages(response))
    page = admin_client_.get(reverse("admin:integrations_partner_change", args=[partner.pk]))
    assert newest.secret not in page.content.decode()


def test_support_may_redeliver_but_not_cancel(support_client, admin_client_, engine_api, partner):
    engine_api.post("/api/v1/engine/incoming", incoming_body())
    delivery = Delivery.objects.get()
    changelist = support_client.get(reverse("admin:integrations_delivery_changelist"))
    actions = dict(changelist.context["action_form"].fields["action"].choices)
    assert "redeliver" in actions and "cancel" not in actions
    _action(support_client, "delivery", "cancel", [delivery.pk])
    assert Delivery.objects.get().status == "pending"
    _action(admin_client_, "delivery", "cancel", [delivery.pk])
    assert Delivery.objects.get().status == "cancelled"
    _action(support_client, "delivery", "redeliver", [delivery.pk])
    assert Delivery.objects.get().status == "pending"


def test_support_cannot_send_test_events_or_recover(support_client, partner):
    test_url = reverse("admin:integrations_partner_test_event", args=[partner.pk])
    assert support_client.post(test_url).status_code == 403
    recover_url = reverse("admin:integrations_partner_recover", args=[partner.pk])
    assert support_client.get(recover_url).status_code == 403


def test_recover_view_restarts_dead_deliveries(admin_client_, engine_api, partner):
    engine_api.post("/api/v1/engine/incoming", incoming_body())
    Delivery.objects.update(status="dead")
    url = reverse("admin:integrations_partner_recover", args=[partner.pk])
    response = admin_client_.post(
        url, {"since": "2000-01-01 00:00", "until": "2100-01-01 00:00"}, follow=True
    )
    assert Delivery.objects.get().status == "pending"
    assert any("1 dead deliveries" in m for m in _messages(response))


def test_invite_support_user_shows_password_once(admin_client_, tenant):
    response = admin_client_.post(
        reverse("admin:integrations_tenantmembership_add"),
        {
            "tenant": tenant.pk,
            "username": "budi",
            "email": "budi@tenant.example",
            "role": "support",
        },
        follow=True,
    )
    user = get_user_model().objects.get(username="budi")
    shown = [m for m in _messages(response) if "budi" in m]
    assert shown and user.is_staff
    password = shown[0].split("<code class='secret-once'>")[1].split("</code>")[0]
    assert user.check_password(password)
    membership = TenantMembership.objects.get(user=user)
    _action(admin_client_, "tenantmembership", "deactivate_users", [membership.pk])
    user.refresh_from_db()
    assert not user.is_active


def test_partner_form_rejects_bad_schedule_and_paths(admin_client_, tenant):
    response = admin_client_.post(
        reverse("admin:integrations_partner_add"),
        {
            "tenant": tenant.pk,
            "name": "Bad",
            "base_url": "https://desk.example",
            "incoming_message_path": "no-slash",
            "send_message_path": "/s",
            "channels": "",
            "connect_timeout": "3",
            "timeout": "999",
            "retry_schedule": "0,x",
            "rate_limit": "fast",
            "api_keys-TOTAL_FORMS": "0",
            "api_keys-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert set(errors) >= {"incoming_message_path", "timeout", "retry_schedule", "rate_limit"}
    assert not Partner.objects.filter(name="Bad").exists()


def test_dashboard_shows_queue_and_partner_volume(admin_client_, engine_api, partner):
    engine_api.post("/api/v1/engine/incoming", incoming_body())
    page = admin_client_.get(reverse("admin:index")).content.decode()
    assert 'id="queue-pending">1<' in page
    assert partner.name in page and "<svg" in page


def _partner_form(tenant, **overrides) -> dict:
    data = {
        "tenant": tenant.pk,
        "name": "Desk Two",
        "base_url": "https://desk.example",
        "incoming_message_path": "/in",
        "send_message_path": "/out",
        "channels": "",
        "connect_timeout": "3",
        "timeout": "10",
        "retry_schedule": "",
        "rate_limit": "",
        "api_keys-TOTAL_FORMS": "0",
        "api_keys-INITIAL_FORMS": "0",
    }
    data.update(overrides)
    return data


def test_partner_form_refuses_what_it_used_to_change_silently(admin_client_, tenant):
    # given a base URL without a scheme and a channel name with a space
    response = admin_client_.post(
        reverse("admin:integrations_partner_add"),
        _partner_form(tenant, base_url="desk.example", channels="whatsapp, tele gram"),
    )
    # then both are refused beside their fields, with the service's words, and nothing is saved
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "http://" in errors["base_url"][0]
    assert "'tele gram'" in errors["channels"][0]
    assert not Partner.objects.filter(name="Desk Two").exists()


def test_partner_form_creates_through_the_service(admin_client_, tenant):
    # when an admin adds a partner
    response = admin_client_.post(
        reverse("admin:integrations_partner_add"),
        _partner_form(tenant, base_url="https://desk.example/", channels="WhatsApp, telegram"),
        follow=True,
    )
    # then the service made it: cleaned settings, one key and one secret, both shown once
    partner = Partner.objects.get(name="Desk Two")
    assert partner.base_url == "https://desk.example"
    assert partner.channels == ["telegram", "whatsapp"]
    assert partner.api_keys.count() == 1 and partner.secrets.count() == 1
    shown = " ".join(_messages(response))
    assert "prt_" in shown and "whsec_" in shown
    # and a change is checked by the same rules
    change = reverse("admin:integrations_partner_change", args=[partner.pk])
    response = admin_client_.post(change, _partner_form(tenant, send_message_path="no slash"))
    assert "send_message_path" in response.context["adminform"].form.errors
    partner.refresh_from_db()
    assert partner.send_message_path == "/out"


def test_tenant_form_refuses_an_engine_url_without_scheme(admin_client_, tenant):
    response = admin_client_.post(
        reverse("admin:integrations_tenant_change", args=[tenant.pk]),
        {
            "name": tenant.name,
            "time_zone": "Asia/Jakarta",
            "sticker_text": "Stiker",
            "retention_days": "30",
            "engine_base_url": "engine.example",
            "engine_send_message_path": "/send",
            "engine_command_path": "/command",
            "engine_token": "",
        },
    )
    assert response.status_code == 200
    assert "engine_base_url" in response.context["adminform"].form.errors
    tenant.refresh_from_db()
    assert tenant.engine_base_url == ""


@pytest.mark.parametrize(
    ("model", "action", "question"),
    [
        ("partner", "disable_partners", "Disable these partners?"),
        ("apikey", "revoke_keys", "Revoke these API keys?"),
        ("delivery", "cancel", "Cancel these deliveries?"),
        ("managementtoken", "revoke_tokens", "Revoke these management tokens?"),
    ],
)
def test_actions_that_cannot_be_undone_ask_first(
    admin_client_, engine_api, partner, tenant, model, action, question
):
    """Issue #14.6: revoke, disable and cancel confirm first; Yes does it, nothing else."""
    from integrations.models import ManagementToken
    from integrations.services.management import management_token_create

    engine_api.post("/api/v1/engine/incoming", incoming_body())
    objects = {
        "partner": partner,
        "apikey": ApiKey.objects.filter(partner=partner).first(),
        "delivery": Delivery.objects.get(),
        "managementtoken": management_token_create(tenant=tenant, role="support")[0],
    }
    obj = objects[model]
    url = reverse(f"admin:integrations_{model}_changelist")

    def state():
        fresh = type(obj).objects.get(pk=obj.pk)
        return tuple(getattr(fresh, name, None) for name in ("state", "revoked_at", "status"))

    before = state()
    # when the action is chosen, a page asks, listing what it is about, and nothing happens yet
    asked = admin_client_.post(url, {"action": action, "_selected_action": [obj.pk]})
    page = asked.content.decode()
    assert asked.status_code == 200 and question in page and str(obj) in page
    assert 'name="confirmed" value="yes"' in page
    assert state() == before
    # and Yes does it
    admin_client_.post(url, {"action": action, "_selected_action": [obj.pk], "confirmed": "yes"})
    assert state() != before
    if model == "managementtoken":
        assert ManagementToken.objects.get(pk=obj.pk).revoked_at is not None
