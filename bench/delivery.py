"""Delivery throughput: real Celery workers draining queued deliveries against a bare loop.

    .venv/bin/python bench/delivery.py [--count 20000] [--tickets 2000] [--concurrency 4]
                                       [--runs 1:20,wake:20,20:20] [--embedded]

Starts its own PostgreSQL and Redis (scripts/testenv.py) and a sink (tests/support/partner.py,
its own process, answering {"status":"success"}), migrates, creates a tenant and a partner
whose base URL is the sink, then bulk-inserts COUNT incoming events with one pending delivery
each, spread round-robin over TICKETS tickets (so per-ticket ordering does not serialize the
run).

  baseline  CONCURRENCY processes, each a bare `requests.Session` loop, POST the same payload
            bodies (with a webhook-id header) to the same sink. Run before and after the
            portal; the mean of the two is the baseline.
  portal    once per run M:B of --runs, on COUNT fresh deliveries: the ids are queued in
            messages of M ids of one target (grouped as deliveries.enqueue does), then
            `celery -A portal worker --concurrency CONCURRENCY` with PORTAL_DELIVERY_BATCH=B
            drains them: claim, sign, POST, record. 1:1 is one task per delivery (before
            batches existed); 1:20 is how ingest queued an event for one partner until issue
            #16 (one message each; tasks top their batch up); wake:20 is how it does now (no
            message naming a delivery: one wake per event, queue.wake, and pumps claiming
            from the database); 20:20 is how the dispatcher queues a backlog.

--embedded runs the portal on the embedded default instead (what `make run` uses: SQLite in
the bench's var directory, the portalfs:// file-system broker): compare its ratio with a run
without it, in the same session, to see how far the embedded default's drain rate is from the
production setup's (PostgreSQL and Redis are started all the same, unused).

Throughput is measured the same way for both, at the sink: (requests - 1) / (last receipt -
first receipt). At the end it checks that all COUNT deliveries are `succeeded` and that the
sink got COUNT requests (both reported, not asserted).

Prints one JSON object; ratio = portal deliveries/s / baseline deliveries/s for the last run
(20:20 by default); by_batch has every run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from datetime import UTC, datetime
from typing import Any

import harness
from harness import OWNER, Bench, log, rnd


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000, help="deliveries to drain")
    parser.add_argument("--tickets", type=int, default=2000, help="distinct tickets")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=4,
        help="worker processes (celery --concurrency) and baseline processes",
    )
    parser.add_argument(
        "--runs",
        default="1:20,wake:20,20:20",
        help="comma-separated MESSAGE_SIZE:PORTAL_DELIVERY_BATCH pairs to run the portal with;"
        " MESSAGE_SIZE 'wake': no messages naming deliveries, one wake per delivery",
    )
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=60,
        help="give up when the sink sees no new request for this long",
    )
    parser.add_argument(
        "--embedded",
        action="store_true",
        help="the portal on SQLite and the file-system broker (the embedded default)",
    )
    args = parser.parse_args()
    try:
        args.runs = [
            (0 if m == "wake" else int(m), int(b))
            for m, b in (run.split(":") for run in args.runs.split(","))
        ]
    except ValueError:
        parser.error("--runs: comma-separated MESSAGE_SIZE:BATCH pairs, e.g. 1:20 or wake:20")
    if args.count < 2 or args.tickets < 1 or args.concurrency < 1:
        parser.error("--count >= 2, --tickets >= 1, --concurrency >= 1")
    return args


def create_deliveries(
    count: int, tickets: int, partner_id: int, prefix: str = "dlv"
) -> list[tuple[int, str, bytes]]:
    """Bulk-insert tickets, events and pending deliveries; returns (delivery id, webhook id,
    body) in delivery-id order. Event i belongs to ticket i % tickets."""
    from integrations.models import Delivery, Event, Partner, Tenant, Ticket
    from integrations.payloads import canonical_json

    tenant = Tenant.objects.get(owner=OWNER)
    partner = Partner.objects.get(pk=partner_id)
    now = datetime.now(UTC)
    created = datetime(2021, 4, 28, 8, 39, 37, 945000, tzinfo=UTC)  # 15:39:37.945 Jakarta
    tickets = min(tickets, count)
    ticket_rows = Ticket.objects.bulk_create(
        [
            Ticket(
                tenant=tenant,
                ticket_number=f"{prefix}-{t}",
                channel="whatsapp",
                account_id="628128778222",
                customer_name="Farhan Akbar",
                created_date=created,
                last_sequence=len(range(t, count, tickets)),
            )
            for t in range(tickets)
        ],
        batch_size=1000,
    )
    events = []
    for i in range(count):
        ticket = ticket_rows[i % tickets]
        payload = {
            "ticketNumber": ticket.ticket_number,
            "channel": "whatsapp",
            "accountId": "628128778222",
            "contactId": f"c-{ticket.ticket_number}",
            "messageType": "text",
            "message": f"Halo {i}",
            "mediaLink": "",
            "customerName": "Farhan Akbar",
            "createdDate": "2021-04-28T15:39:37.945",
            "owner": OWNER,
            "groupId": "",
            "language": "",
        }
        events.append(
            Event(
                tenant=tenant,
                kind=Event.Kind.INCOMING,
                source=Event.Source.ENGINE,
                ticket=ticket,
                ticket_number=ticket.ticket_number,
                sequence=i // tickets + 1,
                raw_body=canonical_json(payload),
                payload=payload,
                received_at=now,
            )
        )
    Event.objects.bulk_create(events, batch_size=2000)
    deliveries = Delivery.objects.bulk_create(
        [
            Delivery(
                event=e,
                tenant=tenant,
                ticket=e.ticket,
                partner=partner,
                target=f"partner:{partner.pk}",
                endpoint=Delivery.Endpoint.INCOMING,
                status=Delivery.Status.PENDING,
                next_attempt_at=now,
                dispatched_at=now,
            )
            for e in events
        ],
        batch_size=2000,
    )
    return [(d.pk, str(e.id), bytes(e.raw_body)) for d, e in zip(deliveries, events, strict=True)]


def _bare_sender(url: str, items: list[tuple[str, bytes]], barrier: Any, results: Any) -> None:
    """One baseline process: a bare requests.Session loop (runs in a spawned child)."""
    import requests

    session = requests.Session()
    session.headers["Content-Type"] = "application/json"
    failed = 0
    barrier.wait(timeout=60)
    for msg_id, body in items:
        response = session.post(url, data=body, headers={"webhook-id": msg_id}, timeout=10)
        if response.status_code != 200:
            failed += 1
    results.put(failed)


def sink_rate(stats: dict[str, Any]) -> float | None:
    if stats["count"] < 2 or not stats["last"] or stats["last"] <= stats["first"]:
        return None
    return (stats["count"] - 1) / (stats["last"] - stats["first"])


def run_baseline(
    bench: Bench, sink: str, items: list[tuple[str, bytes]], concurrency: int
) -> dict[str, Any]:
    harness.http_json(sink + "/_reset", method="POST")
    cpu_before = bench.cpu_snapshot()
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(concurrency + 1), ctx.Queue()
    procs = [
        ctx.Process(
            target=_bare_sender,
            daemon=True,
            args=(sink + "/incoming", items[n::concurrency], barrier, results),
        )
        for n in range(concurrency)
    ]
    try:
        for proc in procs:
            proc.start()
        barrier.wait(timeout=60)
        started = time.monotonic()
        failed = sum(results.get(timeout=600) for _ in procs)
        wall = time.monotonic() - started
        for proc in procs:
            proc.join(timeout=10)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
    stats = harness.http_json(sink + "/_stats")
    rate = sink_rate(stats)
    log(f"  baseline: {rate:.0f} deliveries/s ({stats['count']} requests, {failed} failed)")
    return {
        "deliveries_per_s": rnd(rate, 1),
        "wall_s": rnd(wall),
        "sink_requests": stats["count"],
        "failed": failed,
        "cpu_ms_per_delivery": harness.cpu_delta(cpu_before, bench.cpu_snapshot(), len(items)),
    }


def run_portal(
    bench: Bench,
    env: dict[str, str],
    sink: str,
    ids: list[int],
    args: argparse.Namespace,
    message_size: int,
    batch: int,
) -> tuple[dict[str, Any], list[str]]:
    from django.core.cache import cache

    from integrations.models import Delivery
    from integrations.outbox.queue import SEND_BATCH_TASK, batches_by_target, publish, wake

    target = Delivery.objects.get(pk=ids[0]).target
    harness.http_json(sink + "/_reset", method="POST")
    cache.clear()  # no pump flag of an earlier run
    started = time.monotonic()
    if message_size:
        messages = batches_by_target([(pk, target) for pk in ids], message_size)
        for message in messages:
            publish(SEND_BATCH_TASK, message)
    else:
        # what ingest does after each event's commit: wake the target (one queue message for
        # the first; the others find the pump's flag up)
        messages = []
        for _ in ids:
            wake([target])
    enqueue_s = time.monotonic() - started
    log(
        f"  queued {len(ids)} deliveries in {len(messages)} messages"
        f"{'' if message_size else ' (one wake each)'} in {enqueue_s:.1f}s; starting the worker"
    )

    cmd = harness.celery_worker_cmd(args.concurrency)
    postgres = not args.embedded
    if postgres:
        harness.wait_pg_quiet()  # the previous run's sessions are not this run's cost
    cpu_before, sessions_before = bench.cpu_snapshot(), harness.pg_sessions() if postgres else 0
    spawned, spawned_wall = time.monotonic(), time.time()
    worker = f"worker-m{message_size or 'wake'}-b{batch}"
    bench.start(worker, cmd, env={**env, "PORTAL_DELIVERY_BATCH": str(batch)})
    seen, last_change = 0, time.monotonic()
    while True:
        bench.check_alive()
        stats = harness.http_json(sink + "/_stats")
        if stats["unique"] >= len(ids):
            break
        if stats["count"] != seen:
            seen, last_change = stats["count"], time.monotonic()
        elif time.monotonic() - last_change > args.stall_timeout:
            log(f"  stalled at {seen} requests for {args.stall_timeout:.0f}s; giving up")
            break
        time.sleep(0.5)
    wall = time.monotonic() - spawned
    # The attempt is recorded right after the sink answers: give the last ones a moment.
    succeeded = 0
    for _ in range(100):
        succeeded = Delivery.objects.filter(pk__in=ids, status=Delivery.Status.SUCCEEDED).count()
        if succeeded >= len(ids):
            break
        time.sleep(0.1)
    statuses = _status_counts(ids)
    cpu = harness.cpu_delta(cpu_before, bench.cpu_snapshot(), len(ids))
    sessions = harness.pg_sessions() - sessions_before if postgres else None
    bench.stop_named(worker)
    tasks = _task_counts(bench, worker)
    stats = harness.http_json(sink + "/_stats")
    rate = sink_rate(stats)
    log(
        f"  portal: {rate or 0:.0f} deliveries/s, {succeeded}/{len(ids)} succeeded, "
        f"sink got {stats['count']}"
    )
    return {
        "message_size": message_size,
        "batch": batch,
        "messages": len(messages),
        "deliveries_per_s": rnd(rate, 1),
        "wall_s_from_worker_start": rnd(wall),
        # From spawning the worker to the sink's first request (imports, pool, connections).
        "worker_startup_s": rnd(stats["first"] - spawned_wall) if stats["first"] else None,
        "enqueue_s": rnd(enqueue_s),
        "succeeded": succeeded,
        "statuses": statuses,
        "sink_requests": stats["count"],
        "sink_unique_webhook_ids": stats["unique"],
        "sink_duplicates": stats["duplicates"],
        # Diagnostics: where the CPU went (worker includes its start-up) and how many
        # PostgreSQL sessions were opened while draining.
        "cpu_ms_per_delivery": cpu,
        "postgres_sessions_opened": sessions,
        # From the worker's INFO log: tasks run, and the deliveries a task found not
        # claimable (an older one of its ticket still open; it is queued again later).
        "tasks_run": tasks[0],
        "tasks_not_claimed": tasks[1],
    }, cmd


def _task_counts(bench: Bench, worker: str) -> tuple[int, int]:
    run = not_claimed = 0
    with open(bench.log_path(worker), errors="replace") as log_file:
        for line in log_file:
            if "integrations.tasks.delivery_" in line and " succeeded in " in line:
                run += 1
                not_claimed += line.count("'not_claimed'")
    return run, not_claimed


def _status_counts(ids: list[int]) -> dict[str, int]:
    from django.db.models import Count

    from integrations.models import Delivery

    rows = Delivery.objects.filter(pk__in=ids).values("status").annotate(n=Count("id"))
    return {row["status"]: row["n"] for row in rows}


def main() -> None:
    args = parse_args()
    with Bench("delivery") as bench:
        env = bench.start_databases()
        if args.embedded:
            # no database or broker URL: SQLite in PORTAL_VAR_DIR and portalfs://
            for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"):
                env.pop(name, None)
        sink = harness.start_sink(bench, env)
        seeds = bench.setup_portal(env, partner_url=sink)
        harness.django_setup(env)

        runs: list[dict[str, Any]] = []
        items: list[tuple[str, bytes]] = []
        before: dict[str, Any] = {}
        for n, (message_size, batch) in enumerate(args.runs):
            started = time.monotonic()
            rows = create_deliveries(
                args.count, args.tickets, int(seeds["partner_id"]), prefix=f"run{n}"
            )
            log(
                f"created {len(rows)} pending deliveries on {min(args.tickets, args.count)} "
                f"tickets in {time.monotonic() - started:.1f}s"
            )
            ids = [row[0] for row in rows]
            if not items:
                items = [(row[1], row[2]) for row in rows]
                log("baseline (before)")
                before = run_baseline(bench, sink, items, args.concurrency)
            shape = f"messages of {message_size}" if message_size else "wakes"
            log(f"portal, {shape}, PORTAL_DELIVERY_BATCH={batch}")
            portal, worker_cmd = run_portal(bench, env, sink, ids, args, message_size, batch)
            runs.append(portal)
        log("baseline (after)")
        after = run_baseline(bench, sink, items, args.concurrency)

        baseline_rate = statistics.mean([before["deliveries_per_s"], after["deliveries_per_s"]])
        for portal in runs:
            portal["ratio"] = rnd((portal["deliveries_per_s"] or 0) / baseline_rate, 3)
        portal = runs[-1]
        result = {
            "benchmark": "delivery",
            "ratio": portal["ratio"],
            "by_batch": runs,
            "ratio_definition": "portal deliveries/s / baseline deliveries/s (mean of the "
            "baseline runs before and after), both measured at the sink; for the last run "
            "(by_batch: every run)",
            "goal": "ratio >= 0.7 (reported, not asserted)",
            "count": args.count,
            "all_succeeded": portal["succeeded"] == args.count,
            "sink_got_count": portal["sink_requests"] == args.count,
            "portal": portal,
            "baseline": {
                "deliveries_per_s": rnd(baseline_rate, 1),
                "before": before,
                "after": after,
            },
            "config": {
                "setup": "embedded (SQLite, portalfs://)"
                if args.embedded
                else "production (PostgreSQL, Redis)",
                "count": args.count,
                "tickets": min(args.tickets, args.count),
                "concurrency": args.concurrency,
                "baseline": f"{args.concurrency} processes, one requests.Session "
                "each, same bodies, same sink",
            },
            "commands": {
                "worker": harness.short_cmd(worker_cmd),
                "sink": harness.short_cmd([*harness.SINK_CMD, "PORT"]),
            },
            "versions": bench.versions,
            "machine": harness.machine_info(),
            "seconds": round(bench.elapsed(), 1),
        }
    harness.emit(result)


if __name__ == "__main__":
    main()
