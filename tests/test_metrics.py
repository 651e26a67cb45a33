"""/metrics (SPEC §10): who may read it, and that its counters and gauges say what happened.
The multi-process sum (gunicorn and Celery processes, counters against the database):
tests/e2e/test_metrics_e2e.py."""

from __future__ import annotations

from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from integrations.models import Delivery, Partner
from tests.conftest import incoming_body
from tests.support.outbox import send_one

IN = "/api/v1/engine/incoming"


def scrape(client: Client | None = None, **headers) -> dict[tuple[str, tuple], float]:
    """The scrape as {(sample name, sorted labels): value}."""
    response = (client or Client()).get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_loopback_clients_may_read_metrics_without_a_token(db):
    assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 200
    assert Client(REMOTE_ADDR="::1").get("/metrics").status_code == 200
    response = Client(REMOTE_ADDR="203.0.113.9").get("/metrics")
    assert response.status_code == 403 and b"PORTAL_METRICS_TOKEN" in response.content


def test_with_a_token_only_the_token_reads_metrics(db, settings):
    settings.PORTAL_METRICS_TOKEN = "s3cret-metrics-token"
    remote = Client(REMOTE_ADDR="203.0.113.9")
    assert remote.get("/metrics").status_code == 403
    assert remote.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    assert Client().get("/metrics").status_code == 403  # loopback needs it too
    ok = remote.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-metrics-token")
    assert ok.status_code == 200


def test_counters_and_gauges_follow_what_happened(engine_api, partner, partner_server_factory):
    partner.base_url = partner_server_factory().url
    partner.save()
    before = scrape()
    # when two events are accepted and one of their deliveries is sent
    first = engine_api.post(IN, incoming_body(ticketNumber="m1")).json()["eventId"]
    engine_api.post(IN, incoming_body(ticketNumber="m2"))
    sent = Delivery.objects.get(event_id=first, partner=partner)
    assert send_one(delivery_id=sent.pk) == "succeeded"
    after = scrape()
    # then the counters moved by exactly that
    accepted = "portal_events_accepted_total"
    assert (
        value(after, accepted, kind="incoming", source="engine")
        - value(before, accepted, kind="incoming", source="engine")
        == 2
    )
    attempts = "portal_delivery_attempts_total"
    assert (
        value(after, attempts, outcome="success") - value(before, attempts, outcome="success") == 1
    )
    histogram = "portal_delivery_attempt_duration_seconds_count"
    assert value(after, histogram) - value(before, histogram) == 1
    # and the gauges read the database: one pending delivery to the partner left (the
    # engine relay of this tenant is not configured), the partner active
    assert (
        value(after, "portal_deliveries", status="pending")
        == Delivery.objects.filter(status="pending").count()
    )
    assert value(after, "portal_deliveries", status="dead") == 0
    assert (
        value(after, "portal_partners", state="active")
        == Partner.objects.filter(state="active").count()
    )
    assert value(after, "portal_oldest_due_delivery_age_seconds") >= 0


def test_labels_are_bounded(engine_api, partner):
    engine_api.post(IN, incoming_body(ticketNumber="secret-ticket-42"))
    text = Client().get("/metrics").content.decode()
    assert "secret-ticket-42" not in text and partner.base_url not in text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert set(sample.labels) <= {
                "kind",
                "source",
                "outcome",
                "status",
                "state",
                "component",
                "le",
            }
