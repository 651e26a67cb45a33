"""Browser tests: real headless Chromium (Debian's package, driven by Playwright; never a
browser download) against the live admin."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"{CHROMIUM} is missing (make test installs it as root: apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls the tests make
    # between browser steps are plain synchronous code, which Django must be told is fine.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _page(browser, width: int, height: int):
    context = browser.new_context(viewport={"width": width, "height": height}, locale="en-US")
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


@pytest.fixture
def page(browser):
    yield from _page(browser, 1280, 900)


@pytest.fixture
def laptop(browser):
    """A 1366x768 laptop's window, the size issue 14's journeys are checked at."""
    yield from _page(browser, 1366, 768)


PASSWORD = "correct horse battery staple 7"
OK = (200, b'{"status":"success","received":true}', {})


@pytest.fixture
def dead_conversation(engine_api, partner_api, partner, partner_server_factory):
    """A customer's message and the partner's reply, the message's delivery dead (the
    partner refused it once; it accepts everything after). Returns that delivery."""
    from integrations.models import Delivery
    from tests.conftest import incoming_body, outgoing_body
    from tests.support.outbox import send_one

    sink = partner_server_factory(lambda r, n: (422, b'{"error":"bad"}', {}) if n == 1 else OK)
    partner.base_url = sink.url
    partner.save()
    engine_api.post("/api/v1/engine/incoming", incoming_body(message="Halo, pesanan saya?"))
    partner_api.post("/api/v1/outgoing", outgoing_body(message="Sebentar kami cek"))
    dead = Delivery.objects.get(partner=partner)
    assert send_one(delivery_id=dead.pk) == "dead"
    dead.refresh_from_db()
    return dead


def staff_user(tenant, name: str, role: str):
    from django.contrib.auth import get_user_model

    from integrations.models import TenantMembership

    user = get_user_model().objects.create_user(
        name, email=f"{name}@tenant.example", password=PASSWORD, is_staff=True
    )
    TenantMembership.objects.create(user=user, tenant=tenant, role=role)
    return user


def login(page, base_url: str, username: str, password: str = PASSWORD) -> None:
    page.goto(f"{base_url}/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    with page.expect_navigation():
        page.click("input[type=submit]")


def screenshot(page, name: str) -> None:
    """Save docs/screenshots/<name>.png when UPDATE_SCREENSHOTS=1 (kept in the repo)."""
    if os.environ.get("UPDATE_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
