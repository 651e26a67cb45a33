"""A partner uses its portal in real headless Chromium (SPEC §9): signs in with a link, finds
a dead delivery by its ticket number, sends it again and sees it succeed, rotates its
signing secret."""

import pytest

from integrations.models import Delivery, Partner, SigningSecret
from integrations.services.portal import portal_link_create
from tests.browser.conftest import screenshot
from tests.conftest import incoming_body
from tests.support.outbox import send_one


@pytest.mark.django_db(transaction=True)
def test_partner_finds_a_dead_delivery_resends_it_and_rotates_its_secret(
    page, live_server, engine_api, partner, partner_server_factory
):
    # given a partner whose endpoint refused a message (dead), and answers again now
    answers = {"ok": False}
    server = partner_server_factory(
        lambda r, n: (200, b'{"status":"success"}', {}) if answers["ok"] else (400, b"", {})
    )
    Partner.objects.filter(pk=partner.pk).update(base_url=server.url)
    for ticket in ("BRW-1", "BRW-2"):
        engine_api.post("/api/v1/engine/incoming", incoming_body(ticketNumber=ticket))
    for delivery in Delivery.objects.order_by("id"):
        assert send_one(delivery_id=delivery.pk) == "dead"
    answers["ok"] = True
    dead = Delivery.objects.get(ticket__ticket_number="BRW-2")
    # when the partner opens its sign-in link and signs in
    page.set_viewport_size({"width": 1366, "height": 768})
    path, _ = portal_link_create(partner=partner)
    page.goto(f"{live_server.url}{path}")
    with page.expect_navigation():
        page.click("main button[type=submit]")
    assert page.url == f"{live_server.url}/partner/"
    assert page.locator("h1").inner_text() == partner.name
    screenshot(page, "partner-portal-overview")
    # and searches its deliveries by ticket number
    page.click("text=Deliveries")
    page.fill("input[name=ticket]", "BRW-2")
    with page.expect_navigation():
        page.click("form.card button[type=submit]")
    rows = page.locator("table tr td a")
    assert rows.all_inner_texts() == [f"#{dead.pk}"]
    screenshot(page, "partner-portal-deliveries")
    # and opens the dead one and sends it again
    rows.first.click()
    page.wait_for_url(f"**/deliveries/{dead.pk}/")
    assert "400" in page.locator(".card").nth(1).inner_text()
    with page.expect_navigation():
        page.click("text=Send again")
    assert "Sent again" in page.locator(".messages").inner_text()
    # (a worker takes it: here the test sends it)
    assert send_one(delivery_id=dead.pk) == "succeeded"
    page.reload()
    assert page.locator(".badge").first.inner_text() == "Succeeded"
    screenshot(page, "partner-portal-delivery")
    # and rotates its signing secret: the new one is shown once
    page.click("text=Settings")
    with page.expect_navigation():
        page.click("text=Rotate the signing secret")
    newest = SigningSecret.objects.filter(partner=partner).order_by("-created_at").first()
    assert newest.secret in page.locator(".messages").inner_text()
    # with a Copy button that puts it on the clipboard (issue #14.7)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    page.click("button.copy-secret")
    # (the button says so once the clipboard has taken it: asynchronously)
    page.wait_for_function("document.querySelector('button.copy-secret').textContent === 'Copied'")
    assert page.evaluate("navigator.clipboard.readText()") == newest.secret
    page.reload()
    assert newest.secret not in page.content()
    # and signs out
    with page.expect_navigation():
        page.click("text=Sign out")
    page.goto(f"{live_server.url}/partner/")
    assert "Sign in with a link" in page.content()
