"""Partner and tenant settings: one set of rules (services/fields.py, partners.py,
accounts.py), errors keyed by field."""

import pytest

from integrations.errors import Conflict, PortalError
from integrations.services.accounts import tenant_create, tenant_update
from integrations.services.partners import partner_create, partner_settings_clean, partner_update


def test_partner_settings_report_every_problem_by_field():
    with pytest.raises(PortalError) as caught:
        partner_settings_clean(
            name=" ",
            base_url="desk.example",
            incoming_message_path="in",
            send_message_path="/out ",
            channels="whatsapp, tele gram, Ok",
            timeout=61,
            retry_schedule="1,-2",
            rate_limit="fast",
        )
    assert caught.value.code == "validation_error"
    assert set(caught.value.errors) == {
        "name",
        "base_url",
        "incoming_message_path",
        "channels",
        "timeout",
        "retry_schedule",
        "rate_limit",
    }


def test_partner_settings_are_normalised():
    cleaned = partner_settings_clean(
        base_url=" https://desk.example/hooks/ ",
        send_message_path=" /out ",
        channels=["Telegram", "whatsapp", "telegram", " "],
        rate_limit="100/Second",
    )
    assert cleaned == {
        "base_url": "https://desk.example/hooks",
        "send_message_path": "/out",
        "channels": ["telegram", "whatsapp"],
        "rate_limit": "100/second",
    }


def test_partner_create_and_update_keep_the_rules(tenant):
    partner, key, secret = partner_create(
        tenant=tenant,
        name="Desk",
        base_url="http://127.0.0.1:9/",
        incoming_message_path="/in",
        send_message_path="/out",
        channels="whatsapp",
    )
    assert key.startswith("prt_") and secret.startswith("whsec_")
    assert (partner.base_url, partner.channels) == ("http://127.0.0.1:9", ["whatsapp"])
    with pytest.raises(PortalError) as caught:
        partner_update(partner=partner, base_url="ftp://desk.example")
    assert set(caught.value.errors) == {"base_url"}
    with pytest.raises(Conflict) as taken:
        partner_create(
            tenant=tenant,
            name="Desk",
            base_url="http://127.0.0.1:9",
            incoming_message_path="/in",
            send_message_path="/out",
        )
    assert taken.value.errors == {"name": ["This tenant already has a partner with this name."]}
    partner_update(partner=partner, channels=[], timeout=20)
    partner.refresh_from_db()
    assert (partner.channels, partner.timeout) == ([], 20.0)


def test_tenant_settings_are_checked_at_creation_and_change(db):
    tenant = tenant_create(owner="t-1", name="One", time_zone="Asia/Makassar")
    assert tenant.engine_signing_secret.startswith("whsec_")
    with pytest.raises(PortalError) as caught:
        tenant_update(tenant=tenant, time_zone="Mars/Olympus", engine_base_url="engine.example")
    assert set(caught.value.errors) == {"time_zone", "engine_base_url"}
    tenant_update(tenant=tenant, engine_base_url="https://engine.example/", engine_token="t")
    tenant.refresh_from_db()
    assert tenant.engine_base_url == "https://engine.example"
    with pytest.raises(Conflict):
        tenant_create(owner="t-1", name="Again")
