"""Crashes: worker processes SIGKILLed, Redis killed and restarted, Redis wiped, PostgreSQL
restarted under load. Real worker and beat processes, real Redis and PostgreSQL, a loopback
partner.

Promises (SPEC §3.4, §5): no accepted event is lost; a lost broker message or a killed worker
delays a delivery but never loses it; duplicates (the same webhook-id received twice) are rare
and only come from an attempt whose worker died before recording it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter, defaultdict

import pytest
import requests
from django.conf import settings
from standardwebhooks.webhooks import Webhook

from integrations.models import Delivery, DeliveryAttempt, Event, SigningSecret
from tests.conftest import incoming_body
from tests.reliability.conftest import (
    pg_durable_options,
    pg_hard_crash,
    pg_restart,
    redis_client,
    redis_kill,
    redis_start,
    sizes,
)
from tests.support.partner import ok
from tests.support.processes import pool_children, wait_for, wait_ready

IN = "/api/v1/engine/incoming"
CONCURRENCY = 2


def _all_final() -> bool:
    return not Delivery.objects.exclude(status__in=Delivery.FINAL_STATUSES).exists()


def _delivery_report(server, partner, expected: dict[str, list[str]]) -> dict:
    """Lost, duplicated, out-of-order and unverifiable deliveries, from the partner's side."""
    secret = SigningSecret.objects.get(partner=partner).secret
    receipts = server.on("/incoming")
    ids = Counter(r.webhook_id for r in receipts)
    events = set(Event.objects.values_list("id", flat=True))
    unverified = 0
    for receipt in receipts:
        try:
            Webhook(secret).verify(receipt.body, receipt.headers)
        except Exception:
            unverified += 1
    seen: dict[str, list[str]] = defaultdict(list)
    for receipt in receipts:
        body = receipt.json
        seen[body["ticketNumber"]].append(body["message"])
    out_of_order = sum(
        1 for t, messages in expected.items() if list(dict.fromkeys(seen[t])) != messages
    )
    return {
        "events": len(events),
        "receipts": len(receipts),
        "lost": len({str(e) for e in events} - set(ids)),
        "duplicates": sum(n - 1 for n in ids.values()),
        "out_of_order_tickets": out_of_order,
        "signatures_verified": len(receipts) - unverified,
        "signatures_failed": unverified,
    }


@pytest.mark.parametrize(
    "size",
    sizes(
        ci={"events": 45, "tickets": 12, "kills": 3, "pace": 0.02},
        full={"events": 4000, "tickets": 200, "kills": 8, "pace": 0.02},
        scaled=("events",),
    ),
)
def test_crash_killed_workers_and_redis_restart_lose_nothing(
    size, workers, engine_api, partner, fault_server, figures
):
    # given a partner answering in 50 ms, two workers and beat
    fault_server.routes["/incoming"] = ok(delay=0.05)
    partner.base_url = fault_server.url
    partner.save()
    live = {name: workers.start_worker(name, CONCURRENCY) for name in ("a0", "b0")}
    workers.start_beat()
    for name in live:
        wait_ready(workers, name)
    # when N events are ingested while workers are SIGKILLed several times (whole worker or
    # one pool process, alternately) and Redis is killed and started again once
    kill_at = {size.events * (k + 1) // (size.kills + 2): k for k in range(size.kills)}
    redis_down_at, redis_up_at = size.events // 2 + 1, size.events // 2 + 6
    expected: dict[str, list[str]] = defaultdict(list)
    killed_groups = killed_children = 0
    started = time.monotonic()
    redis_down_seconds = 0.0
    for i in range(size.events):
        ticket, text = f"T{i % size.tickets}", f"m{i}"
        response = engine_api.post(IN, incoming_body(ticketNumber=ticket, message=text))
        assert response.status_code == 202, response.content
        expected[ticket].append(text)
        if i in kill_at:
            k = kill_at[i]
            name = sorted(live)[k % 2]
            children = pool_children(live[name])
            if k % 2 == 0 or not children:
                workers.kill(live.pop(name))  # the whole worker: main process and pool
                new = f"{name[0]}{k + 1}"
                live[new] = workers.start_worker(new, CONCURRENCY)
                killed_groups += 1
            else:
                os.kill(children[0], signal.SIGKILL)  # one pool process (the OOM killer)
                killed_children += 1
        if i == redis_down_at:
            redis_kill()
            down_since = time.monotonic()
        if i == redis_up_at:
            redis_start()
            redis_down_seconds = time.monotonic() - down_since
        time.sleep(size.pace)
    ingest_seconds = time.monotonic() - started
    # then every delivery succeeds: nothing lost, per-ticket order kept, every signature valid
    wait_for(_all_final, 120 if not size.full else 900, "every delivery to be final", workers.logs)
    drain_seconds = time.monotonic() - started - ingest_seconds
    report = _delivery_report(fault_server, partner, expected)
    figures.record(
        size,
        "crash_workers_and_redis",
        **report,
        worker_kills=killed_groups,
        pool_process_kills=killed_children,
        redis_restarts=1,
        redis_down_seconds=round(redis_down_seconds, 1),
        duplicate_rate_percent=round(100 * report["duplicates"] / size.events, 3),
        ingest_seconds=round(ingest_seconds, 1),
        drain_seconds=round(drain_seconds, 1),
        attempts=DeliveryAttempt.objects.count(),
    )
    assert set(Delivery.objects.values_list("status", flat=True)) == {"succeeded"}
    assert report["events"] == size.events
    assert report["lost"] == 0
    assert report["out_of_order_tickets"] == 0
    assert report["signatures_failed"] == 0
    # a duplicate needs a request sent but not yet recorded when its process died: at most
    # one batch (PORTAL_DELIVERY_BATCH deliveries of a partner) per pool process killed
    batch = settings.PORTAL_DELIVERY_BATCH
    assert report["duplicates"] <= (killed_groups * CONCURRENCY + killed_children) * batch
    if size.full:
        assert report["duplicates"] / size.events <= 0.005


@pytest.mark.parametrize(
    "size",
    sizes(ci={"events": 24, "wipes": 2}, full={"events": 1000, "wipes": 10}, scaled=("events",)),
)
def test_crash_redis_wiped_mid_stream_database_recovers_everything(
    size, workers, engine_api, partner, fault_server, figures
):
    # given a partner, one worker and beat
    # (slow enough that messages wait in Redis, queued or unacknowledged, when it is wiped)
    fault_server.routes["/incoming"] = ok(delay=0.15)
    partner.base_url = fault_server.url
    partner.save()
    workers.start_worker("w", CONCURRENCY)
    workers.start_beat()
    wait_ready(workers, "w")
    # when events are ingested and Redis is wiped (FLUSHALL) several times meanwhile
    wipe_at = {size.events * (k + 1) // (size.wipes + 1) for k in range(size.wipes)}
    expected: dict[str, list[str]] = defaultdict(list)
    wiped_messages = 0
    started = time.monotonic()
    for i in range(size.events):
        ticket, text = f"T{i % 10}", f"m{i}"
        assert (
            engine_api.post(IN, incoming_body(ticketNumber=ticket, message=text)).status_code == 202
        )
        expected[ticket].append(text)
        if i in wipe_at:
            wiped_messages += redis_client().llen("celery") + redis_client().hlen("unacked")
            redis_client().flushall()
        time.sleep(0.02)
    # then the dispatcher finds every delivery in the database: nothing is lost
    wait_for(
        _all_final, 120 if not size.full else 600, "every delivery after the wipes", workers.logs
    )
    report = _delivery_report(fault_server, partner, expected)
    figures.record(
        size,
        "crash_redis_wiped",
        **report,
        wipes=size.wipes,
        queued_messages_wiped=wiped_messages,
        seconds=round(time.monotonic() - started, 1),
    )
    assert set(Delivery.objects.values_list("status", flat=True)) == {"succeeded"}
    assert report["lost"] == 0 and report["out_of_order_tickets"] == 0
    assert report["duplicates"] == 0  # no process died: a wipe alone never sends twice


def _post_stream(url: str, key: str, stop: threading.Event, results: list, limit: int) -> None:
    """Post incoming events one after another until `stop` (at most `limit`)."""
    for i in range(limit):
        if stop.is_set():
            return
        text = f"pg-{i}"
        body = incoming_body(ticketNumber=f"P{i % 5}", message=text)
        try:
            response = requests.post(
                f"{url}{IN}", json=body, timeout=15, headers={"Authorization": f"Bearer {key}"}
            )
            results.append((text, response.status_code, response.content))
        except requests.RequestException as exc:
            results.append((text, None, type(exc).__name__.encode()))
        time.sleep(0.01)


def _check_stream(results: list[tuple[str, int | None, bytes]], tenant) -> tuple[dict, list[str]]:
    """The figures of a stream of posts through a database outage, and which of its promises
    it broke: every 2xx stored, every failure the envelope (500/503) or a connection error,
    the last requests accepted again."""
    stored = set(Event.objects.filter(tenant=tenant).values_list("payload__message", flat=True))
    accepted = [t for t, status, _ in results if status is not None and 200 <= status < 300]
    failed = [(t, s, c) for t, s, c in results if s is None or s >= 300]
    not_envelope = [(t, s, c[:200]) for t, s, c in failed if s is not None and not _is_envelope(c)]
    broken = [
        problem
        for problem, ok in (
            ("no request succeeded at all", bool(accepted)),
            (f"2xx not stored: {sorted(set(accepted) - stored)[:10]}", set(accepted) <= stored),
            (f"not the envelope: {not_envelope[:3]}", not not_envelope),
            (
                "a failure other than 500/503",
                all(s is None or s in (500, 503) for _, s, _ in failed),
            ),
            ("not recovered", all(s is not None and s < 300 for _, s, _ in results[-5:])),
        )
        if not ok
    ]
    figures = {
        "requests": len(results),
        "answered_2xx": len(accepted),
        "lost_2xx": len(set(accepted) - stored),
        "refused_5xx": sum(1 for _, s, _ in failed if s is not None and s >= 500),
        "connection_errors": sum(1 for _, s, _ in failed if s is None),
        "stored_without_2xx": len(stored) - len(set(accepted) & stored),
    }
    return figures, broken


def _is_envelope(content: bytes) -> bool:
    import json

    try:
        doc = json.loads(content)
    except ValueError:
        return False
    return (
        isinstance(doc, dict)
        and doc.get("status") == "error"
        and {"code", "message", "errors"} <= set(doc)
    )


@pytest.mark.parametrize(
    "size",
    sizes(
        ci={"restarts": 1, "before": 1.0, "after": 1.5},
        full={"restarts": 5, "before": 3.0, "after": 5.0},
    ),
)
def test_crash_postgres_restart_every_2xx_is_stored(size, web, engine_api, tenant, figures):
    # given a real gunicorn receiving a stream of incoming events from a client thread
    stop = threading.Event()
    results: list[tuple[str, int | None, bytes]] = []
    client = threading.Thread(
        target=_post_stream, args=(web.url, engine_api.key, stop, results, 100_000), daemon=True
    )
    client.start()
    restart_seconds = []
    # when PostgreSQL is restarted (fast shutdown) while the stream goes on
    try:
        for _ in range(size.restarts):
            time.sleep(size.before)
            restart_seconds.append(pg_restart())
        time.sleep(size.after)
    finally:
        stop.set()
        client.join(30)
    # then every request answered 2xx is stored, and every failure is the envelope or a
    # connection error; the server recovered
    outcome, broken = _check_stream(results, tenant)
    figures.record(
        size,
        "crash_postgres_restart",
        **outcome,
        restarts=size.restarts,
        restart_seconds=[round(s, 1) for s in restart_seconds],
    )
    assert broken == []


@pytest.mark.parametrize(
    "size",
    sizes(
        ci={"crashes": 1, "before": 1.5, "after": 2.0},
        full={"crashes": 5, "before": 3.0, "after": 5.0},
    ),
)
def test_crash_postgres_killed_hard_with_fsync_every_2xx_is_stored(
    size, web, engine_api, tenant, figures
):
    # given PostgreSQL as production runs it (fsync and synchronous_commit on) and a real
    # gunicorn receiving a stream of incoming events
    pg_restart(pg_durable_options())
    stop = threading.Event()
    results: list[tuple[str, int | None, bytes]] = []
    client = threading.Thread(
        target=_post_stream, args=(web.url, engine_api.key, stop, results, 100_000), daemon=True
    )
    recovery_seconds = []
    try:
        client.start()
        # when the postmaster and every backend are killed at once (SIGKILL, no shutdown)
        for _ in range(size.crashes):
            time.sleep(size.before)
            recovery_seconds.append(pg_hard_crash(pg_durable_options()))
        time.sleep(size.after)
    finally:
        stop.set()
        client.join(30)
        pg_restart()  # back to testenv's fast settings for the tests after this one
    # then every request answered 2xx is stored, and every failure is the envelope or a
    # connection error; the server recovered
    outcome, broken = _check_stream(results, tenant)
    figures.record(
        size,
        "crash_postgres_sigkill_fsync_on",
        **outcome,
        crashes=size.crashes,
        recovery_seconds=[round(s, 1) for s in recovery_seconds],
    )
    assert broken == []
