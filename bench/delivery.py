"""Delivery throughput: real Celery workers draining queued deliveries against bare loops.

    .venv/bin/python bench/delivery.py [--count 20000] [--tickets 2000] [--concurrency 4]
                                       [--runs 1:20,wake:20,20:20] [--client curl|requests]
                                       [--db-batch 20] [--embedded]

Starts its own PostgreSQL and Redis (scripts/testenv.py) and a sink (tests/support/partner.py,
its own process, answering {"status":"success"}), migrates, creates a tenant and a partner
whose base URL is the sink, then bulk-inserts COUNT incoming events with one pending delivery
each, spread round-robin over TICKETS tickets (so per-ticket ordering does not serialize the
run), fresh ones for every portal run and every baseline_db run.

--client is the HTTP client of both sides: the portal's workers get it as
PORTAL_DELIVERY_CLIENT (curl, the portal's default, or requests), and the bare loops post
with the same library (curl: one reused pycurl handle per process; requests: one
requests.Session per process), so the ratios compare the portal with the client it uses.

  baseline     CONCURRENCY processes, each a bare client loop, POST the same payload bodies
               (with a webhook-id header) to the same sink. No database.
  baseline_db  the same bare loop doing the database work too, in bare SQL through psycopg
               on the portal's tables, over COUNT fresh pending deliveries of its own: each
               process claims --db-batch (20) at a time (UPDATE ... WHERE id IN (SELECT ...
               ORDER BY id LIMIT 20 FOR UPDATE SKIP LOCKED) RETURNING, with the event's raw
               body; one statement, autocommit), POSTs each, then in one statement inserts
               the attempt rows and sets each delivery's status per outcome (succeeded, or
               retrying): two round trips a batch. No per-ticket order, fair share, signing,
               SSRF guard, health counters or queue: what is left is the least any
               database-backed sender has to do. Its ratio to `baseline` at --db-batch 1 is
               the floor of events sent one by one (the live shape).
               Both baselines run before and after the portal; the mean of the two is used.
  portal       once per run M:B of --runs, on COUNT fresh deliveries: the ids are queued in
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
production setup's (PostgreSQL and Redis are started all the same, unused; baseline_db is not
run: the deliveries it needs would be in SQLite).

Throughput is measured the same way for all, at the sink: (requests - 1) / (last receipt -
first receipt). At the end it checks that all COUNT deliveries are `succeeded` and that the
sink got COUNT requests (both reported, not asserted).

Prints one JSON object; for the last run (20:20 by default): ratio = portal deliveries/s /
baseline deliveries/s, ratio_db = portal deliveries/s / baseline_db deliveries/s; by_batch
has both for every run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
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
        "--client",
        choices=("curl", "requests"),
        default=os.environ.get("PORTAL_DELIVERY_CLIENT") or "curl",
        help="HTTP client of the portal's workers (PORTAL_DELIVERY_CLIENT) and of the bare"
        " loops (default: PORTAL_DELIVERY_CLIENT, else curl)",
    )
    parser.add_argument(
        "--db-batch",
        type=int,
        default=20,
        help="deliveries baseline_db claims and records at a time (default 20, the portal's"
        " PORTAL_DELIVERY_BATCH default)",
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
    if args.count < 2 or args.tickets < 1 or args.concurrency < 1 or args.db_batch < 1:
        parser.error("--count >= 2, --tickets >= 1, --concurrency >= 1, --db-batch >= 1")
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


def _poster(client: str) -> Callable[[str, bytes, str], int]:
    """A bare POST with `client` over one kept-alive connection: (url, body, webhook id) ->
    HTTP status (0 when no answer)."""
    if client == "curl":
        import pycurl

        handle = pycurl.Curl()
        handle.setopt(pycurl.NOSIGNAL, 1)
        handle.setopt(pycurl.TIMEOUT, 10)
        handle.setopt(pycurl.WRITEFUNCTION, lambda data: None)

        def post_curl(url: str, body: bytes, msg_id: str) -> int:
            handle.setopt(pycurl.URL, url)
            handle.setopt(pycurl.POSTFIELDS, body)
            handle.setopt(
                pycurl.HTTPHEADER,
                ["Content-Type: application/json", f"webhook-id: {msg_id}", "Expect:"],
            )
            try:
                handle.perform()
            except pycurl.error:
                return 0
            return int(handle.getinfo(pycurl.RESPONSE_CODE))

        return post_curl
    import requests

    session = requests.Session()
    session.headers["Content-Type"] = "application/json"

    def post_requests(url: str, body: bytes, msg_id: str) -> int:
        try:
            response = session.post(url, data=body, headers={"webhook-id": msg_id}, timeout=10)
        except requests.RequestException:
            return 0
        return response.status_code

    return post_requests


def _bare_sender(
    url: str, client: str, items: list[tuple[str, bytes]], barrier: Any, results: Any
) -> None:
    """One baseline process: a bare client loop (runs in a spawned child)."""
    post = _poster(client)
    failed = 0
    barrier.wait(timeout=60)
    for msg_id, body in items:
        if post(url, body, msg_id) != 200:
            failed += 1
    results.put(failed)


_CLIENT_NAMES = {"curl": "pycurl handle", "requests": "requests.Session"}

# baseline_db's statements: bare SQL on the portal's tables (integrations/models/log.py).
_DB_CLAIM = """
    UPDATE integrations_delivery AS d
    SET status = 'delivering', lease_token = %(token)s,
        lease_expires_at = now() + interval '120 seconds',
        attempts = d.attempts + 1, updated_at = now()
    FROM integrations_event AS e
    WHERE e.id = d.event_id AND d.id IN (
        SELECT id FROM integrations_delivery
        WHERE partner_id = %(partner)s AND status = 'pending' AND id BETWEEN %(lo)s AND %(hi)s
        ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
    )
    RETURNING d.id, d.attempts, e.id, e.raw_body
"""
# The record, one statement for the whole batch (arrays, one element per delivery): the
# attempt rows and each delivery's new status.
_DB_RECORD = """
    WITH v AS (
        SELECT * FROM unnest(%(ids)s::bigint[], %(numbers)s::integer[], %(codes)s::integer[],
                             %(took)s::integer[], %(statuses)s::text[], %(errors)s::text[])
            AS v(id, number, code, took, status, error)
    ), attempts AS (
        INSERT INTO integrations_deliveryattempt
            (delivery_id, number, url, request_headers, response_status, response_headers,
             response_body, duration_ms, outcome, error_class, error_message, created_at)
        SELECT v.id, v.number, %(url)s, '{}', v.code, '{}', '', v.took,
               CASE WHEN v.status = 'succeeded' THEN 'success' ELSE 'retry' END, '', v.error,
               now()
        FROM v
    )
    UPDATE integrations_delivery AS d
    SET status = v.status, last_status_code = v.code, last_error = v.error,
        lease_token = NULL, lease_expires_at = NULL, updated_at = now(),
        delivered_at = CASE WHEN v.status = 'succeeded' THEN now() END,
        next_attempt_at = CASE WHEN v.status = 'retrying' THEN now() + interval '5 seconds' END
    FROM v WHERE d.id = v.id
"""


def _bare_db_sender(
    url: str,
    client: str,
    dsn: str,
    scope: tuple[int, int, int, int],
    barrier: Any,
    results: Any,
) -> None:
    """One baseline_db process: claim `limit` (--db-batch), POST each, record them (runs in a
    spawned child)."""
    import uuid

    import psycopg

    partner, lo, hi, limit = scope
    post = _poster(client)
    failed = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        barrier.wait(timeout=60)
        while True:
            rows = conn.execute(
                _DB_CLAIM,
                {"token": uuid.uuid4(), "partner": partner, "lo": lo, "hi": hi, "limit": limit},
            ).fetchall()
            if not rows:
                break
            done: dict[str, list[Any]] = {
                name: [] for name in ("ids", "numbers", "codes", "took", "statuses", "errors")
            }
            for delivery_id, number, event_id, body in rows:
                started = time.monotonic()
                status = post(url, bytes(body), str(event_id))
                ok = status == 200
                failed += not ok
                for name, value in (
                    ("ids", delivery_id),
                    ("numbers", number),
                    ("codes", status or None),
                    ("took", int((time.monotonic() - started) * 1000)),
                    ("statuses", "succeeded" if ok else "retrying"),
                    ("errors", "" if ok else f"HTTP {status}"),
                ):
                    done[name].append(value)
            conn.execute(_DB_RECORD, {**done, "url": url})
    results.put(failed)


def sink_rate(stats: dict[str, Any]) -> float | None:
    if stats["count"] < 2 or not stats["last"] or stats["last"] <= stats["first"]:
        return None
    return (stats["count"] - 1) / (stats["last"] - stats["first"])


def run_baseline(
    bench: Bench,
    sink: str,
    concurrency: int,
    client: str,
    items: list[tuple[str, bytes]] | None = None,
    db: tuple[str, int, list[int]] | None = None,
    db_batch: int = 20,
) -> dict[str, Any]:
    """One baseline run: the bare loop over `items`, or with `db` (dsn, partner id, fresh
    pending delivery ids) the bare loop that claims and records them too."""
    harness.http_json(sink + "/_reset", method="POST")
    cpu_before = bench.cpu_snapshot()
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(concurrency + 1), ctx.Queue()
    url = sink + "/incoming"
    if db is None:
        assert items is not None
        count = len(items)
        work = [(_bare_sender, (url, client, items[n::concurrency])) for n in range(concurrency)]
    else:
        dsn, partner_id, ids = db
        count = len(ids)
        scope = (partner_id, min(ids), max(ids), db_batch)
        work = [(_bare_db_sender, (url, client, dsn, scope)) for _ in range(concurrency)]
    procs = [
        ctx.Process(target=target, daemon=True, args=(*args, barrier, results))
        for target, args in work
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
    name = "baseline_db" if db else "baseline"
    log(f"  {name}: {rate or 0:.0f} deliveries/s ({stats['count']} requests, {failed} failed)")
    result = {
        "deliveries_per_s": rnd(rate, 1),
        "wall_s": rnd(wall),
        "sink_requests": stats["count"],
        "failed": failed,
        "cpu_ms_per_delivery": harness.cpu_delta(cpu_before, bench.cpu_snapshot(), count),
    }
    if db is not None:
        result["statuses"] = _status_counts(db[2])
    return result


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
        env["PORTAL_DELIVERY_CLIENT"] = args.client  # the workers' client (and the ORM's view)
        dsn = env["DATABASE_URL"]
        if args.embedded:
            # no database or broker URL: SQLite in PORTAL_VAR_DIR and portalfs://
            for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"):
                env.pop(name, None)
        sink = harness.start_sink(bench, env)
        seeds = bench.setup_portal(env, partner_url=sink)
        partner_id = int(seeds["partner_id"])
        harness.django_setup(env)

        def fresh(prefix: str) -> list[tuple[int, str, bytes]]:
            started = time.monotonic()
            rows = create_deliveries(args.count, args.tickets, partner_id, prefix=prefix)
            log(
                f"created {len(rows)} pending deliveries on {min(args.tickets, args.count)} "
                f"tickets in {time.monotonic() - started:.1f}s"
            )
            return rows

        def baselines(when: str, items: list[tuple[str, bytes]]) -> dict[str, Any]:
            log(f"baseline ({when}), {args.client}")
            bare = run_baseline(bench, sink, args.concurrency, args.client, items=items)
            if args.embedded:
                return {"bare": bare, "db": None}
            log(f"baseline_db ({when}), {args.client}")
            ids = [row[0] for row in fresh(f"bare-db-{when}")]
            db = (dsn, partner_id, ids)
            with_db = run_baseline(
                bench, sink, args.concurrency, args.client, db=db, db_batch=args.db_batch
            )
            return {"bare": bare, "db": with_db}

        runs: list[dict[str, Any]] = []
        items: list[tuple[str, bytes]] = []
        before: dict[str, Any] = {}
        for n, (message_size, batch) in enumerate(args.runs):
            rows = fresh(f"run{n}")
            ids = [row[0] for row in rows]
            if not items:
                items = [(row[1], row[2]) for row in rows]
                before = baselines("before", items)
            shape = f"messages of {message_size}" if message_size else "wakes"
            log(f"portal, {shape}, PORTAL_DELIVERY_BATCH={batch}, {args.client}")
            portal, worker_cmd = run_portal(bench, env, sink, ids, args, message_size, batch)
            runs.append(portal)
        after = baselines("after", items)

        def mean_rate(name: str) -> float | None:
            rates = [b[name]["deliveries_per_s"] for b in (before, after) if b[name]]
            return statistics.mean(rates) if rates and all(rates) else None

        baseline_rate, baseline_db_rate = mean_rate("bare"), mean_rate("db")
        for portal in runs:
            rate = portal["deliveries_per_s"] or 0
            portal["ratio"] = rnd(rate / baseline_rate, 3) if baseline_rate else None
            portal["ratio_db"] = rnd(rate / baseline_db_rate, 3) if baseline_db_rate else None
        portal = runs[-1]
        result = {
            "benchmark": "delivery",
            "ratio": portal["ratio"],
            "ratio_db": portal["ratio_db"],
            "client": args.client,
            "by_batch": runs,
            "ratio_definition": "portal deliveries/s / baseline deliveries/s (the bare client "
            "loop, mean of the runs before and after), both measured at the sink; for the last "
            "run (by_batch: every run)",
            "ratio_db_definition": "portal deliveries/s / baseline_db deliveries/s (the bare "
            "client loop that also claims and records through bare SQL, mean of the runs "
            "before and after), both measured at the sink; for the last run",
            "goal": "ratio >= 0.7 (reported, not asserted)",
            "count": args.count,
            "all_succeeded": portal["succeeded"] == args.count,
            "sink_got_count": portal["sink_requests"] == args.count,
            "portal": portal,
            "baseline": {
                "deliveries_per_s": rnd(baseline_rate, 1),
                "before": before["bare"],
                "after": after["bare"],
            },
            "baseline_db": {
                "deliveries_per_s": rnd(baseline_db_rate, 1),
                "before": before["db"],
                "after": after["db"],
            },
            "config": {
                "setup": "embedded (SQLite, portalfs://)"
                if args.embedded
                else "production (PostgreSQL, Redis)",
                "count": args.count,
                "tickets": min(args.tickets, args.count),
                "concurrency": args.concurrency,
                "client": args.client,
                "baseline": f"{args.concurrency} processes, one {_CLIENT_NAMES[args.client]} "
                "each, same bodies, same sink",
                "baseline_db": f"{args.concurrency} processes, the same loop claiming "
                f"{args.db_batch} deliveries at a time and recording them with bare SQL (psycopg)",
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
