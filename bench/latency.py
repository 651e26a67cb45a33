"""End-to-end latency under steady load: engine POST -> portal -> worker -> partner receipt.

    .venv/bin/python bench/latency.py [--rates 50,half] [--duration 30]

Starts its own PostgreSQL and Redis (scripts/testenv.py), a sink (tests/support/partner.py, its
own process, recording the receipt time of every webhook-id), the portal web (gunicorn), one Celery
worker and beat, then:

1. capacity probe (--probe-seconds, default 10): CLIENTS closed-loop senders post incoming
   events as fast as the portal accepts them; capacity = accepted / (time from the first send
   to the sink's receipt of the last one). That is the maximum sustainable ingest+delivery
   throughput of this set-up on this machine; "50 % load" means half of it.
2. for each rate in --rates (events/s; `half` = 50 % of the measured capacity):
   bare    the same open-loop schedule and bodies posted straight to the sink (no portal);
   portal  POST /api/v1/engine/incoming at that rate for --duration seconds.
   Per event: latency = sink receipt time - client send time of the accepted POST (both
   time.time() on this machine). After the run it waits (bounded) until the sink has every
   accepted event; whatever is missing then is `lost`.

Prints one JSON object: p50/p95/p99 in ms, sent/accepted/received/lost for each phase,
ratio = p99_portal / p99_bare, and the load each rate represents.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import harness
import requests
from harness import OWNER, Bench, log, percentile, rnd

from tests.support.processes import celery_beat_cmd, gunicorn_cmd, http_ok, wait_for, wait_ready


@dataclass
class Sent:
    msg_id: str | None  # the webhook-id the sink will see (eventId for the portal)
    sent_at: float  # time.time() just before the POST
    post_ms: float
    status: int | None
    lag_ms: float = 0.0  # how late the send was against the open-loop schedule


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rates",
        default="50,half",
        help="comma-separated events/s; 'half' = 50%% of measured capacity",
    )
    parser.add_argument("--duration", type=float, default=30, help="seconds per phase")
    parser.add_argument(
        "--probe-seconds",
        type=float,
        default=10,
        help="capacity probe length (0: skip; then 'half' is not allowed)",
    )
    parser.add_argument("--probe-clients", type=int, default=8)
    parser.add_argument(
        "--pg-statements",
        type=int,
        default=0,
        help="diagnostic: load pg_stat_statements and report the N statements that took the "
        "most PostgreSQL time (planning + execution) during each portal phase",
    )
    parser.add_argument(
        "--senders", type=int, default=16, help="client threads of the open-loop sender"
    )
    parser.add_argument("--tickets", type=int, default=200, help="ticket pool per phase")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    parser.add_argument("--concurrency", type=int, default=4, help="celery worker concurrency")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=60,
        help="max seconds to wait for deliveries after sending stops",
    )
    args = parser.parse_args()
    rates = [r.strip() for r in args.rates.split(",") if r.strip()]
    for rate in rates:
        if rate != "half" and not (_is_number(rate) and float(rate) > 0):
            parser.error(f"bad rate {rate!r}")
    if "half" in rates and args.probe_seconds <= 0:
        parser.error("rate 'half' needs the capacity probe (--probe-seconds > 0)")
    if args.duration <= 0 or args.duration > 3600:
        parser.error("--duration must be in (0, 3600]")
    args.rate_list = rates
    return args


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def incoming_body(phase: str, i: int, tickets: int) -> bytes:
    ticket = f"lat-{phase}-{i % tickets}"
    return json.dumps(
        {
            "ticketNumber": ticket,
            "channel": "whatsapp",
            "accountId": "628128778222",
            "contactId": f"c-{ticket}",
            "messageType": "text",
            "message": f"Halo {i}",
            "mediaLink": "",
            "customerName": "Farhan Akbar",
            "createdDate": "2021-04-28T15:39:37.945",
            "owner": OWNER,
            "groupId": "",
            "language": "",
        }
    ).encode()


class Clients:
    """One requests.Session per client thread; builds the portal and the bare sender."""

    def __init__(self, portal_url: str, sink_url: str, engine_key: str, tickets: int) -> None:
        self.local = threading.local()
        self.portal_url = portal_url + "/api/v1/engine/incoming"
        self.sink_url = sink_url + "/incoming"
        self.auth = f"Bearer {engine_key}"
        self.tickets = tickets

    def session(self) -> requests.Session:
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
            session.trust_env = False
        return session

    def portal(self, i: int, phase: str) -> Sent:
        body = incoming_body(phase, i, self.tickets)
        headers = {"Content-Type": "application/json", "Authorization": self.auth}
        session = self.session()
        sent_at, started = time.time(), time.monotonic()
        try:
            response = session.post(self.portal_url, data=body, headers=headers, timeout=30)
        except requests.RequestException:
            return Sent(None, sent_at, (time.monotonic() - started) * 1000, None)
        post_ms = (time.monotonic() - started) * 1000
        msg_id = None
        if response.status_code == 202:
            msg_id = response.json().get("eventId")
        return Sent(msg_id, sent_at, post_ms, response.status_code)

    def bare(self, i: int, phase: str) -> Sent:
        body = incoming_body(phase, i, self.tickets)
        msg_id = str(uuid.uuid4())
        headers = {"Content-Type": "application/json", "webhook-id": msg_id}
        session = self.session()
        sent_at, started = time.time(), time.monotonic()
        try:
            response = session.post(self.sink_url, data=body, headers=headers, timeout=30)
        except requests.RequestException:
            return Sent(None, sent_at, (time.monotonic() - started) * 1000, None)
        post_ms = (time.monotonic() - started) * 1000
        return Sent(
            msg_id if response.status_code == 200 else None, sent_at, post_ms, response.status_code
        )


def open_loop(
    send: Callable[[int, str], Sent], phase: str, rate: float, duration: float, senders: int
) -> list[Sent]:
    """Send rate*duration events on a fixed schedule (not waiting for answers)."""
    count = max(1, round(rate * duration))

    def timed(i: int, due: float) -> Sent:
        lag = max(0.0, time.monotonic() - due)
        result = send(i, phase)
        result.lag_ms = lag * 1000
        return result

    futures = []
    start = time.monotonic() + 0.1
    with ThreadPoolExecutor(max_workers=senders) as pool:
        for i in range(count):
            due = start + i / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            futures.append(pool.submit(timed, i, due))
        return [f.result() for f in futures]


def closed_loop(
    send: Callable[[int, str], Sent], phase: str, clients: int, seconds: float
) -> list[Sent]:
    """CLIENTS threads each sending back-to-back for SECONDS."""
    stop_at = time.monotonic() + seconds
    counter = iter(range(10**9))
    lock = threading.Lock()

    def loop() -> list[Sent]:
        done = []
        while time.monotonic() < stop_at:
            with lock:
                i = next(counter)
            done.append(send(i, phase))
        return done

    with ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(loop) for _ in range(clients)]
        return [sent for f in futures for sent in f.result()]


def wait_for_sink(
    sink: str, expected: int, timeout: float, check: Callable[[], None]
) -> dict[str, Any]:
    """Wait until the sink holds `expected` distinct webhook ids, or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        check()
        stats = harness.http_json(sink + "/_stats")
        if stats["unique"] >= expected or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


def measure(sent: list[Sent], sink: str, duration: float, rate: float | None) -> dict[str, Any]:
    """Match sends to receipts; latency percentiles in ms."""
    data = harness.http_json(sink + "/_receipts")
    receipts: dict[str, float] = data["receipts"]
    accepted = [s for s in sent if s.msg_id]
    latencies = [(receipts[s.msg_id] - s.sent_at) * 1000 for s in accepted if s.msg_id in receipts]
    posts = [s.post_ms for s in sent]
    lags = [s.lag_ms for s in sent]
    statuses: dict[str, int] = {}
    for s in sent:
        if not s.msg_id:
            statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    return {
        "rate_per_s": rate,
        "duration_s": duration,
        "sent": len(sent),
        "accepted": len(accepted),
        "refused_or_failed": statuses,
        "received": len(latencies),
        "lost": len(accepted) - len(latencies),
        "sink_duplicates": data["duplicates"],
        "p50_ms": rnd(percentile(latencies, 50)),
        "p95_ms": rnd(percentile(latencies, 95)),
        "p99_ms": rnd(percentile(latencies, 99)),
        "max_ms": rnd(max(latencies, default=None)),
        "post_p50_ms": rnd(percentile(posts, 50)),
        "post_p99_ms": rnd(percentile(posts, 99)),
        "send_lag_p99_ms": rnd(percentile(lags, 99)),
        "send_lag_max_ms": rnd(max(lags, default=None)),
    }


def pg_statements(sql: str, env: dict[str, str]) -> list[tuple[Any, ...]]:
    """Run one diagnostic statement on the bench's PostgreSQL; its rows."""
    import psycopg

    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else []


def top_statements(env: dict[str, str], limit: int, events: int) -> list[dict[str, Any]]:
    """The statements that took the most PostgreSQL time since the last reset (planning
    plus execution), per event of the phase."""
    rows = pg_statements(
        "SELECT calls, total_plan_time, total_exec_time, left(regexp_replace(query, '\\s+',"
        " ' ', 'g'), 160) FROM pg_stat_statements"
        " ORDER BY total_plan_time + total_exec_time DESC LIMIT " + str(int(limit)),
        env,
    )
    return [
        {
            "calls_per_event": rnd(calls / max(events, 1), 2),
            "plan_ms_per_event": rnd(plan / max(events, 1), 3),
            "exec_ms_per_event": rnd(run / max(events, 1), 3),
            "query": query,
        }
        for calls, plan, run, query in rows
    ]


def main() -> None:
    args = parse_args()
    if args.pg_statements:
        # (added to what the caller set, such as a plan_cache_mode to compare)
        os.environ["TESTENV_PG_OPTIONS"] = (
            os.environ.get("TESTENV_PG_OPTIONS", "")
            + " -c shared_preload_libraries=pg_stat_statements"
            + " -c pg_stat_statements.track_planning=on"
        )
    with Bench("latency") as bench:
        env = bench.start_databases()
        if args.pg_statements:
            pg_statements("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", env)
        sink = harness.start_sink(bench, env)
        seeds = bench.setup_portal(env, partner_url=sink)
        web_port = bench.port()
        web_cmd = gunicorn_cmd(
            "portal.wsgi:application", web_port, workers=args.workers, threads=args.threads
        )
        worker_cmd = harness.celery_worker_cmd(args.concurrency)
        beat_cmd = celery_beat_cmd(bench.tmp / "beat-schedule")
        bench.start("web", web_cmd, env=env)
        bench.start("worker", worker_cmd, env=env)
        bench.start("beat", beat_cmd, env=env)
        portal = f"http://127.0.0.1:{web_port}"
        wait_for(
            lambda: http_ok(portal + "/healthz"), 60, "the portal web", check=bench.check_alive
        )
        wait_ready(bench, "worker", check=bench.check_alive)
        clients = Clients(portal, sink, seeds["engine_key"], args.tickets)

        log("warm-up: 40 events at 20/s")
        harness.http_json(sink + "/_reset", method="POST")
        warm = open_loop(clients.portal, "warm", 20, 2, args.senders)
        wait_for_sink(sink, sum(1 for s in warm if s.msg_id), args.drain_timeout, bench.check_alive)

        capacity: dict[str, Any] | None = None
        if args.probe_seconds > 0:
            log(
                f"capacity probe: {args.probe_clients} closed-loop clients for "
                f"{args.probe_seconds:.0f}s"
            )
            harness.http_json(sink + "/_reset", method="POST")
            probe_start = time.time()
            probe = closed_loop(clients.portal, "probe", args.probe_clients, args.probe_seconds)
            accepted = sum(1 for s in probe if s.msg_id)
            stats = wait_for_sink(sink, accepted, max(args.drain_timeout, 120), bench.check_alive)
            drained = (stats["last"] or probe_start) - probe_start
            capacity = {
                "events_per_s": rnd(stats["unique"] / drained, 1) if drained > 0 else None,
                "ingest_rps_during_probe": rnd(accepted / args.probe_seconds, 1),
                "accepted": accepted,
                "delivered": stats["unique"],
                "seconds_to_deliver_all": rnd(drained),
                "clients": args.probe_clients,
                "probe_s": args.probe_seconds,
                "definition": "accepted events / (last sink receipt - probe start), "
                "closed-loop clients posting back-to-back",
            }
            log(
                f"  capacity {capacity['events_per_s']} events/s (ingest "
                f"{capacity['ingest_rps_during_probe']}/s while probing)"
            )

        phases = []
        for label in args.rate_list:
            if label == "half":
                rate = round(capacity["events_per_s"] / 2, 1)
            else:
                rate = float(label)
            load = rnd(rate / capacity["events_per_s"], 2) if capacity else None
            phase: dict[str, Any] = {
                "rate_label": label,
                "rate_per_s": rate,
                "load_fraction_of_capacity": load,
            }
            for name, send in (("bare", clients.bare), ("portal", clients.portal)):
                log(f"{name} at {rate}/s for {args.duration:.0f}s (load {load})")
                harness.http_json(sink + "/_reset", method="POST")
                if args.pg_statements and name == "portal":
                    pg_statements("SELECT pg_stat_statements_reset()", env)
                cpu_before = bench.cpu_snapshot()
                sent = open_loop(send, f"{label}-{name}", rate, args.duration, args.senders)
                wait_for_sink(
                    sink, sum(1 for s in sent if s.msg_id), args.drain_timeout, bench.check_alive
                )
                phase[name] = measure(sent, sink, args.duration, rate)
                # Diagnostic: CPU per event by component over the phase (idle time included).
                phase[name]["cpu_ms_per_event"] = harness.cpu_delta(
                    cpu_before, bench.cpu_snapshot(), len(sent)
                )
                if args.pg_statements and name == "portal":
                    phase[name]["pg_statements"] = top_statements(
                        env, args.pg_statements, len(sent)
                    )
                log(
                    f"  p50 {phase[name]['p50_ms']} ms, p99 {phase[name]['p99_ms']} ms, "
                    f"lost {phase[name]['lost']}"
                )
            bare_p99, portal_p99 = phase["bare"]["p99_ms"], phase["portal"]["p99_ms"]
            phase["ratio_p99"] = rnd(portal_p99 / bare_p99, 1) if bare_p99 and portal_p99 else None
            phases.append(phase)

        headline = next((p for p in phases if p["rate_label"] == "half"), phases[0])
        result = {
            "benchmark": "latency",
            "ratio": headline["ratio_p99"],
            "ratio_definition": "p99_portal / p99_bare at the headline rate (the 'half' phase "
            "when run, else the first)",
            "goal": "portal p99 < 100 ms at 50 % load (reported, not asserted)",
            "headline": {
                "rate_per_s": headline["rate_per_s"],
                "load_fraction_of_capacity": headline["load_fraction_of_capacity"],
                "portal_p50_ms": headline["portal"]["p50_ms"],
                "portal_p95_ms": headline["portal"]["p95_ms"],
                "portal_p99_ms": headline["portal"]["p99_ms"],
                "bare_p99_ms": headline["bare"]["p99_ms"],
                "lost": headline["portal"]["lost"],
            },
            "capacity": capacity,
            "phases": phases,
            "config": {
                "gunicorn_workers": args.workers,
                "gunicorn_threads": args.threads,
                "worker_concurrency": args.concurrency,
                "beat": "default interval (PORTAL_DISPATCH_INTERVAL_MS=1000)",
                "senders": args.senders,
                "tickets": args.tickets,
                "duration_s": args.duration,
            },
            "commands": {
                "web": harness.short_cmd(web_cmd),
                "worker": harness.short_cmd(worker_cmd),
                "beat": harness.short_cmd(beat_cmd).replace(str(bench.tmp), "TMP"),
                "sink": harness.short_cmd([*harness.SINK_CMD, "PORT"]),
            },
            "versions": bench.versions,
            "machine": harness.machine_info(),
            "seconds": round(bench.elapsed(), 1),
        }
    harness.emit(result)


if __name__ == "__main__":
    main()
