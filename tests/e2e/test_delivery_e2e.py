"""Deliveries end to end: real worker and beat processes, real Redis, PostgreSQL and a real
HTTP partner on loopback, with a short retry schedule."""

import os
import signal
import time
from collections import defaultdict

import redis
from standardwebhooks.webhooks import Webhook

from integrations.models import Delivery, DeliveryAttempt, SigningSecret
from tests.conftest import incoming_body
from tests.support.processes import wait_for

IN = "/api/v1/engine/incoming"
OK = (200, b'{"status":"success"}', {})


def _point(partner, server):
    partner.base_url = server.url
    partner.save()


def _ingest_conversations(engine_api, tickets: int, messages: int) -> dict[str, list[str]]:
    """Post messages round-robin over tickets; return each ticket's messages in order."""
    order: dict[str, list[str]] = defaultdict(list)
    for m in range(messages):
        for t in range(tickets):
            text = f"t{t}-m{m}"
            response = engine_api.post(IN, incoming_body(ticketNumber=f"T{t}", message=text))
            assert response.status_code == 202
            order[f"T{t}"].append(text)
    return order


def _acknowledged(server) -> dict[str, list[str]]:
    """Messages the partner answered with success, per ticket, in arrival order."""
    seen: dict[str, list[str]] = defaultdict(list)
    for item in server.received:
        if item.status == 200:
            seen[item.json["ticketNumber"]].append(item.json["message"])
    return seen


def _all_final() -> bool:
    return not Delivery.objects.exclude(status__in=Delivery.FINAL_STATUSES).exists()


def test_failing_partner_gets_everything_in_order_after_recovery(
    workers, engine_api, partner, partner_server_factory
):
    # given a partner that fails its first 5 requests, then recovers
    server = partner_server_factory(lambda r, n: (503, b"busy", {}) if n <= 5 else OK)
    _point(partner, server)
    workers.start_worker()
    workers.start_beat()
    # when 3 tickets x 4 messages are ingested
    expected = _ingest_conversations(engine_api, tickets=3, messages=4)
    # then every delivery succeeds, each ticket's messages arrive in order, signed
    wait_for(_all_final, 90, "every delivery to be final", workers.logs)
    assert set(Delivery.objects.values_list("status", flat=True)) == {"succeeded"}
    assert _acknowledged(server) == expected
    secret = SigningSecret.objects.get(partner=partner).secret
    for item in server.received:
        Webhook(secret).verify(item.body, item.headers)
    # and every HTTP request is recorded as an attempt
    assert DeliveryAttempt.objects.count() == len(server.received) == 12 + 5
    assert DeliveryAttempt.objects.filter(response_status=503).count() == 5


def test_one_failing_ticket_does_not_delay_another(
    workers, engine_api, partner, partner_server_factory
):
    # given a partner that fails everything for ticket SLOW
    def respond(received, n):
        return (500, b"", {}) if received.json["ticketNumber"] == "SLOW" else OK

    server = partner_server_factory(respond)
    _point(partner, server)
    workers.start_worker()
    workers.start_beat()
    # when SLOW gets messages first, then FAST gets three
    for i in range(2):
        engine_api.post(IN, incoming_body(ticketNumber="SLOW", message=f"s{i}"))
    for i in range(3):
        engine_api.post(IN, incoming_body(ticketNumber="FAST", message=f"f{i}"))
    # then FAST is delivered in order while SLOW's first message is still retrying
    wait_for(
        lambda: len(_acknowledged(server)["FAST"]) == 3, 30, "FAST's three messages", workers.logs
    )
    assert _acknowledged(server)["FAST"] == ["f0", "f1", "f2"]
    slow = list(Delivery.objects.filter(ticket__ticket_number="SLOW").order_by("id"))
    assert slow[0].status in ("retrying", "delivering") and slow[1].status == "pending"
    assert {r.json["message"] for r in server.received if r.json["ticketNumber"] == "SLOW"} == {
        "s0"
    }


def test_worker_killed_mid_delivery_loses_nothing(
    workers, engine_api, partner, partner_server_factory
):
    # given a slow partner (each answer takes 1.5 s) and a worker busy with it
    def slow(received, n):
        time.sleep(1.5)
        return OK

    server = partner_server_factory(slow)
    _point(partner, server)
    first = workers.start_worker("w1")
    workers.start_beat()
    expected = _ingest_conversations(engine_api, tickets=4, messages=3)
    wait_for(lambda: len(server.received) >= 2, 30, "the first deliveries", workers.logs)
    # when the worker is SIGKILLed mid-delivery, and a new one starts
    workers.kill(first, signal.SIGKILL)
    workers.start_worker("w2")
    # then every delivery is made, in order per ticket (a killed attempt may repeat)
    wait_for(_all_final, 150, "every delivery after the kill", workers.logs)
    assert set(Delivery.objects.values_list("status", flat=True)) == {"succeeded"}
    acknowledged = _acknowledged(server)
    for ticket, messages in expected.items():
        deduped = list(dict.fromkeys(acknowledged[ticket]))
        assert deduped == messages


def test_redis_wiped_database_recovers_every_delivery(
    workers, engine_api, partner, partner_server_factory
):
    # given deliveries queued in Redis while no worker runs
    server = partner_server_factory()
    _point(partner, server)
    expected = _ingest_conversations(engine_api, tickets=2, messages=3)
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    # six events to one partner: one pump message (the others found its flag up)
    assert client.llen("celery") == 1
    # when Redis is wiped (the message and the pump's flag), then workers start
    client.flushall()
    workers.start_worker()
    workers.start_beat()
    # then the dispatcher finds every delivery in the database and they all arrive in order
    wait_for(_all_final, 60, "every delivery after FLUSHALL", workers.logs)
    assert _acknowledged(server) == expected
