"""The console reads like one (issue 14): times in the tenant's zone, errors in words with the
detail below, the final attempt labelled, a held delivery says what it waits for, Resend and
Cancel on the delivery page. Real PostgreSQL, real HTTP on loopback, the real sender."""

from __future__ import annotations

import re
import socket
import threading
from datetime import UTC, datetime

import pytest
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import translation
from django.utils.html import escape

from integrations import explain
from integrations.models import Delivery, DeliveryAttempt, Event
from tests.conftest import incoming_body
from tests.support.admin import staff_client
from tests.support.outbox import send_one

OK = (200, b'{"status":"success"}', {})


def _page(client, delivery: Delivery) -> str:
    response = client.get(reverse("admin:integrations_delivery_change", args=[delivery.pk]))
    assert response.status_code == 200
    return response.content.decode()


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def plain_http_port():
    """A server that answers every connection at once with a plain-HTTP 400, as a web
    server does to a TLS handshake on its HTTP port."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def _point(partner, url: str) -> None:
    partner.base_url = url
    partner.save(update_fields=["base_url"])


# --- errors people can read ----------------------------------------------------------------


def test_https_to_a_plain_http_server_says_tls_failed_with_the_detail_below(
    support_client, engine_api, partner, plain_http_port
):
    # given a partner whose URL says https:// but whose server speaks plain HTTP
    _point(partner, f"https://127.0.0.1:{plain_http_port}")
    engine_api.post("/api/v1/engine/incoming", incoming_body())
    delivery = Delivery.objects.get(partner=partner)
    # when the real sender tries it
    assert send_one(delivery_id=delivery.pk) == "retrying"
    # then the delivery page says what happened in words, the library's text kept below
    page = _page(support_client, delivery)
    assert "The secure connection (TLS) failed" in page
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    assert attempt.error_class == "tls_error"
    # (the library's words vary: curl may say "SSL connect error" or "Send failure")
    assert 'class="error-detail"' in page and escape(attempt.error_message) in page
    # and so does the list, from the delivery's stored error alone
    listing = support_client.get(reverse("admin:integrations_delivery_changelist")).content
    assert "The secure connection (TLS) failed" in listing.decode()


def test_nothing_listening_says_refused(support_client, engine_api, partner):
    _point(partner, f"http://127.0.0.1:{_free_port()}")
    engine_api.post("/api/v1/engine/incoming", incoming_body())
    delivery = Delivery.objects.get(partner=partner)
    assert send_one(delivery_id=delivery.pk) == "retrying"
    assert "refused the connection" in _page(support_client, delivery)


def test_the_final_attempt_of_a_dead_delivery_is_labelled_final(
    support_client, engine_api, partner, partner_server_factory, settings
):
    # given a partner that keeps failing and a schedule of two tries
    settings.PORTAL_RETRY_SCHEDULE = (0, 0)
    sink = partner_server_factory(lambda r, n: (503, b"busy", {}))
    _point(partner, sink.url)
    engine_api.post("/api/v1/engine/incoming", incoming_body())
    delivery = Delivery.objects.get(partner=partner)
    assert send_one(delivery_id=delivery.pk) == "retrying"
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=datetime.now(UTC))
    assert send_one(delivery_id=delivery.pk) == "dead"
    # then the first attempt was retried, the last is final, both say what the answer was
    outcomes = list(delivery.attempts_log.order_by("number").values_list("outcome", flat=True))
    assert outcomes == ["retry", "retry"]  # as stored: the last try hit the end of the schedule
    page = _page(support_client, delivery)
    assert page.count("Failed: retried later") == 1
    assert page.count("Failed: final attempt, not retried") == 1
    assert "HTTP 503 Service Unavailable" in page


def test_a_delivery_held_by_its_tickets_order_says_which_message_it_waits_for(
    support_client, engine_api, partner, partner_server_factory
):
    # given two messages of a ticket, the first failing (retrying later)
    sink = partner_server_factory(lambda r, n: (500, b"oops", {}))
    _point(partner, sink.url)
    engine_api.post("/api/v1/engine/incoming", incoming_body(message="satu"))
    engine_api.post("/api/v1/engine/incoming", incoming_body(message="dua"))
    first, second = Delivery.objects.filter(partner=partner).order_by("id")
    assert send_one(delivery_id=first.pk) == "retrying"
    # when support opens the second
    page = _page(support_client, second)
    # then it says it waits for message #1, with a link to that delivery
    assert "Waiting for message #1 of this ticket" in page
    assert reverse("admin:integrations_delivery_change", args=[first.pk]) in page
    listing = support_client.get(reverse("admin:integrations_delivery_changelist")).content
    assert "Waiting for message #1" in listing.decode()
    # and the first says when it is tried next
    assert "Next attempt at" in _page(support_client, first)


def test_what_waiting_rows_wait_for_costs_one_query_per_page(support_client, engine_api, partner):
    """The delivery list finds the blockers of all its waiting rows at once."""

    def listing_queries(n: int, ticket: str) -> int:
        Delivery.objects.all().delete()
        for i in range(n):
            engine_api.post(
                "/api/v1/engine/incoming", incoming_body(ticketNumber=ticket, message=f"m{i}")
            )
        first = Delivery.objects.filter(partner=partner).order_by("id").first()
        Delivery.objects.filter(pk=first.pk).update(status="retrying")
        url = reverse("admin:integrations_delivery_changelist")
        with CaptureQueriesContext(connection) as queries:
            page = support_client.get(url).content.decode()
        assert page.count("Waiting for message #1") == n - 1
        return len(queries)

    assert listing_queries(2, "tiket-a") == listing_queries(8, "tiket-b")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"error_class": "dns_error"}, "host name was not found"),
        ({"error_class": "timeout", "duration_ms": 3000}, "timed out after 3 s"),
        ({"error_class": "timeout"}, "the request timed out."),  # (no time at hand: no "0 s")
        ({"message": "ReadTimeout: read timed out. (read timeout=10)"}, "request timed out."),
        ({"error_class": "deadline_exceeded"}, "within the response deadline. It may"),
        ({"error_class": "deadline_exceeded", "duration_ms": 10500}, "deadline (10.5 s)"),
        (
            {
                "error_class": "blocked_destination",
                "message": "refused to connect to db.internal (10.0.0.5): private address",
            },
            "db.internal is 10.0.0.5, a private address",
        ),
        ({"message": "refused to connect to x (127.0.0.1): loopback address"}, "a loopback"),
        ({"status_code": 302}, "Redirects are not followed"),
        ({"status_code": 404}, "HTTP 404 Not Found: it refused the request"),
        ({"status_code": 429}, "temporary failure, retried"),
        ({"status_code": 200}, '"status": "success"'),
        ({"message": "HTTP 500"}, "HTTP 500 Internal Server Error"),
        (
            {"message": "SSLError: _PolicyHTTPSPool(host='x'): WRONG_VERSION_NUMBER"},
            "(TLS) failed",
        ),
        ({"message": "ConnectionError: [Errno 111] Connection refused"}, "refused the connection"),
        (
            {"message": "pycurl.error (60): SSL certificate problem: self-signed certificate"},
            "(TLS) failed",
        ),
        ({"message": "pycurl.error (28): Operation timed out after 1000 ms"}, "request timed out."),
        ({"message": "ConnectionRefusedError: [Errno 111] Connection refused"}, "refused the"),
        ({"message": "Cancelled by an operator."}, ""),
    ],
)
def test_error_summaries(kwargs, expected):
    with translation.override("en"):
        summary = explain.error_summary(**kwargs)
    assert expected in summary if expected else summary == ""


# --- resend and cancel on the delivery page ------------------------------------------------


def test_support_resends_a_dead_delivery_from_its_page_and_it_succeeds(
    support_client, engine_api, partner, partner_server_factory
):
    sink = partner_server_factory(lambda r, n: (422, b"no", {}) if n == 1 else OK)
    _point(partner, sink.url)
    engine_api.post("/api/v1/engine/incoming", incoming_body())
    delivery = Delivery.objects.get(partner=partner)
    assert send_one(delivery_id=delivery.pk) == "dead"
    page = _page(support_client, delivery)
    # the page offers Resend (on the page and on its attempt), but no Cancel to support
    assert 'id="resend-delivery"' in page and 'class="resend-attempt"' in page
    assert 'id="cancel-delivery"' not in page
    resend = reverse("admin:integrations_delivery_resend", args=[delivery.pk])
    assert support_client.get(resend).status_code == 405
    # (with CSRF checked, as a browser posts the page's form)
    strict = Client(enforce_csrf_checks=True)
    strict.cookies = support_client.cookies
    assert strict.post(resend).status_code == 403  # no token: refused
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)[1]
    response = strict.post(resend, {"csrfmiddlewaretoken": token}, follow=True)
    assert any(m.startswith("Resent") for m in _messages(response))
    delivery.refresh_from_db()
    assert delivery.status == "pending"
    assert send_one(delivery_id=delivery.pk) == "succeeded"
    assert "status-succeeded" in _page(support_client, delivery)
    # a second resend of a delivery on its way is refused in words
    Delivery.objects.filter(pk=delivery.pk).update(status="pending")
    response = support_client.post(resend, follow=True)
    assert any("only a finished delivery" in m for m in _messages(response))


def test_cancel_asks_first_and_is_for_tenant_admins(
    admin_client_, support_client, engine_api, partner
):
    engine_api.post("/api/v1/engine/incoming", incoming_body())
    delivery = Delivery.objects.get(partner=partner)
    cancel = reverse("admin:integrations_delivery_cancel", args=[delivery.pk])
    assert support_client.get(cancel).status_code == 403
    assert support_client.post(cancel, {"confirmed": "yes"}).status_code == 403
    assert 'id="cancel-delivery"' in _page(admin_client_, delivery)
    # the first step only asks
    asked = admin_client_.get(cancel)
    assert asked.status_code == 200 and b"will never be sent" in asked.content
    admin_client_.post(cancel)  # (not confirmed)
    delivery.refresh_from_db()
    assert delivery.status == "pending"
    response = admin_client_.post(cancel, {"confirmed": "yes"}, follow=True)
    assert any(m.startswith("Cancelled") for m in _messages(response))
    delivery.refresh_from_db()
    assert delivery.status == "cancelled"


def test_another_tenants_user_cannot_resend_or_cancel(other_tenant, engine_api, partner):
    stranger = staff_client(other_tenant, "admin", "budi")
    engine_api.post("/api/v1/engine/incoming", incoming_body())
    delivery = Delivery.objects.get(partner=partner)
    Delivery.objects.filter(pk=delivery.pk).update(status="dead")
    for name in ("resend", "cancel"):
        url = reverse(f"admin:integrations_delivery_{name}", args=[delivery.pk])
        assert stranger.post(url, {"confirmed": "yes"}).status_code == 404  # not even seen
    delivery.refresh_from_db()
    assert delivery.status == "dead"


# --- times in the tenant's zone ------------------------------------------------------------


def test_times_are_in_the_tenants_zone_with_seconds_and_a_switch_to_utc(
    support_client, tenant, engine_api, partner
):
    # given a Jakarta tenant and an event received at 13:00:05 UTC (20:00:05 in Jakarta)
    assert tenant.time_zone == "Asia/Jakarta"
    engine_api.post("/api/v1/engine/incoming", incoming_body())
    at = datetime(2026, 12, 1, 13, 0, 5, tzinfo=UTC)
    Event.objects.update(received_at=at)
    Delivery.objects.update(created_at=at)
    delivery = Delivery.objects.get()
    events = reverse("admin:integrations_event_changelist")
    timeline = reverse("admin:integrations_ticket_timeline", args=[delivery.ticket_id])
    # then lists, detail pages and the timeline show 20:00:05 WIB
    for url in (
        events,
        timeline,
        reverse("admin:integrations_delivery_change", args=[delivery.pk]),
    ):
        page = support_client.get(url).content.decode()
        assert "1 Dec 2026, 20:00:05 WIB" in page, url
        assert "Times in Asia/Jakarta" in page
    # when they switch to UTC, the same pages say 13:00:05 UTC, until they switch back
    switched = support_client.post(
        reverse("admin:time_zone"), {"zone": "utc", "next": events}, follow=True
    )
    assert "1 Dec 2026, 13:00:05 UTC" in switched.content.decode()
    page = support_client.get(timeline).content.decode()
    assert "13:00:05 UTC" in page and "Show in Asia/Jakarta" in page
    support_client.post(reverse("admin:time_zone"), {"zone": "tenant", "next": "//evil.example/"})
    assert "20:00:05 WIB" in support_client.get(events).content.decode()


def test_the_zone_switch_sends_nobody_off_site(support_client):
    response = support_client.post(
        reverse("admin:time_zone"), {"zone": "utc", "next": "https://evil.example/"}
    )
    assert response.status_code == 302 and response["Location"] == "/admin/"
