"""Fair share of the sending capacity (SPEC §5, issue #17.6): slow or unproven partners get
one batch at a time and known-slow ones share PORTAL_SLOW_PARTNER_BATCHES between them; a
batch sends side by side so one slow ticket does not hold up the others; a batch gives its
worker slot back after SLICE; a message the claim refused is queued again as soon as its
delivery may go. The multi-process measurement is tests/reliability/test_slow_partner.py."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from django.db import connection
from django.utils import timezone

from integrations.models import Delivery, Partner
from integrations.outbox import queue, sender
from integrations.services.partners import partner_create
from tests.conftest import incoming_body
from tests.support.outbox import due_ids
from tests.support.partner import PartnerServer, reply

IN = "/api/v1/engine/incoming"


def _ingest(engine_api, owner=None, **overrides) -> Delivery:
    body = incoming_body(**overrides) if owner is None else incoming_body(owner=owner, **overrides)
    event_id = engine_api.post(IN, body).json()["eventId"]
    return Delivery.objects.get(event_id=event_id, partner__isnull=False)


def _latency(partner: Partner, ms: float | None) -> None:
    Partner.objects.filter(pk=partner.pk).update(latency_ms_avg=ms)


def _claim(delivery: Delivery, token: uuid.UUID | None = None) -> bool:
    taken = queue.deliveries_claim(
        delivery_ids=[delivery.pk], token=token or uuid.uuid4(), now=timezone.now()
    )
    return bool(taken)


def _second_partner(tenant, url: str = "http://127.0.0.1:9/") -> Partner:
    partner, _, _ = partner_create(
        tenant=tenant,
        name="Second",
        base_url=url,
        incoming_message_path="/in",
        send_message_path="/send",
    )
    return partner


# --- the claim ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("latency_ms", "second_batch_allowed"),
    [(None, False), (5000.0, False), (999.0, True), (20.0, True)],
    ids=["unproven", "slow", "just-under", "fast"],
)
def test_a_slow_or_unproven_partner_has_one_batch_at_a_time(
    engine_api, partner, latency_ms, second_batch_allowed
):
    # given a partner with this average latency, one of whose batches is running
    _latency(partner, latency_ms)
    running, waiting = _ingest(engine_api, ticketNumber="a"), _ingest(engine_api, ticketNumber="b")
    token = uuid.uuid4()
    assert _claim(running, token)
    # then the dispatcher queues its next delivery only when the partner is known to be
    # fast (any other would only be refused) ...
    Delivery.objects.filter(pk=waiting.pk).update(dispatched_at=None)
    assert (waiting.pk in due_ids(now=timezone.now())) is second_batch_allowed
    # ... and another batch takes it only then
    assert _claim(waiting) is second_batch_allowed


def test_the_running_batch_tops_itself_up_and_the_cap_ends_with_it(engine_api, partner):
    _latency(partner, None)
    running, waiting = _ingest(engine_api, ticketNumber="a"), _ingest(engine_api, ticketNumber="b")
    token = uuid.uuid4()
    assert _claim(running, token)
    # its own lease does not count against it
    more = queue.deliveries_claim_more(
        partner_id=partner.pk, limit=5, token=token, now=timezone.now()
    )
    assert [d.pk for d in more] == [waiting.pk]
    # and once it is handed back, another batch may run
    queue.deliveries_hand_back(delivery_ids=[running.pk, waiting.pk], token=token)
    assert _claim(waiting)


def test_known_slow_partners_share_the_slow_batches(engine_api, tenant, partner, settings):
    # given two partners known to be slow, and one not yet proven
    slow_b = _second_partner(tenant)
    new_c, _, _ = partner_create(
        tenant=tenant,
        name="Third",
        base_url="http://127.0.0.1:9/",
        incoming_message_path="/in",
        send_message_path="/send",
    )
    _latency(partner, 8000.0)
    _latency(slow_b, 3000.0)
    _latency(new_c, None)
    event_id = engine_api.post(IN, incoming_body(ticketNumber="a")).json()["eventId"]
    deliveries = {d.partner_id: d for d in Delivery.objects.filter(event_id=event_id)}
    assert _claim(deliveries[partner.pk])
    # then the other slow partner waits for the one slow batch allowed; the new one does not
    assert not _claim(deliveries[slow_b.pk])
    assert _claim(deliveries[new_c.pk])
    # and with two slow batches allowed, it goes
    settings.PORTAL_SLOW_PARTNER_BATCHES = 2
    assert _claim(deliveries[slow_b.pk])


def test_a_refused_message_is_queued_again_when_its_delivery_may_go(engine_api, partner):
    # given an unproven partner's running batch, and a message for another of its deliveries
    running, refused = _ingest(engine_api, ticketNumber="a"), _ingest(engine_api, ticketNumber="b")
    token = uuid.uuid4()
    assert _claim(running, token)
    assert refused.dispatched_at is not None  # its message was queued at ingest
    # when that message is taken, the claim refuses its delivery
    assert sender.deliveries_send(delivery_ids=[refused.pk]) == {refused.pk: "not_claimed"}
    # then it is marked not queued (instead of waiting PORTAL_REDISPATCH_AFTER) ...
    refused.refresh_from_db()
    assert refused.dispatched_at is None and refused.status == "pending"
    # ... and the dispatcher queues it once the running batch is over
    assert refused.pk not in due_ids(now=timezone.now())
    queue.deliveries_hand_back(delivery_ids=[running.pk], token=token)
    assert refused.pk in due_ids(now=timezone.now())


def test_release_leaves_deliveries_that_are_not_waiting(engine_api, partner):
    taken = _ingest(engine_api, ticketNumber="a")
    assert _claim(taken)
    assert queue.deliveries_release(delivery_ids=[taken.pk]) == 0
    assert queue.deliveries_release(delivery_ids=[]) == 0


# --- the batch ------------------------------------------------------------------------------


class Gate:
    """A partner whose answers to messages containing "slow" wait until `release` (at most
    `timeout`); it notes each request's arrival and the most requests it had at once."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.released = threading.Event()
        self.timeout = timeout
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.order: list[str] = []
        self.server = PartnerServer(routes={"/incoming": self.behave})

    def behave(self, sock, received, stop):
        message = received.json["message"]
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.order.append(message)
        try:
            if "slow" in message:
                self.released.wait(self.timeout)
            else:
                time.sleep(0.05)
            reply(sock, 200)
        finally:
            with self.lock:
                self.now -= 1
        return "200"


@pytest.fixture
def gate(partner):
    g = Gate()
    partner.base_url = g.server.url
    partner.save()
    yield g
    g.released.set()
    g.server.close()


def test_one_slow_ticket_does_not_hold_up_the_batchs_others(engine_api, partner, gate):
    # given a batch whose first delivery's answer is slow
    slow = _ingest(engine_api, ticketNumber="s", message="slow one")
    others = [_ingest(engine_api, ticketNumber=f"t{i}", message=f"m{i}") for i in range(3)]
    threading.Timer(2.0, gate.released.set).start()
    started = time.monotonic()
    outcomes = sender.deliveries_send(delivery_ids=[slow.pk] + [d.pk for d in others])
    # then the others went alongside it once it had kept them waiting PROBE seconds
    assert set(outcomes.values()) == {"succeeded"}
    assert gate.order[0] == "slow one" and sorted(gate.order[1:]) == ["m0", "m1", "m2"]
    assert gate.most == 4  # PORTAL_DELIVERY_PARALLEL
    assert time.monotonic() - started < 3.0  # the slow one's 2 s, not 2 s + 3 x 0.05 s waits
    received_at = {r.json["message"]: r.at for r in gate.server.received}
    assert max(received_at[f"m{i}"] for i in range(3)) - received_at["slow one"] < 1.0


def test_a_failing_partner_gets_one_request_at_a_time(engine_api, partner, gate):
    Partner.objects.filter(pk=partner.pk).update(consecutive_failures=2, latency_ms_avg=20.0)
    gate.released.set()
    batch = [_ingest(engine_api, ticketNumber=f"t{i}", message=f"slow {i}") for i in range(3)]
    outcomes = sender.deliveries_send(delivery_ids=[d.pk for d in batch])
    assert set(outcomes.values()) == {"succeeded"}
    assert gate.most == 1 and gate.order == ["slow 0", "slow 1", "slow 2"]


def test_parallel_one_sends_one_after_the_other(engine_api, partner, gate, settings):
    settings.PORTAL_DELIVERY_PARALLEL = 1
    gate.timeout = 0.4  # the "slow" answers take 0.4 s
    batch = [_ingest(engine_api, ticketNumber=f"t{i}", message=f"slow {i}") for i in range(3)]
    assert set(sender.deliveries_send(delivery_ids=[d.pk for d in batch]).values()) == {"succeeded"}
    assert gate.most == 1 and gate.order == ["slow 0", "slow 1", "slow 2"]


def test_a_batch_past_its_slice_starts_nothing_new(engine_api, partner, gate, monkeypatch):
    monkeypatch.setattr(sender, "SLICE", 0.0)
    gate.released.set()
    batch = [_ingest(engine_api, ticketNumber=f"t{i}") for i in range(3)]
    outcomes = sender.deliveries_send(delivery_ids=[d.pk for d in batch])
    # the first goes (a batch always sends one), the rest goes back to the queue at once
    assert [outcomes[d.pk] for d in batch] == ["succeeded", "handed_back", "handed_back"]
    for delivery in batch[1:]:
        delivery.refresh_from_db()
        assert delivery.status == "pending" and delivery.dispatched_at is None


def test_an_error_in_a_sending_thread_keeps_what_the_others_got(
    engine_api, partner, gate, monkeypatch
):
    gate.released.set()
    batch = [_ingest(engine_api, ticketNumber=f"t{i}", message=f"m{i}") for i in range(4)]
    real = sender.send_webhook

    def breaks_on_m2(**kwargs):
        if b'"m2"' in kwargs["body"]:
            raise RuntimeError("boom")
        return real(**kwargs)

    monkeypatch.setattr(sender, "send_webhook", breaks_on_m2)
    with pytest.raises(RuntimeError):
        sender.deliveries_send(delivery_ids=[d.pk for d in batch])
    statuses = {d.pk: Delivery.objects.get(pk=d.pk).status for d in batch}
    # the one that broke keeps its lease; every other one was sent and recorded
    assert statuses[batch[2].pk] == "delivering"
    assert [statuses[d.pk] for d in (batch[0], batch[1], batch[3])] == ["succeeded"] * 3


@pytest.mark.django_db(transaction=True)
def test_a_batch_waiting_on_a_slow_answer_takes_the_partners_new_deliveries(
    engine_api, partner, gate
):
    # given a slow delivery in flight, and another ticket's delivery not due yet
    slow = _ingest(engine_api, ticketNumber="s", message="slow one")
    later = _ingest(engine_api, ticketNumber="t", message="later")
    Delivery.objects.filter(pk=later.pk).update(
        next_attempt_at=timezone.now() + timezone.timedelta(hours=1)
    )

    def becomes_due():  # as if it had just arrived
        Delivery.objects.filter(pk=later.pk).update(next_attempt_at=timezone.now())
        connection.close()  # this thread's own connection, or it outlives the test database

    threading.Timer(0.5, becomes_due).start()
    threading.Timer(2.0, gate.released.set).start()
    # when the queue's task sends the slow one
    outcomes = sender.deliveries_send(delivery_ids=[slow.pk], top_up=True)
    # then it also took the new one while waiting, and sent it before the slow one returned
    assert outcomes == {slow.pk: "succeeded", later.pk: "succeeded"}
    received_at = {r.json["message"]: r.at for r in gate.server.received}
    assert received_at["later"] - received_at["slow one"] < 1.5


# --- two claims at the same instant -----------------------------------------------------------


def _lease(delivery: Delivery, token: uuid.UUID, now) -> None:
    """As if a claim at `now` under `token` had taken it (a claim racing another)."""
    Delivery.objects.filter(pk=delivery.pk).update(
        status=Delivery.Status.DELIVERING,
        lease_token=token,
        lease_expires_at=now + timezone.timedelta(seconds=120),
        attempts=1,
    )


@pytest.mark.parametrize("latency_ms", [None, 5000.0], ids=["unproven", "slow"])
def test_of_two_batches_claimed_at_once_the_later_yields(engine_api, partner, latency_ms):
    _latency(partner, latency_ms)
    a, b = _ingest(engine_api, ticketNumber="a"), _ingest(engine_api, ticketNumber="b")
    now = timezone.now()
    first, second = uuid.uuid4(), uuid.uuid4()
    _lease(a, first, now)
    _lease(b, second, now + timezone.timedelta(milliseconds=3))
    known = latency_ms is not None
    args = {"partner_id": partner.pk, "known_slow": known}
    assert not queue.batch_outranked(token=first, now=now, **args)
    assert queue.batch_outranked(token=second, now=now + timezone.timedelta(milliseconds=3), **args)


def test_at_the_same_instant_the_token_decides(engine_api, partner):
    _latency(partner, None)
    a, b = _ingest(engine_api, ticketNumber="a"), _ingest(engine_api, ticketNumber="b")
    now = timezone.now()
    low, high = sorted([uuid.uuid4(), uuid.uuid4()])
    _lease(a, low, now)
    _lease(b, high, now)
    outranked = {
        t: queue.batch_outranked(partner_id=partner.pk, known_slow=False, token=t, now=now)
        for t in (low, high)
    }
    assert sorted(outranked.values()) == [False, True]  # exactly one yields


def test_a_known_slow_partner_yields_to_another_slow_partners_earlier_batch(
    engine_api, tenant, partner, settings
):
    slow_b = _second_partner(tenant)
    _latency(partner, 8000.0)
    _latency(slow_b, 3000.0)
    event_id = engine_api.post(IN, incoming_body(ticketNumber="a")).json()["eventId"]
    deliveries = {d.partner_id: d for d in Delivery.objects.filter(event_id=event_id)}
    now = timezone.now()
    first, second = uuid.uuid4(), uuid.uuid4()
    _lease(deliveries[partner.pk], first, now)
    _lease(deliveries[slow_b.pk], second, now + timezone.timedelta(milliseconds=3))
    later = now + timezone.timedelta(milliseconds=3)
    assert queue.batch_outranked(partner_id=slow_b.pk, known_slow=True, token=second, now=later)
    # not when two slow batches are allowed, and an unproven partner is not counted in
    settings.PORTAL_SLOW_PARTNER_BATCHES = 2
    assert not queue.batch_outranked(partner_id=slow_b.pk, known_slow=True, token=second, now=later)
    settings.PORTAL_SLOW_PARTNER_BATCHES = 1
    assert not queue.batch_outranked(
        partner_id=slow_b.pk, known_slow=False, token=second, now=later
    )


def test_a_surplus_batch_gives_everything_back_unsent(engine_api, partner, gate):
    # given an unproven partner with a batch running (claimed just now, as if at once)
    _latency(partner, None)
    running, mine = _ingest(engine_api, ticketNumber="a"), _ingest(engine_api, ticketNumber="b")
    _lease(running, uuid.uuid4(), timezone.now() - timezone.timedelta(milliseconds=5))
    # when this batch's claim got its own delivery anyway (the race), it yields unsent
    Delivery.objects.filter(pk=mine.pk).update(next_attempt_at=timezone.now())
    real_claim = queue.deliveries_claim

    def racing_claim(**kwargs):  # the claim that did not see the other batch
        Delivery.objects.filter(pk=running.pk).update(status=Delivery.Status.PENDING)
        try:
            return real_claim(**kwargs)
        finally:
            Delivery.objects.filter(pk=running.pk).update(status=Delivery.Status.DELIVERING)

    import integrations.outbox.sender as sender_module

    original = sender_module.deliveries_claim
    sender_module.deliveries_claim = racing_claim
    try:
        outcome = sender.deliveries_send(delivery_ids=[mine.pk])
    finally:
        sender_module.deliveries_claim = original
    assert outcome == {mine.pk: "handed_back"}
    assert gate.order == []
    mine.refresh_from_db()
    assert mine.status == "pending" and mine.attempts == 0 and mine.lease_token is None
