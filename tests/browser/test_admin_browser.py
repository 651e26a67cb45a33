"""A tenant admin and support staff use the admin in real headless Chromium."""

import re

import pytest
from django.test import Client

from tests.browser.conftest import PASSWORD, login, screenshot, staff_user
from tests.support.outbox import send_one


@pytest.fixture
def tenant_admin(tenant):
    return staff_user(tenant, "ayu", "admin")


@pytest.mark.django_db(transaction=True)
def test_support_finds_delivery_opens_timeline_and_redelivers(
    page, live_server, tenant, partner, dead_conversation
):
    # given a conversation whose first delivery went dead
    dead = dead_conversation
    staff_user(tenant, "sari", "support")
    login(page, live_server.url, "sari")
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
