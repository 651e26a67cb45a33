"""The support and admin journeys of issue 14 on a 1366×768 laptop, in real headless
Chromium: find a ticket by part of its number, read its timeline, resend from the delivery
page until it succeeds; create a partner, copy its key, revoke it after confirming. Times are
checked against the tenant's zone, and lists must fit the page."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from rest_framework.test import APIClient

from integrations.models import ApiKey, Partner
from tests.browser.conftest import OK, login, screenshot, staff_user
from tests.conftest import incoming_body, outgoing_body
from tests.support.outbox import send_one

TICKET = "294c9ea88f7e649f8c37ae895ebab247"


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
    laptop, live_server, tenant, dead_conversation
):
    page = laptop
    # given a conversation whose first delivery went dead (the partner refused it once)
    dead = dead_conversation
    staff_user(tenant, "sari", "support")
    login(page, live_server.url, "sari")
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
    staff_user(tenant, "ayu", "admin")
    login(page, live_server.url, "ayu")
    # given a tenant admin who adds a partner
    page.goto(f"{live_server.url}/admin/integrations/partner/add/")
    page.select_option("#id_tenant", str(tenant.pk))
    page.fill("#id_name", "Helpdesk")
    page.fill("#id_base_url", sink.url)
    page.fill("#id_incoming_message_path", "/incoming")
    page.fill("#id_send_message_path", "/send")
    page.fill("#id_channels", "whatsapp, telegram")
    page.click("input[name=_continue]")
    page.wait_for_url("**/change/")
    # then the key and the signing secret are shown once, each with a Copy button
    shown = page.locator(".secret-once").all_inner_texts()
    assert len(shown) == 2
    key_text = next(t for t in shown if t.startswith("prt_"))
    assert page.locator("button.copy-secret").count() == 2
    partner = Partner.objects.get(name="Helpdesk")
    assert partner.channels == ["telegram", "whatsapp"]
    # when they copy the key
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    button = page.locator("button.copy-secret").nth(shown.index(key_text))
    button.click()
    button.filter(has_text="Copied").wait_for()  # (the clipboard takes it asynchronously)
    assert page.evaluate("navigator.clipboard.readText()") == key_text
    assert ApiKey.objects.get(partner=partner).prefix == key_text.split(".")[0]
    # and the page shows it no more once reloaded
    page.reload()
    assert page.locator(".secret-once").count() == 0
    assert key_text not in page.content()
    # a test event from the partner page shows what the partner answered
    page.click("#send-test-event")
    page.wait_for_url("**/test-event/")
    assert page.inner_text("#test-status") == "200"
    assert '"received":true' in page.inner_text("#test-response")
    assert sink.received[0].path == "/incoming"
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
    key = ApiKey.objects.get(partner=partner)
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
