"""Credentials are never shown after they are saved, to anyone (issue #17.2): the engine
bearer token and a password written into a partner URL."""

import pytest
from django.urls import reverse

from integrations.models import Partner, Tenant
from tests.support.admin import staff_client

TOKEN = "engine-token-7f3a9c"
PASSWORD = "url-password-55d1e2"


@pytest.fixture
def secrets_saved(tenant, partner):
    Tenant.objects.filter(pk=tenant.pk).update(
        engine_base_url="https://engine.example", engine_token=TOKEN
    )
    Partner.objects.filter(pk=partner.pk).update(
        base_url=f"https://desk:{PASSWORD}@desk.example/hooks"
    )


@pytest.mark.parametrize("role", ["admin", "support"])
def test_no_page_shows_a_saved_credential(secrets_saved, tenant, partner, role):
    client = staff_client(tenant, role, f"u-{role}")
    pages = [
        reverse("admin:integrations_tenant_change", args=[tenant.pk]),
        reverse("admin:integrations_tenant_changelist"),
        reverse("admin:integrations_partner_change", args=[partner.pk]),
        reverse("admin:integrations_partner_changelist"),
    ]
    for url in pages:
        html = client.get(url).content.decode()
        assert TOKEN not in html and PASSWORD not in html, url
    # the URL is still recognisable, with its password redacted
    assert "desk:***@desk.example" in client.get(pages[3]).content.decode()


def test_saving_a_page_unchanged_keeps_the_credentials(secrets_saved, tenant, partner):
    client = staff_client(tenant, "admin", "ayu")
    tenant_form = {
        "name": tenant.name,
        "time_zone": "Asia/Jakarta",
        "sticker_text": "Stiker",
        "retention_days": "30",
        "engine_base_url": "https://engine.example",
        "engine_send_message_path": "/send",
        "engine_command_path": "/command",
        "engine_token": "",
    }
    response = client.post(
        reverse("admin:integrations_tenant_change", args=[tenant.pk]), tenant_form
    )
    assert response.status_code == 302, response.content[:500]
    tenant.refresh_from_db()
    assert tenant.engine_token == TOKEN and tenant.engine_send_message_path == "/send"
    # the partner form comes back with the redacted URL; saved as it is, the password stays
    partner_form = {
        "name": partner.name,
        "base_url": "https://desk:***@desk.example/hooks",
        "incoming_message_path": "/incoming",
        "send_message_path": "/send",
        "channels": "",
        "connect_timeout": "3",
        "timeout": "10",
        "retry_schedule": "",
        "rate_limit": "",
        "api_keys-TOTAL_FORMS": "0",
        "api_keys-INITIAL_FORMS": "0",
    }
    url = reverse("admin:integrations_partner_change", args=[partner.pk])
    assert client.post(url, partner_form).status_code == 302
    partner.refresh_from_db()
    assert partner.base_url == f"https://desk:{PASSWORD}@desk.example/hooks"
    # a URL for another host does not inherit the password
    client.post(url, {**partner_form, "base_url": "https://desk:***@other.example/hooks"})
    partner.refresh_from_db()
    assert partner.base_url == "https://desk:***@other.example/hooks"


def test_a_token_is_replaced_or_removed_only_when_asked(secrets_saved, tenant):
    client = staff_client(tenant, "admin", "ayu")
    url = reverse("admin:integrations_tenant_change", args=[tenant.pk])
    form = {
        "name": tenant.name,
        "time_zone": "Asia/Jakarta",
        "sticker_text": "Stiker",
        "retention_days": "30",
        "engine_base_url": "https://engine.example",
        "engine_send_message_path": "",
        "engine_command_path": "",
        "engine_token": "new-token",
    }
    assert client.post(url, form).status_code == 302
    tenant.refresh_from_db()
    assert tenant.engine_token == "new-token"
    assert (
        client.post(url, {**form, "engine_token": "", "clear_engine_token": "on"}).status_code
        == 302
    )
    tenant.refresh_from_db()
    assert tenant.engine_token == ""
