"""/metrics over a real deployment (issue #15, SPEC §10): events posted to gunicorn (2
processes) and delivered by a Celery worker (2 pool processes); one scrape through gunicorn
sums every process, and its counters match the database."""

from __future__ import annotations

import json
import urllib.request
from collections import Counter

from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from integrations.models import ApiKey, Delivery, DeliveryAttempt, Event
from integrations.services.accounts import api_key_create
from integrations.services.partners import partner_create
from tests.conftest import incoming_body
from tests.support.partner import first_try_per_id, ok
from tests.support.processes import wait_for, wait_ready

IN = "/api/v1/engine/incoming"
EVENTS = 12


def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _delta(after, before, name: str, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def _post(url: str, key: str, body: dict) -> int:
    request = urllib.request.Request(
        f"{url}{IN}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def test_a_scrape_sums_every_process_and_matches_the_database(web, workers, tenant, fault_server):
    # given two partners: one answers at once, one fails each message's first try
    fault_server.routes["/ok"] = ok()
    fault_server.routes["/flaky"] = first_try_per_id(503)
    for name in ("ok", "flaky"):
        partner_create(
            tenant=tenant,
            name=name,
            base_url=fault_server.url,
            incoming_message_path=f"/{name}",
            send_message_path="/send",
        )
    _, key = api_key_create(kind=ApiKey.Kind.ENGINE, tenants=[tenant])
    workers.start_worker("w", 2)
    workers.start_beat()
    wait_ready(workers, "w")
    before, since = _scrape(web.url), timezone.now()
    # when events are posted to gunicorn and delivered by the worker
    for i in range(EVENTS):
        body = incoming_body(owner=tenant.owner, ticketNumber=f"M{i}", message=f"m{i}")
        assert _post(web.url, key, body) == 202
    deliveries = Delivery.objects.filter(tenant=tenant, partner__isnull=False)
    wait_for(
        lambda: (
            set(deliveries.values_list("status", flat=True)) == {"succeeded"}
            and deliveries.count() == 2 * EVENTS
        ),
        90,
        "every delivery to succeed",
        workers.logs,
    )
    after = _scrape(web.url)
    # then the scrape's counters are the database's
    stored = Event.objects.filter(tenant=tenant, received_at__gte=since).count()
    assert stored == EVENTS
    assert (
        _delta(after, before, "portal_events_accepted_total", kind="incoming", source="engine")
        == stored
    )
    outcomes = Counter(
        DeliveryAttempt.objects.filter(delivery__in=deliveries).values_list("outcome", flat=True)
    )
    assert outcomes == {"success": 2 * EVENTS, "retry": EVENTS}
    for outcome, n in outcomes.items():
        assert _delta(after, before, "portal_delivery_attempts_total", outcome=outcome) == n
    assert _delta(after, before, "portal_delivery_attempt_duration_seconds_count") == sum(
        outcomes.values()
    )
    # and the gauges: nothing waiting, both partners active
    assert after[("portal_deliveries", (("status", "pending"),))] == 0
    assert after[("portal_partners", (("state", "active"),))] >= 2
