"""A tenant admin and support staff use the admin in real headless Chromium."""

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from integrations.models import ApiKey, Delivery, Partner, TenantMembership
from tests.browser.conftest import screenshot
from tests.conftest import incoming_body, outgoing_body
from tests.support.outbox import send_one

PASSWORD = "correct horse battery staple 7"
OK = (200, b'{"status":"success","received":true}', {})


@pytest.fixture
def tenant_admin(tenant):
    user = get_user_model().objects.create_user(
        "ayu", email="ayu@tenant.example", password=PASSWORD, is_staff=True
    )
    TenantMembership.objects.create(user=user, tenant=tenant, role="admin")
    return user


def login(page, base_url: str, username: str, password: str) -> None:
    page.goto(f"{base_url}/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    with page.expect_navigation():
        page.click("input[type=submit]")


@pytest.mark.django_db(transaction=True)
def test_tenant_admin_creates_partner_and_sees_key_once(
    page, live_server, tenant, tenant_admin, partner_server_factory
):
    sink = partner_server_factory(lambda r, n: OK)
    # given a tenant admin who logs in
    login(page, live_server.url, "ayu", PASSWORD)
    assert page.url == f"{live_server.url}/admin/"
    # when they add a partner
    page.goto(f"{live_server.url}/admin/integrations/partner/add/")
    page.select_option("#id_tenant", str(tenant.pk))
    page.fill("#id_name", "Helpdesk")
    page.fill("#id_base_url", sink.url)
    page.fill("#id_incoming_message_path", "/incoming")
    page.fill("#id_send_message_path", "/send")
    page.fill("#id_channels", "whatsapp, telegram")
    page.click("input[name=_continue]")
    page.wait_for_url("**/change/")
    # then the key and the secret are shown once, and the stored key matches the shown one
    shown = page.locator(".secret-once").all_inner_texts()
    assert len(shown) == 2
    key_text = next(t for t in shown if t.startswith("prt_"))
    # each with a Copy button that puts it on the clipboard (issue #14.7)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    assert page.locator("button.copy-secret").count() == 2
    button = page.locator("button.copy-secret").nth(shown.index(key_text))
    button.click()
    button.filter(has_text="Copied").wait_for()  # (the clipboard takes it asynchronously)
    assert page.evaluate("navigator.clipboard.readText()") == key_text
    partner = Partner.objects.get(name="Helpdesk")
    assert partner.channels == ["telegram", "whatsapp"]
    assert ApiKey.objects.get(partner=partner).prefix == key_text.split(".")[0]
    page.reload()
    assert page.locator(".secret-once").count() == 0
    assert key_text not in page.content()
    # when they send a test event from the partner page
    page.click("#send-test-event")
    page.wait_for_url("**/test-event/")
    # then they see what the partner answered
    assert page.inner_text("#test-status") == "200"
    assert '"received":true' in page.inner_text("#test-response")
    assert sink.received[0].path == "/incoming"


@pytest.mark.django_db(transaction=True)
def test_support_finds_delivery_opens_timeline_and_redelivers(
    page, live_server, tenant, engine_api, partner_api, partner, partner_server_factory
):
    # given a conversation whose first delivery went dead
    sink = partner_server_factory(lambda r, n: (422, b'{"error":"bad"}', {}) if n == 1 else OK)
    partner.base_url = sink.url
    partner.save()
    engine_api.post("/api/v1/engine/incoming", incoming_body(message="Halo, pesanan saya?"))
    partner_api.post("/api/v1/outgoing", outgoing_body(message="Sebentar kami cek"))
    dead = Delivery.objects.get(partner=partner)
    assert send_one(delivery_id=dead.pk) == "dead"
    support = get_user_model().objects.create_user("sari", password=PASSWORD, is_staff=True)
    TenantMembership.objects.create(user=support, tenant=tenant, role="support")
    login(page, live_server.url, "sari", PASSWORD)
    screenshot(page, "dashboard")
    # when support searches the deliveries by ticket number
    page.goto(f"{live_server.url}/admin/integrations/delivery/")
    page.fill("#searchbar", "294c9ea88f7e649f8c37ae895ebab247")
    page.press("#searchbar", "Enter")
    page.wait_for_url("**/?q=*")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 2
    # and opens the ticket timeline from it
    page.locator("#result_list a.short-id", has_text="294c9ea8").first.click()
    page.wait_for_url("**/timeline/")
    timeline = page.inner_text("#ticket-timeline")
    assert "Halo, pesanan saya?" in timeline and "Sebentar kami cek" in timeline
    assert "Dead" in timeline
    # when they redeliver the dead delivery
    page.goto(f"{live_server.url}/admin/integrations/delivery/?status__exact=dead")
    page.check("#result_list input.action-select")
    page.select_option("select[name=action]", "redeliver")
    page.click("button[name=index]")
    page.wait_for_selector("ul.messagelist")
    # then it is pending again, and the next attempt succeeds
    assert "1 done" in page.inner_text("ul.messagelist")
    dead.refresh_from_db()
    assert dead.status == "pending"
    assert send_one(delivery_id=dead.pk) == "succeeded"
    page.goto(f"{live_server.url}/admin/integrations/partner/{partner.pk}/change/")
    assert "50 %" in page.inner_text("#partner-health")  # one dead try, one success
    screenshot(page, "partner")


@pytest.mark.django_db(transaction=True)
def test_admin_switches_to_bahasa_indonesia(page, live_server, tenant_admin, partner):
    login(page, live_server.url, "ayu", PASSWORD)
    assert page.url == f"{live_server.url}/admin/"
    page.goto(f"{live_server.url}/admin/integrations/partner/{partner.pk}/change/")
    assert "Log out" in page.content() or "LOG OUT" in page.content().upper()
    with page.expect_navigation():
        page.select_option("#language-select", "id")
    assert page.locator("html").get_attribute("lang") == "id"
    assert re.search(r"Keluar|Log keluar", page.content())


@pytest.mark.django_db(transaction=True)
def test_repeated_bad_passwords_lock_the_login(page, live_server, tenant_admin, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        login(page, live_server.url, "ayu", "wrong password")
    # then even the right password is refused while locked
    login(page, live_server.url, "ayu", PASSWORD)
    assert page.locator("#locked-out").count() == 1
    assert Client().login is not None  # the test client itself is untouched
