"""Batches of deliveries (one claim, one transaction) against a real loopback partner: what a
batch sends, records, hands back and queues next (SPEC §5 order, one attempt at a time for a
failing partner), and that its cost in SQL statements does not grow with its size."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from integrations.models import ApiKey, Delivery, DeliveryAttempt, Partner
from integrations.outbox import queue, sender
from integrations.outbox.health import latency_fold
from integrations.services.accounts import api_key_create
from tests.conftest import Caller, incoming_body, outgoing_body
from tests.support.outbox import due_ids, send_one

IN = "/api/v1/engine/incoming"
OK = (200, b'{"status":"success"}', {})


def _ingest(engine_api, **overrides) -> Delivery:
    event_id = engine_api.post(IN, incoming_body(**overrides)).json()["eventId"]
    return Delivery.objects.get(event_id=event_id, partner__isnull=False)


@pytest.fixture
def pointed(partner):
    def point(server):
        partner.base_url = server.url
        partner.save()
        return server

    return point


def test_a_batch_sends_records_and_counts_every_delivery(
    engine_api, pointed, partner_server_factory, partner
):
    sink = pointed(partner_server_factory())
    batch = [_ingest(engine_api, ticketNumber=f"t-{i}", message=f"m{i}") for i in range(5)]
    outcomes = sender.deliveries_send(delivery_ids=[d.pk for d in batch])
    assert outcomes == {d.pk: "succeeded" for d in batch}
    # each once: the first alone, the rest side by side once it was answered (PROBE)
    messages = [r.json["message"] for r in sink.received]
    assert messages[0] == "m0" and sorted(messages) == [f"m{i}" for i in range(5)]
    for delivery in batch:
        delivery.refresh_from_db()
        assert delivery.status == "succeeded" and delivery.attempts == 1
        assert delivery.lease_token is None and delivery.delivered_at is not None
    attempts = DeliveryAttempt.objects.filter(delivery__in=batch).order_by("delivery_id")
    assert [a.number for a in attempts] == [1] * 5
    assert all(a.response_status == 200 and a.outcome == "success" for a in attempts)
    # the partner's counters are those of five single attempts
    partner.refresh_from_db()
    assert partner.success_count == 5 and partner.consecutive_failures == 0
    # (folded in the order they were answered, which is the order of their rows)
    expected = latency_fold(None, [a.duration_ms for a in attempts.order_by("id")])
    assert partner.latency_ms_avg == pytest.approx(expected)


def test_latency_fold_in_one_update_equals_one_by_one():
    durations = [12, 40, 7, 300]
    keep = 0.8 ** len(durations)
    for start in (0.0, 55.5, 1000.0):
        assert start * keep + latency_fold(0.0, durations) == pytest.approx(
            latency_fold(start, durations)
        )
    assert latency_fold(None, []) is None and latency_fold(None, [9]) == 9.0


def test_statements_per_batch_do_not_grow_with_its_size(
    engine_api, pointed, partner_server_factory, monkeypatch
):
    # (however slow the machine: a batch past RECORD_EVERY records request by request)
    monkeypatch.setattr(sender, "RECORD_EVERY", 600.0)
    pointed(partner_server_factory())
    # a partner known to answer quickly (an unproven one has its batches checked once more:
    # tests/outbox/test_fair_share.py)
    Partner.objects.update(latency_ms_avg=20.0)
    small = [_ingest(engine_api, ticketNumber=f"s-{i}") for i in range(2)]
    large = [_ingest(engine_api, ticketNumber=f"l-{i}") for i in range(12)]
    counts = []
    for batch in (small, large):
        with CaptureQueriesContext(connection) as queries:
            outcomes = sender.deliveries_send(delivery_ids=[d.pk for d in batch])
        assert set(outcomes.values()) == {"succeeded"}
        counts.append(len(queries.captured_queries))
    assert counts[0] == counts[1], counts


def test_after_a_failure_the_rest_of_the_targets_batch_is_handed_back(
    engine_api, pointed, partner_server_factory, partner
):
    sink = pointed(partner_server_factory(lambda r, n: (503, b"", {}) if n == 1 else OK))
    batch = [_ingest(engine_api, ticketNumber=f"t-{i}") for i in range(3)]
    outcomes = sender.deliveries_send(delivery_ids=[d.pk for d in batch])
    # one attempt at a time for a failing partner: the first fails, the others are not tried
    assert outcomes == {
        batch[0].pk: "retrying",
        batch[1].pk: "handed_back",
        batch[2].pk: "handed_back",
    }
    assert len(sink.received) == 1
    for delivery in batch[1:]:
        delivery.refresh_from_db()
        # waiting again exactly as before the claim: no attempt used, no lease, re-queueable
        assert delivery.status == "pending" and delivery.attempts == 0
        assert delivery.lease_token is None and delivery.dispatched_at is None
        assert not DeliveryAttempt.objects.filter(delivery=delivery).exists()
    partner.refresh_from_db()
    assert partner.consecutive_failures == 1
    # the dispatcher queues the handed-back ones again (the failing partner has no attempt
    # in flight now)
    due = due_ids(now=timezone.now())
    assert {batch[1].pk, batch[2].pk} <= set(due)


def test_a_retrying_delivery_handed_back_stays_retrying(
    engine_api, pointed, partner_server_factory
):
    sink = pointed(partner_server_factory(lambda r, n: (503, b"", {}) if n <= 2 else OK))
    first = _ingest(engine_api, ticketNumber="a")
    second = _ingest(engine_api, ticketNumber="b")
    assert send_one(delivery_id=second.pk) == "retrying"
    Delivery.objects.filter(pk=second.pk).update(next_attempt_at=timezone.now())
    # a batch goes in id order: the first fails, so the second (retrying) is not tried
    outcomes = sender.deliveries_send(delivery_ids=[first.pk, second.pk])
    assert outcomes == {first.pk: "retrying", second.pk: "handed_back"}
    second.refresh_from_db()
    assert second.status == "retrying" and second.attempts == 1
    assert len(sink.received) == 2


def test_a_batch_takes_only_the_oldest_open_delivery_of_a_ticket(
    engine_api, pointed, partner_server_factory, request, django_capture_on_commit_callbacks
):
    pointed(partner_server_factory())
    first = _ingest(engine_api, message="one")
    second = _ingest(engine_api, message="two")
    request.node.queued_deliveries.clear()
    with django_capture_on_commit_callbacks(execute=True):
        outcomes = sender.deliveries_send(delivery_ids=[first.pk, second.pk])
    assert outcomes == {first.pk: "succeeded", second.pk: "not_claimed"}
    # and the next of the ticket is queued as soon as the first is final
    assert request.node.queued_deliveries == [second.pk]
    assert send_one(delivery_id=second.pk) == "succeeded"


def test_what_would_outlast_half_the_lease_is_handed_back(
    engine_api, pointed, partner_server_factory, settings, partner
):
    # a 10 s lease leaves 5 s per batch; the partner's deadline is 10 s, so after the first
    # request nothing more fits and the rest waits for another task
    settings.PORTAL_DELIVERY_LEASE_SECONDS = 10
    sink = pointed(partner_server_factory())
    batch = [_ingest(engine_api, ticketNumber=f"t-{i}") for i in range(3)]
    assert partner.timeout == 10
    outcomes = sender.deliveries_send(delivery_ids=[d.pk for d in batch])
    assert outcomes == {
        batch[0].pk: "succeeded",
        batch[1].pk: "handed_back",
        batch[2].pk: "handed_back",
    }
    assert len(sink.received) == 1


def test_batches_are_per_target_in_id_order_and_bounded():
    rows = [(5, "partner:1"), (1, "partner:1"), (2, "engine"), (3, "partner:1"), (9, "partner:2")]
    assert queue.batches_by_target(rows, 2) == [[1, 3], [5], [2], [9]]
    assert queue.batches_by_target([], 20) == []


def test_dispatcher_queues_due_deliveries_in_batches_per_target(
    engine_api, pointed, partner_server_factory, settings, monkeypatch
):
    settings.PORTAL_DELIVERY_BATCH = 2
    pointed(partner_server_factory())
    batch = [_ingest(engine_api, ticketNumber=f"t-{i}") for i in range(5)]
    partner_ids = [d.pk for d in batch]
    # as if their queue messages had been lost: the dispatcher must queue them
    Delivery.objects.filter(pk__in=partner_ids).update(dispatched_at=None)
    messages: list[list[int]] = []
    monkeypatch.setattr("integrations.outbox.queue.publish", lambda task, ids: messages.append(ids))
    assert queue.deliveries_dispatch(now=timezone.now()) == 5
    mine = [m for m in messages if set(m) & set(partner_ids)]
    assert mine == [partner_ids[0:2], partner_ids[2:4], partner_ids[4:5]]
    # each message is one target's
    targets = [
        set(Delivery.objects.filter(pk__in=m).values_list("target", flat=True)) for m in messages
    ]
    assert all(len(t) == 1 for t in targets)
    # and they are not queued again on the next run (dispatched_at)
    messages.clear()
    assert queue.deliveries_dispatch(now=timezone.now()) == 0 and messages == []


def test_a_task_tops_its_batch_up_with_the_partners_oldest_new_deliveries(
    engine_api, pointed, partner_server_factory, settings
):
    settings.PORTAL_DELIVERY_BATCH = 3
    sink = pointed(partner_server_factory())
    a1 = _ingest(engine_api, ticketNumber="a", message="a1")
    b1 = _ingest(engine_api, ticketNumber="b", message="b1")
    a2 = _ingest(engine_api, ticketNumber="a", message="a2")  # held back by a1 (order)
    c1 = _ingest(engine_api, ticketNumber="c", message="c1")
    d1 = _ingest(engine_api, ticketNumber="d", message="d1")
    # when the queue's task for c1 runs (its message came first, say)
    outcomes = sender.deliveries_send(delivery_ids=[c1.pk], top_up=True)
    # then it also took the two oldest new deliveries of that partner that may go now; the
    # batch is full at 3, so d1 waits for its own message
    assert outcomes == {c1.pk: "succeeded", a1.pk: "succeeded", b1.pk: "succeeded"}
    messages = [r.json["message"] for r in sink.received]
    assert messages[0] == "a1" and sorted(messages) == ["a1", "b1", "c1"]
    for delivery, status in ((a2, "pending"), (d1, "pending")):
        delivery.refresh_from_db()
        assert delivery.status == status and delivery.attempts == 0
    # and the messages of those taken find nothing left to do
    assert sender.deliveries_send(delivery_ids=[a1.pk, b1.pk], top_up=True) == {
        a1.pk: "not_claimed",
        b1.pk: "not_claimed",
    }


def test_only_the_queues_tasks_top_up(engine_api, pointed, partner_server_factory):
    sink = pointed(partner_server_factory())
    first = _ingest(engine_api, ticketNumber="a")
    _ingest(engine_api, ticketNumber="b")
    assert sender.deliveries_send(delivery_ids=[first.pk]) == {first.pk: "succeeded"}
    assert len(sink.received) == 1


def _relay_delivery(engine, partner_caller, owner: str, ticket: str) -> Delivery:
    """A partner's reply on a new ticket: one delivery to its tenant's engine relay."""
    engine.post(IN, incoming_body(ticketNumber=ticket, owner=owner))
    reply = partner_caller.post("/api/v1/outgoing", outgoing_body(ticketNumber=ticket, owner=owner))
    assert reply.status_code == 200, reply.content
    return Delivery.objects.get(event_id=reply.json()["eventId"])


def test_one_tenants_failing_engine_never_holds_up_another_tenants_relay(
    tenant, other_tenant, partner_with_key, other_partner_api, partner_server_factory, monkeypatch
):
    # given tenant A's engine failing and tenant B's healthy (both relays' target is "engine")
    failing = partner_server_factory(lambda r, n: (503, b"", {}))
    healthy = partner_server_factory()
    for owner_tenant, server in ((tenant, failing), (other_tenant, healthy)):
        owner_tenant.engine_base_url = server.url
        owner_tenant.engine_send_message_path = "/msg"
        owner_tenant.save()
    engines = {}
    for owner_tenant in (tenant, other_tenant):
        _, raw = api_key_create(kind=ApiKey.Kind.ENGINE, tenants=[owner_tenant])
        engines[owner_tenant.pk] = Caller(APIClient(), raw)
    partner_a = Caller(APIClient(), partner_with_key[1])
    a = [_relay_delivery(engines[tenant.pk], partner_a, tenant.owner, f"a{i}") for i in range(2)]
    b = [
        _relay_delivery(engines[other_tenant.pk], other_partner_api, other_tenant.owner, f"b{i}")
        for i in range(2)
    ]
    assert {d.target for d in a + b} == {"engine"}
    # when the dispatcher queues them: one message per tenant's engine
    Delivery.objects.filter(pk__in=[d.pk for d in a + b]).update(dispatched_at=None)
    messages: list[list[int]] = []
    monkeypatch.setattr("integrations.outbox.queue.publish", lambda task, ids: messages.append(ids))
    queue.deliveries_dispatch(now=timezone.now())
    assert sorted(messages) == sorted([[d.pk for d in a], [d.pk for d in b]])
    # and even in one batch, A's failure hands back only A's deliveries
    outcomes = sender.deliveries_send(delivery_ids=[d.pk for d in a + b])
    assert [outcomes[d.pk] for d in a] == ["retrying", "handed_back"]
    assert [outcomes[d.pk] for d in b] == ["succeeded", "succeeded"]
    assert len(healthy.received) == 2


def test_an_error_mid_batch_records_what_was_sent_and_hands_back_the_rest(
    engine_api, pointed, partner_server_factory, monkeypatch, settings
):
    settings.PORTAL_DELIVERY_PARALLEL = 1  # one after the other, in this thread
    sink = pointed(partner_server_factory())
    batch = [_ingest(engine_api, ticketNumber=f"t-{i}") for i in range(3)]
    real, calls = sender.send_webhook, []

    def second_breaks(**kwargs):
        calls.append(kwargs["msg_id"])
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(**kwargs)

    monkeypatch.setattr(sender, "send_webhook", second_breaks)
    with pytest.raises(RuntimeError):
        sender.deliveries_send(delivery_ids=[d.pk for d in batch])
    first, second, third = (Delivery.objects.get(pk=d.pk) for d in batch)
    # the first was sent and is recorded
    assert len(sink.received) == 1 and first.status == "succeeded"
    assert DeliveryAttempt.objects.filter(delivery=first).count() == 1
    # the one that broke keeps its lease (its try counted: one that always breaks runs out)
    assert second.status == "delivering" and second.attempts == 1
    # the third was never tried: waiting again as before the claim
    assert third.status == "pending" and third.attempts == 0 and third.lease_token is None


def test_a_slow_batch_records_each_request_as_it_goes(
    engine_api, pointed, partner_server_factory, monkeypatch, request, settings
):
    # given a batch that has already run longer than RECORD_EVERY, sending one request
    # after the other in this thread (the fake below reads the test's transaction)
    settings.PORTAL_DELIVERY_PARALLEL = 1
    monkeypatch.setattr(sender, "RECORD_EVERY", 0.0)
    pointed(partner_server_factory())
    batch = [_ingest(engine_api, ticketNumber=f"t-{i}") for i in range(3)]
    recorded_before_next_send: list[int] = []
    real = sender.send_webhook

    def send(**kwargs):
        recorded_before_next_send.append(DeliveryAttempt.objects.count())
        return real(**kwargs)

    monkeypatch.setattr(sender, "send_webhook", send)
    outcomes = sender.deliveries_send(delivery_ids=[d.pk for d in batch])
    assert set(outcomes.values()) == {"succeeded"}
    # then every request was recorded before the next one was sent
    assert recorded_before_next_send == [0, 1, 2]
