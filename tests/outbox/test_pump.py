"""Pumps (queue.wake, sender.deliveries_pump): an accepted event wakes its targets instead of
naming its deliveries in queue messages; one pump per target, flagged in the cache, claims
that target's due deliveries from the database until none may go, against a real loopback
partner and the real cache (Redis)."""

import threading
import uuid

import pytest
from celery import current_app
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from integrations.models import Delivery, Partner
from integrations.outbox import queue, sender
from tests.conftest import command_body
from tests.support.outbox import ingest
from tests.support.processes import free_port


@pytest.fixture
def sink(partner, partner_server_factory):
    server = partner_server_factory()
    partner.base_url = server.url
    partner.save()
    return server


def _flag_up(key: str) -> bool:
    return cache.get(f"portal:pump:{key}") is not None


def test_a_burst_of_events_queues_one_pump_and_it_sends_them_all(
    engine_api, partner, sink, request, django_capture_on_commit_callbacks
):
    key = f"partner:{partner.pk}"
    with django_capture_on_commit_callbacks(execute=True):
        batch = [ingest(engine_api, ticketNumber=f"t-{i}", message=f"m{i}") for i in range(5)]
    # five events, one queue message: the flag was up from the first
    assert request.node.queued_pumps == [key]
    assert _flag_up(key)
    results = sender.deliveries_pump(key=key)
    assert results == {d.pk: "succeeded" for d in batch}
    assert sorted(r.json["message"] for r in sink.received) == [f"m{i}" for i in range(5)]
    # done: the flag is down, so the next event queues a pump again
    assert not _flag_up(key)
    with django_capture_on_commit_callbacks(execute=True):
        later = ingest(engine_api, message="later")
    assert request.node.queued_pumps == [key, key]
    assert sender.deliveries_pump(key=key) == {later.pk: "succeeded"}


def test_an_event_committed_under_a_raised_flag_is_sent_by_the_running_pump(
    engine_api, partner, sink, request, django_capture_on_commit_callbacks
):
    # a pump is queued or running (flag up) when the event commits: its wake queues nothing
    key = f"partner:{partner.pk}"
    assert queue.pump_flag_take(key)
    with django_capture_on_commit_callbacks(execute=True):
        delivery = ingest(engine_api)
    assert request.node.queued_pumps == []
    # the pump finds it in the database all the same
    assert sender.deliveries_pump(key=key) == {delivery.pk: "succeeded"}
    assert not _flag_up(key)


def test_the_pump_keeps_the_ticket_order_and_sends_the_next_in_the_same_run(
    engine_api, partner, sink, django_capture_on_commit_callbacks
):
    first = ingest(engine_api, message="one")
    second = ingest(engine_api, message="two")
    with django_capture_on_commit_callbacks(execute=True):
        results = sender.deliveries_pump(key=f"partner:{partner.pk}")
    assert results == {first.pk: "succeeded", second.pk: "succeeded"}
    assert [r.json["message"] for r in sink.received] == ["one", "two"]


def test_a_paused_partners_pump_sends_nothing_and_ends(engine_api, partner, sink):
    delivery = ingest(engine_api)
    Partner.objects.filter(pk=partner.pk).update(state="paused")
    assert sender.deliveries_pump(key=f"partner:{partner.pk}") == {}
    assert sink.received == []
    assert Delivery.objects.get(pk=delivery.pk).status == "pending"


def test_a_failing_partners_pump_ends_after_the_failure(
    engine_api, partner, partner_server_factory
):
    server = partner_server_factory(lambda request, n: (503, b"busy", {}))
    partner.base_url = server.url
    partner.save()
    first = ingest(engine_api, ticketNumber="t-1")
    second = ingest(engine_api, ticketNumber="t-2")
    results = sender.deliveries_pump(key=f"partner:{partner.pk}")
    # one attempt (it failed); the partner's other delivery is not tried again and again
    assert len(server.received) == 1
    assert results[first.pk] == "retrying"
    assert results.get(second.pk) in (None, "handed_back")
    assert not _flag_up(f"partner:{partner.pk}")
    # but it is not left marked queued: the dispatcher takes it at once (one at a time now)
    assert Delivery.objects.get(pk=second.pk).dispatched_at is None
    assert queue.deliveries_due(now=timezone.now()) == [(second.pk, f"partner:{partner.pk}")]


def test_a_pump_past_its_slice_queues_itself_again(
    engine_api, partner, sink, request, monkeypatch, settings
):
    settings.PORTAL_DELIVERY_BATCH = 1
    settings.PORTAL_PUMPS_PER_TARGET = 1  # no helper: the full batch is not a backlog here
    monkeypatch.setattr(sender, "SLICE", 0.0)
    key = f"partner:{partner.pk}"
    queue.pump_flag_take(key)
    first = ingest(engine_api, ticketNumber="t-1")
    ingest(engine_api, ticketNumber="t-2")
    # one batch, then the slot goes back to the queue, the flag still up
    assert sender.deliveries_pump(key=key) == {first.pk: "succeeded"}
    assert request.node.queued_pumps == [key]
    assert _flag_up(key)


def test_the_engine_relay_has_a_pump_per_tenant(
    engine_api,
    partner_api,
    tenant,
    partner_server_factory,
    request,
    django_capture_on_commit_callbacks,
):
    engine = partner_server_factory()
    tenant.engine_base_url = engine.url
    tenant.engine_command_path = "/commands"
    tenant.save()
    ingest(engine_api)  # the ticket
    request.node.queued_pumps.clear()
    with django_capture_on_commit_callbacks(execute=True):
        answer = partner_api.post("/api/v1/command", command_body())
    assert answer.status_code == 200, answer.content
    key = f"engine:{tenant.pk}"
    assert request.node.queued_pumps == [key]
    relay = Delivery.objects.get(event_id=answer.json()["eventId"])
    assert sender.deliveries_pump(key=key) == {relay.pk: "succeeded"}
    assert [r.path for r in engine.received] == ["/commands"]


def test_a_cache_that_is_down_still_wakes_a_pump(
    engine_api, partner, request, settings, django_capture_on_commit_callbacks
):
    # a Redis cache nobody listens for (a closed loopback port)
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
        }
    }
    with django_capture_on_commit_callbacks(execute=True):
        ingest(engine_api, ticketNumber="t-1")
        ingest(engine_api, ticketNumber="t-2")
    # no flag to share: one pump per event, as many as needed rather than none
    assert request.node.queued_pumps == [f"partner:{partner.pk}"] * 2


def test_a_refused_publish_lowers_the_flag(engine_api, partner, monkeypatch):
    monkeypatch.setattr(queue, "publish", lambda task, *args: False)
    key = f"partner:{partner.pk}"
    queue.wake([key])
    # no pump will run: the next event must be able to try again
    assert not _flag_up(key)


def test_a_pump_that_finds_a_backlog_recruits_another_up_to_the_limit(
    engine_api, partner, sink, request, settings
):
    settings.PORTAL_DELIVERY_BATCH = 2
    settings.PORTAL_PUMPS_PER_TARGET = 2
    key = f"partner:{partner.pk}"
    queue.pump_flag_take(key)
    batch = [ingest(engine_api, ticketNumber=f"t-{i}") for i in range(5)]
    results = sender.deliveries_pump(key=key)
    assert results == {d.pk: "succeeded" for d in batch}
    # full batches: one helper was queued (slot 1); the limit of 2 allows no more
    assert request.node.queued_pumps == [key]
    assert cache.get(f"portal:pump:{key}#1") is not None
    # the helper finds nothing left and lowers its own flag
    assert sender.deliveries_pump(key=key, slot=1) == {}
    assert cache.get(f"portal:pump:{key}#1") is None


@pytest.mark.parametrize("latency", [None, 60_000.0], ids=["unproven", "slow"])
def test_a_pump_recruits_no_helper_for_a_partner_that_gets_one_batch_at_a_time(
    engine_api, partner, sink, request, settings, latency
):
    # given a partner not yet known to be fast (no answer yet, or slow answers) with a
    # backlog of full batches
    settings.PORTAL_DELIVERY_BATCH = 2
    settings.PORTAL_PUMPS_PER_TARGET = 2
    Partner.objects.filter(pk=partner.pk).update(latency_ms_avg=latency)
    key = f"partner:{partner.pk}"
    queue.pump_flag_take(key)
    batch = [ingest(engine_api, ticketNumber=f"t-{i}") for i in range(2)]
    # when its pump takes the one full batch
    results = sender.deliveries_pump(key=key)
    # then it sends it alone: a helper's batch would be handed back (fair share), and both
    # pumps could end with the backlog left to the dispatcher
    assert results == {d.pk: "succeeded" for d in batch}
    assert request.node.queued_pumps == []


def test_a_delayed_first_attempt_is_the_dispatchers_not_a_pumps(
    engine_api, partner, request, django_capture_on_commit_callbacks
):
    # given a partner whose schedule waits 30 s before the first attempt
    Partner.objects.filter(pk=partner.pk).update(retry_schedule="30,60")
    with django_capture_on_commit_callbacks(execute=True):
        delivery = ingest(engine_api)
    # then no pump is woken for it (none would look for it in time) and it is not marked
    # queued, so the dispatcher queues it as soon as it is due
    assert request.node.queued_pumps == []
    delivery.refresh_from_db()
    assert delivery.dispatched_at is None
    assert queue.deliveries_due(now=timezone.now()) == []
    later = timezone.now() + timezone.timedelta(seconds=31)
    assert queue.deliveries_due(now=later) == [(delivery.pk, f"partner:{partner.pk}")]


def test_a_pump_that_raises_lowers_its_flag(engine_api, partner, sink, monkeypatch):
    key = f"partner:{partner.pk}"
    queue.pump_flag_take(key)
    ingest(engine_api)

    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(sender, "_send_claimed", broken)
    with pytest.raises(RuntimeError):
        sender.deliveries_pump(key=key)
    # the next event queues a pump again instead of waiting for the flag to expire
    assert not _flag_up(key)


def test_what_a_pump_may_not_take_now_goes_to_the_dispatcher_at_once(
    engine_api, partner, sink, django_capture_on_commit_callbacks
):
    # given a failing partner with an attempt in flight (one at a time)
    key = f"partner:{partner.pk}"
    in_flight = ingest(engine_api, ticketNumber="t-1")
    Partner.objects.filter(pk=partner.pk).update(consecutive_failures=3)
    assert queue.deliveries_claim_due(key=key, limit=20, token=uuid.uuid4(), now=timezone.now())[0]
    # when a new event's pump finds nothing it may take
    with django_capture_on_commit_callbacks(execute=True):
        waiting = ingest(engine_api, ticketNumber="t-2")
    assert sender.deliveries_pump(key=key) == {}
    # then the new delivery is not left marked queued for PORTAL_REDISPATCH_AFTER: once the
    # attempt in flight is over, the dispatcher's next run queues it
    assert Delivery.objects.get(pk=waiting.pk).dispatched_at is None
    Delivery.objects.filter(pk=in_flight.pk).update(
        status="retrying", lease_token=None, lease_expires_at=None
    )
    assert queue.deliveries_due(now=timezone.now()) == [(waiting.pk, key)]


def test_a_pump_going_on_after_its_slice_renews_its_flag(
    engine_api, partner, sink, monkeypatch, settings
):
    settings.PORTAL_DELIVERY_BATCH = 1
    settings.PORTAL_PUMPS_PER_TARGET = 1
    monkeypatch.setattr(sender, "SLICE", 0.0)
    key = f"partner:{partner.pk}"
    cache.add(f"portal:pump:{key}", 1, 2)  # about to expire
    ingest(engine_api, ticketNumber="t-1")
    ingest(engine_api, ticketNumber="t-2")
    first = sender.deliveries_pump(key=key)
    assert list(first.values()) == ["succeeded"]
    # the chain goes on: its flag has WAKE_TTL seconds again, not the 2 left
    ttl = cache._cache.get_client().ttl(cache.make_and_validate_key(f"portal:pump:{key}"))
    assert ttl > 30


def test_a_flag_taken_on_redis_is_the_one_the_cache_api_sees(db):
    # the flag is set through one kept Redis client, not cache.add: the same key and value
    key = "partner:flag-check"
    assert queue.pump_flag_take(key) and not queue.pump_flag_take(key)
    assert cache.get(f"portal:pump:{key}") == 1
    if hasattr(cache, "_cache"):  # Redis: the flag expires after WAKE_TTL, as cache.add's would
        ttl = cache._cache.get_client().ttl(cache.make_and_validate_key(f"portal:pump:{key}"))
        assert 0 < ttl <= queue.WAKE_TTL
    queue.pump_flag_drop(key)
    assert cache.get(f"portal:pump:{key}") is None and queue.pump_flag_take(key)
    queue.pump_flag_drop(key)


# --- lingering on the bell ---------------------------------------------------------------------


def test_a_wake_under_a_raised_flag_rings_the_bell_once(db):
    key = "partner:bell-check"
    assert queue.pump_flag_take(key, ring=True)  # down: taken, nothing rung
    assert not queue.pump_bell_wait(key, 0.05)
    # up: three wakes ring it, and leave one ring for the pump, not three
    for _ in range(3):
        assert not queue.pump_flag_take(key, ring=True)
    assert queue.pump_bell_wait(key, 0.05)
    assert not queue.pump_bell_wait(key, 0.05)
    queue.pump_flag_drop(key)


def test_without_redis_there_is_no_bell_and_a_pump_does_not_linger(
    engine_api, partner, sink, settings, monkeypatch
):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    settings.PORTAL_PUMP_LINGER_MS = 60_000
    waited = []
    monkeypatch.setattr(sender, "pump_bell_wait", lambda *args: waited.append(args))
    delivery = ingest(engine_api)
    assert not queue.bells()
    assert sender.deliveries_pump(key=f"partner:{partner.pk}") == {delivery.pk: "succeeded"}
    assert waited == []


@pytest.mark.django_db(transaction=True)
def test_a_pump_with_nothing_left_lingers_and_takes_the_next_event_on_its_bell(
    engine_api, partner, sink, request, settings, monkeypatch
):
    settings.PORTAL_PUMP_LINGER_MS = 1500
    monkeypatch.setattr(sender, "tasks_waiting", lambda: False)  # no other task waits
    key = f"partner:{partner.pk}"
    first = ingest(engine_api, message="one")  # its wake queues the pump: the flag is up
    assert request.node.queued_pumps == [key]
    later: dict[str, object] = {}

    def accept_another():  # while the pump, with nothing left, waits on the bell
        try:
            later["delivery"] = ingest(engine_api, message="two")
        finally:
            connection.close()  # this thread's own connection

    threading.Timer(0.5, accept_another).start()
    results = sender.deliveries_pump(key=key)
    # the second event rang the bell: the running pump sent it; no second pump was queued
    second = later["delivery"]
    assert results == {first.pk: "succeeded", second.pk: "succeeded"}  # type: ignore[attr-defined]
    assert request.node.queued_pumps == [key]
    assert [r.json["message"] for r in sink.received] == ["one", "two"]
    # then, nothing more within the linger, it ended with its flag down
    assert not _flag_up(key)


def test_a_pump_does_not_linger_while_a_task_waits_for_a_worker_slot(
    engine_api, partner, sink, request, settings, monkeypatch, django_capture_on_commit_callbacks
):
    settings.PORTAL_PUMP_LINGER_MS = 60_000
    monkeypatch.setattr(sender, "tasks_waiting", lambda: True)
    waited: list[float] = []

    def quiet(key: str, timeout: float) -> bool:  # a step that went by with no ring
        waited.append(timeout)
        return False

    monkeypatch.setattr(sender, "pump_bell_wait", quiet)
    key = f"partner:{partner.pk}"
    with django_capture_on_commit_callbacks(execute=True):
        first = ingest(engine_api)
    # it ends after one idle step, its slot given back, its flag down: the next event
    # queues a pump
    assert sender.deliveries_pump(key=key) == {first.pk: "succeeded"}
    assert waited == [sender.LINGER_STEP]
    with django_capture_on_commit_callbacks(execute=True):
        ingest(engine_api)
    assert request.node.queued_pumps == [key, key]


def test_tasks_waiting_reads_the_brokers_queue():
    name, default = f"test-{uuid.uuid4().hex}", current_app.conf.task_default_queue
    current_app.conf.task_default_queue = name
    try:
        assert not queue.tasks_waiting()
        current_app.send_task("integrations.tasks.ping", args=["waiting"], queue=name)
        assert queue.tasks_waiting()
        with current_app.connection_for_write() as conn:
            conn.default_channel.queue_purge(name)
        assert not queue.tasks_waiting()
    finally:
        current_app.conf.task_default_queue = default


def test_a_broker_that_cannot_say_counts_as_a_task_waiting(monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("broker down")

    # do not linger then: a worker slot held for nothing is worse than a pump ending
    monkeypatch.setattr(current_app.pool, "acquire", unreachable)
    assert queue.tasks_waiting()


@pytest.mark.django_db(transaction=True)
def test_a_lingering_pump_takes_a_tickets_next_message_on_the_ring_of_its_recording(
    engine_api, partner, sink, settings, monkeypatch
):
    settings.PORTAL_PUMP_LINGER_MS = 3000
    monkeypatch.setattr(sender, "tasks_waiting", lambda: False)
    key = f"partner:{partner.pk}"
    first = ingest(engine_api, message="one")
    second = ingest(engine_api, message="two")  # the same ticket: held until the first is done
    # the second event's wake rang the bell (the flag was up): start without that ring
    cache._cache.get_client().delete(cache.make_and_validate_key(f"portal:bell:{key}"))
    waits: list[bool] = []
    real_wait = sender.pump_bell_wait

    def wait(target: str, timeout: float) -> bool:
        waits.append(real_wait(target, timeout))
        return waits[-1]

    monkeypatch.setattr(sender, "pump_bell_wait", wait)
    results = sender.deliveries_pump(key=key)
    assert results == {first.pk: "succeeded", second.pk: "succeeded"}
    assert [r.json["message"] for r in sink.received] == ["one", "two"]
    # recording the first made the second the ticket's next and rang the bell: the pump's
    # first wait after the first batch ended on that ring, not when its linger ran out
    assert waits[0] is True
    assert not _flag_up(key)


def test_sigterm_ends_a_linger_not_the_process(db, settings, monkeypatch):
    # a stop that signals the worker's whole group reaches a lingering pool process: it stops
    # waiting (its task then completes) instead of dying in the middle of the task
    import os
    import signal
    import time

    settings.PORTAL_PUMP_LINGER_MS = 30_000
    monkeypatch.setattr(sender, "tasks_waiting", lambda: False)
    monkeypatch.setattr(sender, "_stopping", False)  # and back to False after the test
    outside: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: outside.append(signum))
    try:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        started = time.monotonic()
        assert sender._lingered("partner:sigterm-check", started) is False
        assert time.monotonic() - started < 10  # not the whole linger (30 s)
        assert outside == []  # the linger took it
        os.kill(os.getpid(), signal.SIGTERM)  # and handed SIGTERM back afterwards
        assert outside == [signal.SIGTERM]
        # the process is stopping: no pump of it lingers again
        assert sender._stopping
        assert sender._lingered("partner:sigterm-check", time.monotonic()) is False
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_pump_in_a_stopping_process_claims_nothing_and_leaves_its_rows_to_the_dispatcher(
    engine_api, partner, sink, monkeypatch
):
    monkeypatch.setattr(sender, "_stopping", True)
    key = f"partner:{partner.pk}"
    delivery = ingest(engine_api)
    queue.pump_flag_take(key)
    assert sender.deliveries_pump(key=key) == {}
    assert sink.received == []
    assert not _flag_up(key)
    # not marked queued: the dispatcher (another worker) queues it at once
    assert queue.deliveries_due(now=timezone.now()) == [(delivery.pk, key)]


def test_a_short_claim_that_looked_at_a_full_window_claims_again_at_once(
    engine_api, partner, sink, settings, monkeypatch
):
    # a ticket's first message failed (retrying, later): its second is held back and sits
    # in every claim's window of the oldest new rows, so each claim takes one other row and
    # comes back short; the rows past the window must not wait for a linger to run out
    settings.PORTAL_DELIVERY_BATCH = 2
    settings.PORTAL_PUMP_LINGER_MS = 60_000
    head = ingest(engine_api, ticketNumber="t-1", message="head")
    Delivery.objects.filter(pk=head.pk).update(
        status="retrying", next_attempt_at=timezone.now() + timezone.timedelta(hours=1)
    )
    held = ingest(engine_api, ticketNumber="t-1", message="held")
    a = ingest(engine_api, ticketNumber="t-2", message="a")
    b = ingest(engine_api, ticketNumber="t-3", message="b")
    sent_before_each_wait: list[int] = []

    def wait(target: str, timeout: float) -> bool:
        sent_before_each_wait.append(len(sink.received))
        return False

    monkeypatch.setattr(sender, "pump_bell_wait", wait)
    monkeypatch.setattr(sender, "tasks_waiting", lambda: True)  # one idle step, then end
    results = sender.deliveries_pump(key=f"partner:{partner.pk}")
    assert results[a.pk] == results[b.pk] == "succeeded"
    assert held.pk not in results or results[held.pk] == "not_claimed"
    # both went out before the pump first waited on its bell
    assert sent_before_each_wait[0] == 2


def test_a_bell_that_cannot_be_waited_on_ends_the_linger_at_once(db, settings, monkeypatch):
    # a Redis cache nobody listens on (or one refusing the wait): no spinning for the linger
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
        }
    }
    settings.PORTAL_PUMP_LINGER_MS = 60_000
    monkeypatch.setattr(sender, "tasks_waiting", lambda: False)
    steps: list[bool | None] = []
    real_wait = sender.pump_bell_wait

    def wait(key: str, timeout: float) -> bool | None:
        steps.append(real_wait(key, timeout))
        return steps[-1]

    monkeypatch.setattr(sender, "pump_bell_wait", wait)
    assert sender._lingered("partner:no-bell", sender.time.monotonic()) is False
    assert steps == [None]
