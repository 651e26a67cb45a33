"""The partner portal (SPEC §9): single-use links, a session that is one partner's only, its
pages, and what it may do (integrations/portal/views.py, services/portal.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from integrations.models import ApiKey, Delivery, Partner, PartnerPortalLink, SigningSecret
from integrations.services.partners import partner_create
from integrations.services.portal import portal_link_create
from tests.conftest import incoming_body, outgoing_body
from tests.support.outbox import send_one

IN = "/api/v1/engine/incoming"


def _signed_in(partner) -> Client:
    client = Client()
    path, _ = portal_link_create(partner=partner)
    assert client.post(path).status_code == 302
    return client


@pytest.fixture
def rival(tenant):
    """Another partner of the same tenant, with a delivery of its own."""
    rival, _, _ = partner_create(
        tenant=tenant,
        name="Rival Desk",
        base_url="http://127.0.0.1:9",
        incoming_message_path="/in",
        send_message_path="/out",
    )
    return rival


@pytest.fixture
def traffic(engine_api, partner_api, partner, rival, partner_server_factory, tenant):
    """Deliveries: the partner's (one succeeded on ticket P-1, one dead on P-2), the rival's,
    and an engine relay delivery of the partner's reply."""
    server = partner_server_factory(
        lambda r, n: (200, b"{}", {}) if "P-1" in r.body.decode() else (400, b"", {})
    )
    Partner.objects.filter(pk__in=[partner.pk, rival.pk]).update(base_url=server.url)
    for ticket in ("P-1", "P-2"):
        engine_api.post(IN, incoming_body(ticketNumber=ticket))
    partner_api.post("/api/v1/outgoing", outgoing_body(ticketNumber="P-1"))
    for d in Delivery.objects.order_by("id"):
        send_one(delivery_id=d.pk)
    own = Delivery.objects.filter(target=f"partner:{partner.pk}").order_by("id")
    return {
        "ok": own[0],
        "dead": own[1],
        "rival": Delivery.objects.filter(target=f"partner:{rival.pk}").first(),
        "relay": Delivery.objects.filter(target="engine").first(),
    }


# --- links and the session -----------------------------------------------------------------


def test_a_link_signs_in_once_and_a_used_or_expired_one_does_not(partner):
    path, expires_at = portal_link_create(partner=partner)
    assert expires_at - timezone.now() <= timedelta(seconds=3600)
    client = Client()
    # GET only asks (a link previewer does not use it up)
    page = client.get(path)
    assert page.status_code == 200 and partner.name in page.content.decode()
    assert client.post(path).status_code == 302
    assert client.get(reverse("partner-portal:overview")).status_code == 200
    # used: a second browser is refused
    again = Client().post(path)
    assert again.status_code == 404 and "used already or has expired" in again.content.decode()
    # expired
    path, _ = portal_link_create(partner=partner)
    PartnerPortalLink.objects.update(expires_at=timezone.now())
    assert Client().post(path).status_code == 404
    assert Client().post("/partner/sign-in/made-up/").status_code == 404


def test_sign_out_ends_the_session_and_so_does_time(partner, settings):
    client = _signed_in(partner)
    assert client.post(reverse("partner-portal:sign-out")).status_code == 200
    assert client.get(reverse("partner-portal:overview")).status_code == 403
    client = _signed_in(partner)
    session = client.session
    session["partner_portal"]["until"] = (timezone.now() - timedelta(seconds=1)).isoformat()
    session.save()
    assert client.get(reverse("partner-portal:overview")).status_code == 403


def test_a_disabled_partner_cannot_sign_in_or_stay(partner):
    client = _signed_in(partner)
    Partner.objects.filter(pk=partner.pk).update(state="disabled")
    assert client.get(reverse("partner-portal:overview")).status_code == 403
    path, _ = portal_link_create(partner=partner)
    assert Client().post(path).status_code == 403


def test_the_session_opens_no_admin_page_and_drops_an_admin_login(partner):
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root"))
    path, _ = portal_link_create(partner=partner)
    client.post(path)
    # the admin login is gone: the admin asks to log in
    for url in ("/admin/", "/admin/integrations/partner/", "/admin/integrations/delivery/"):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], url


# --- the pages ------------------------------------------------------------------------------


def test_every_page_shows_only_the_partners_own(partner, rival, traffic):
    client = _signed_in(partner)
    pages = [
        reverse("partner-portal:overview"),
        reverse("partner-portal:deliveries"),
        reverse("partner-portal:deliveries") + "?status=dead",
        reverse("partner-portal:delivery", args=[traffic["ok"].pk]),
        reverse("partner-portal:delivery", args=[traffic["dead"].pk]),
        reverse("partner-portal:settings"),
    ]
    for url in pages:
        response = client.get(url)
        html = response.content.decode()
        assert response.status_code == 200, url
        assert "Rival Desk" not in html and f"#{traffic['rival'].pk}<" not in html, url
        assert f"#{traffic['relay'].pk}<" not in html, url
    listed = client.get(reverse("partner-portal:deliveries")).content.decode()
    assert f"#{traffic['ok'].pk}<" in listed and f"#{traffic['dead'].pk}<" in listed
    # another partner's delivery, the engine relay's, or a made-up id: 404
    for other in (traffic["rival"].pk, traffic["relay"].pk, 10**9):
        assert client.get(reverse("partner-portal:delivery", args=[other])).status_code == 404
        assert client.post(reverse("partner-portal:resend", args=[other])).status_code == 404


def test_search_by_ticket_and_status(partner, traffic):
    client = _signed_in(partner)
    found = client.get(reverse("partner-portal:deliveries") + "?ticket=P-2").content.decode()
    assert f"#{traffic['dead'].pk}<" in found and f"#{traffic['ok'].pk}<" not in found
    dead = client.get(reverse("partner-portal:deliveries") + "?status=dead").content.decode()
    assert f"#{traffic['dead'].pk}<" in dead and f"#{traffic['ok'].pk}<" not in dead


def test_a_delivery_page_shows_its_attempts_and_resend_sends_it_again(partner, traffic):
    client = _signed_in(partner)
    dead = traffic["dead"]
    html = client.get(reverse("partner-portal:delivery", args=[dead.pk])).content.decode()
    assert "Attempt 1" in html and "webhook-signature" in html.lower()
    response = client.post(reverse("partner-portal:resend", args=[dead.pk]), follow=True)
    assert "Sent again" in response.content.decode()
    dead.refresh_from_db()
    assert dead.status == "pending"
    # a second resend of a waiting one says why not
    response = client.post(reverse("partner-portal:resend", args=[dead.pk]), follow=True)
    assert "Only a finished delivery" in response.content.decode()


def test_errors_read_as_sentences_in_the_partners_language(partner, traffic):
    """The dead delivery (the partner answered 400) says so in words on its page and on the
    overview, in English and in Bahasa Indonesia; the stored detail stays on the attempt."""
    client = _signed_in(partner)
    dead = reverse("partner-portal:delivery", args=[traffic["dead"].pk])
    overview = reverse("partner-portal:overview")
    for url in (dead, overview):
        english = client.get(url, HTTP_ACCEPT_LANGUAGE="en").content.decode()
        assert "HTTP 400 Bad Request: it refused the request, which is not retried" in english
        indonesian = client.get(url, HTTP_ACCEPT_LANGUAGE="id").content.decode()
        assert "Mitra menjawab HTTP 400: mitra menolak permintaan" in indonesian
    page = client.get(dead, HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Failed: final attempt, not retried" in page


def test_recover_a_window(partner, traffic):
    client = _signed_in(partner)
    today = timezone.now().date()
    response = client.post(
        reverse("partner-portal:recover"),
        {"since": f"{today - timedelta(days=1)}", "until": f"{today + timedelta(days=1)}"},
        follow=True,
    )
    assert "1 dead deliveries are sent again" in response.content.decode()
    bad = client.post(reverse("partner-portal:recover"), {"since": "", "until": ""}, follow=True)
    assert "Give a start and an end" in bad.content.decode()


def test_settings_paths_secret_key_and_test_event(partner_with_key, partner_server_factory):
    partner, old_key, _ = partner_with_key
    server = partner_server_factory(lambda r, n: (200, b'{"status":"success"}', {}))
    Partner.objects.filter(pk=partner.pk).update(base_url=server.url)
    client = _signed_in(partner)
    url = reverse("partner-portal:settings")
    # paths are checked as in the admin
    bad = client.post(
        url, {"action": "paths", "incoming_message_path": "no slash", "send_message_path": "/s"}
    )
    assert bad.status_code == 400 and "Must start with" in bad.content.decode()
    client.post(
        url, {"action": "paths", "incoming_message_path": "/v2/in", "send_message_path": "/v2/send"}
    )
    partner.refresh_from_db()
    assert (partner.incoming_message_path, partner.send_message_path) == ("/v2/in", "/v2/send")
    # rotating the secret shows the new one once
    shown = client.post(url, {"action": "rotate"}, follow=True).content.decode()
    newest = SigningSecret.objects.filter(partner=partner).order_by("-created_at").first()
    assert newest.secret in shown
    assert newest.secret not in client.get(url).content.decode()
    # rolling the key shows a new one; the old one works 24 more hours
    shown = client.post(url, {"action": "roll"}, follow=True).content.decode()
    new_key = ApiKey.objects.filter(partner=partner).order_by("-created_at").first()
    assert new_key.prefix in shown
    old = ApiKey.objects.get(prefix=old_key.split(".")[0])
    assert timedelta(hours=23) < old.expires_at - timezone.now() <= timedelta(hours=24)
    # the test event reaches the partner, and its answer is shown
    probe = client.post(url, {"action": "test"}).content.decode()
    assert "HTTP 200" in probe and len(server.on("/v2/in")) == 1


def test_pages_in_bahasa_indonesia(partner, traffic):
    client = _signed_in(partner)
    html = client.get(
        reverse("partner-portal:overview"), HTTP_ACCEPT_LANGUAGE="id"
    ).content.decode()
    assert "Portal mitra" in html and "Keluar" in html


def test_the_admin_and_the_management_api_give_links(partner, tenant):
    from integrations.services.management import management_token_create

    _, token = management_token_create(tenant=tenant, role="admin")
    answer = Client().post(
        f"/api/v1/manage/partners/{partner.pk}/portal-links",
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )
    assert answer.status_code == 201
    url = answer.json()["url"]
    assert url.startswith("http://testserver/partner/sign-in/")
    assert Client().post(url.removeprefix("http://testserver")).status_code == 302
    admin = Client()
    admin.force_login(get_user_model().objects.create_superuser("root2"))
    response = admin.post(
        reverse("admin:integrations_partner_changelist"),
        {"action": "portal_links", "_selected_action": [partner.pk]},
        follow=True,
    )
    assert "/partner/sign-in/" in response.content.decode()


# --- found by review -------------------------------------------------------------------------


def test_pages_are_never_cached_and_hide_a_url_password(partner):
    Partner.objects.filter(pk=partner.pk).update(base_url="https://desk:pa55@desk.example")
    client = _signed_in(partner)
    page = client.get(reverse("partner-portal:settings"))
    assert "pa55" not in page.content.decode() and "desk:***@desk.example" in page.content.decode()
    assert "no-store" in page["Cache-Control"]


def test_a_later_admin_login_ends_the_partner_session(partner):
    client = _signed_in(partner)
    client.force_login(get_user_model().objects.create_superuser("late"))
    assert client.get(reverse("partner-portal:overview")).status_code == 403


def test_a_one_day_window_includes_that_day(partner, traffic):
    client = _signed_in(partner)
    today = f"{timezone.now().date()}"
    response = client.post(
        reverse("partner-portal:recover"), {"since": today, "until": today}, follow=True
    )
    assert "1 dead deliveries are sent again" in response.content.decode()
    listed = client.get(reverse("partner-portal:deliveries") + f"?since={today}&until={today}")
    assert f"#{traffic['ok'].pk}<" in listed.content.decode()
    odd = client.get(reverse("partner-portal:deliveries") + "?ticket=a%00b&before=²")
    assert odd.status_code == 200
