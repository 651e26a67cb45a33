"""The support and admin journeys of issue 14 on a 1366×768 laptop, in real headless
Chromium: find a ticket by part of its number, read its timeline, resend from the delivery
page until it succeeds; create a partner, copy its key, revoke it after confirming. Times are
checked against the tenant's zone, and lists must fit the page."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from integrations.models import ApiKey, Delivery, Partner, TenantMembership
from tests.browser.conftest import screenshot
from tests.conftest import incoming_body, outgoing_body
from tests.support.outbox import send_one

PASSWORD = "correct horse battery staple 7"
OK = (200, b'{"status":"success","received":true}', {})
TICKET = "294c9ea88f7e649f8c37ae895ebab247"


@pytest.fixture
def laptop(browser):
    context = browser.new_context(viewport={"width": 1366, "height": 768}, locale="en-US")
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def _user(tenant, name: str, role: str):
    user = get_user_model().objects.create_user(name, password=PASSWORD, is_staff=True)
    TenantMembership.objects.create(user=user, tenant=tenant, role=role)
    return user


def _login(page, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    with page.expect_navigation():
        page.click("input[type=submit]")


def _fits(page) -> bool:
    """The result table is no wider than the page: no sideways scrolling to read a row."""
    return page.evaluate(
        "document.querySelector('#result_list').getBoundingClientRect().right"
        " <= document.documentElement.clientWidth"
    )


def _jakarta(value: datetime) -> str:
    return value.astimezone(ZoneInfo("Asia/Jakarta")).strftime("%H:%M:%S WIB")


@pytest.mark.django_db(transaction=True)
def test_support_journey_part_of_a_ticket_number_timeline_resend_succeeded(
    laptop, live_server, tenant, engine_api, partner_api, partner, partner_server_factory
):
    page = laptop
    # given a conversation whose first delivery went dead (the partner refused it once)
    sink = partner_server_factory(lambda r, n: (422, b'{"error":"bad"}', {}) if n == 1 else OK)
    partner.base_url = sink.url
    partner.save()
    engine_api.post("/api/v1/engine/incoming", incoming_body(message="Halo, pesanan saya?"))
    partner_api.post("/api/v1/outgoing", outgoing_body(message="Sebentar kami cek"))
    dead = Delivery.objects.get(partner=partner)
    assert send_one(delivery_id=dead.pk) == "dead"
    dead.refresh_from_db()
    _user(tenant, "sari", "support")
    _login(page, live_server.url, "sari")
    # when support searches the deliveries by part of the ticket number
    page.goto(f"{live_server.url}/admin/integrations/delivery/")
    page.fill("#searchbar", TICKET[6:14])
    page.press("#searchbar", "Enter")
    page.wait_for_url("**/?q=*")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 2
    # the rows fit the laptop's page, the status is a coloured badge, the partner named,
    # the time in the tenant's zone with seconds
    assert _fits(page)
    assert page.locator("#result_list .badge.status-dead").count() == 1
    assert "Desk" in page.inner_text("#result_list")
    assert _jakarta(dead.created_at) in page.inner_text("#result_list")
    screenshot(page, "deliveries")
    # and opens the ticket timeline from a row
    page.locator("#result_list a.short-id", has_text=TICKET[:8]).first.click()
    page.wait_for_url("**/timeline/")
    timeline = page.inner_text("#ticket-timeline")
    assert "Halo, pesanan saya?" in timeline and "Sebentar kami cek" in timeline
    assert "WIB" in timeline
    screenshot(page, "ticket-timeline")
    # then the dead delivery's page says why in words, and offers Resend
    page.locator("#ticket-timeline li.status-dead a").first.click()
    page.wait_for_url(f"**/delivery/{dead.pk}/change/")
    assert "it refused the request, which is not retried" in page.inner_text("#content")
    assert "Failed: final attempt, not retried" in page.inner_text("#content")
    screenshot(page, "delivery")
    assert page.locator("#resend-delivery").count() == 1
    page.click("button.resend-attempt")  # (the final attempt's own Resend)
    page.wait_for_selector("ul.messagelist")
    assert "Resent" in page.inner_text("ul.messagelist")
    # and once a worker has sent it, the page says it succeeded
    assert send_one(delivery_id=dead.pk) == "succeeded"
    page.reload()
    assert page.locator(".field-state .badge.status-succeeded").count() == 1


@pytest.mark.django_db(transaction=True)
def test_admin_journey_create_partner_copy_key_revoke_with_confirmation(
    laptop, live_server, tenant, engine_api, partner_server_factory
):
    page = laptop
    sink = partner_server_factory(lambda r, n: OK)
    _user(tenant, "ayu", "admin")
    _login(page, live_server.url, "ayu")
    # given a tenant admin who adds a partner
    page.goto(f"{live_server.url}/admin/integrations/partner/add/")
    page.select_option("#id_tenant", str(tenant.pk))
    page.fill("#id_name", "Helpdesk")
    page.fill("#id_base_url", sink.url)
    page.fill("#id_incoming_message_path", "/incoming")
    page.fill("#id_send_message_path", "/send")
    page.fill("#id_channels", "whatsapp")
    page.click("input[name=_continue]")
    page.wait_for_url("**/change/")
    # when they copy the key shown once
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    key_text = next(t for t in page.locator(".secret-once").all_inner_texts() if "prt_" in t)
    button = page.locator(".secret-once", has_text="prt_").locator(
        "xpath=following-sibling::button[1]"
    )
    button.click()
    button.filter(has_text="Copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == key_text
    # (the key works: the partner answers on a ticket the engine opened)
    engine_api.post("/api/v1/engine/incoming", incoming_body())
    api = APIClient()
    body = outgoing_body()
    assert api.post(
        "/api/v1/outgoing", body, format="json", HTTP_AUTHORIZATION=f"Bearer {key_text}"
    ).status_code in (200, 201, 202)
    # and revoke it from the key list: a confirmation comes first
    page.goto(f"{live_server.url}/admin/integrations/apikey/")
    assert _fits(page)
    key = ApiKey.objects.get(partner=Partner.objects.get(name="Helpdesk"))
    page.check(f"#result_list input.action-select[value='{key.pk}']")
    page.select_option("select[name=action]", "revoke_keys")
    page.click("button[name=index]")
    page.wait_for_selector("text=Revoke these API keys?")
    key.refresh_from_db()
    assert key.revoked_at is None  # asked, not done
    page.click("input[type=submit]")
    page.wait_for_selector("ul.messagelist")
    assert "Keys revoked" in page.inner_text("ul.messagelist")
    key.refresh_from_db()
    assert key.revoked_at is not None
    # then the key fails at once, and its "last used" stays at the accepted call
    used = key.last_used_at
    assert (
        api.post(
            "/api/v1/outgoing", body, format="json", HTTP_AUTHORIZATION=f"Bearer {key_text}"
        ).status_code
        == 401
    )
    key.refresh_from_db()
    assert key.last_used_at == used
    # and the key list shows the revocation time in the tenant's zone
    page.goto(f"{live_server.url}/admin/integrations/apikey/")
    assert _jakarta(key.revoked_at) in page.inner_text("#result_list")
    assert datetime.now(UTC) >= key.revoked_at
