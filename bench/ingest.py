"""Ingest throughput: POST /api/v1/engine/incoming against a bare Django insert view.

    .venv/bin/python bench/ingest.py [--duration 15] [--rounds 2] [--workers 2 --threads 4]

Starts its own PostgreSQL and Redis (scripts/testenv.py), migrates, creates a tenant with one
partner (its base URL a closed loopback port: no worker runs, so the deliveries just stay
pending and their queue messages wait in Redis) and an engine key with the management
commands, then serves

  portal    gunicorn portal.wsgi:application
  baseline  gunicorn baseline_app.wsgi:application (bench/baseline_app: one INSERT of the raw
            body through connection.cursor(), no middleware, no model)

with the same gunicorn workers and threads, on the same PostgreSQL, and loads each with the
same wrk command (bench/wrk_post.lua: valid SPEC §3.1 bodies, ticket numbers cycling over a
pool per wrk thread). Each round runs baseline then portal, each after a short warm-up.

Prints one JSON object: requests/s, p50 and p99 for both, ratio = portal_rps / baseline_rps
(median over rounds), non-2xx answers, and rows stored.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from typing import Any

import harness
from harness import OWNER, REPO, Bench, log, rnd

from tests.support.processes import gunicorn_cmd, http_ok, wait_for

LUA = "bench/wrk_post.lua"  # relative: wrk runs in the repository root
BASELINE_TABLE = "bench_baseline_event"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per run")
    parser.add_argument("--rounds", type=int, default=2, help="baseline+portal pairs")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (both apps)")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--tickets",
        type=int,
        default=500,
        help="ticket numbers per wrk thread (requests cycle over them)",
    )
    args = parser.parse_args()
    for name in (
        "duration",
        "warmup",
        "rounds",
        "workers",
        "threads",
        "wrk_threads",
        "connections",
        "tickets",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def wrk_cmd(args: argparse.Namespace, url: str, seconds: int) -> list[str]:
    return [
        "wrk",
        f"-t{args.wrk_threads}",
        f"-c{args.connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
    ]


def run_wrk(
    args: argparse.Namespace, url: str, seconds: int, *, auth: str, run: str
) -> dict[str, Any]:
    """One wrk run; returns the WRK_JSON figures plus requests/s."""
    env = dict(
        os.environ,
        BENCH_AUTH=auth,
        BENCH_OWNER=OWNER,
        BENCH_TICKETS=str(args.tickets),
        BENCH_RUN=run,
    )
    # Own session, so a terminal's Ctrl-C reaches us and we stop wrk ourselves.
    proc = subprocess.Popen(
        wrk_cmd(args, url, seconds),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=seconds + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    line = next((x for x in out.splitlines() if x.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{out}\n{err}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    seconds_run = data["duration_us"] / 1e6
    errors = data["errors"]
    return {
        "requests": data["requests"],
        "seconds": round(seconds_run, 2),
        "rps": round(data["requests"] / seconds_run, 1),
        "p50_ms": round(data["latency_us"]["p50"] / 1000, 2),
        "p90_ms": round(data["latency_us"]["p90"] / 1000, 2),
        "p99_ms": round(data["latency_us"]["p99"] / 1000, 2),
        "max_ms": round(data["latency_us"]["max"] / 1000, 2),
        "non2xx": data["non2xx"],
        "last_non2xx_status": data["last_non2xx_status"] or None,
        "socket_errors": errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of the rounds for the headline figures; every round kept."""
    return {
        "rps": rnd(statistics.median(r["rps"] for r in runs), 1),
        "p50_ms": rnd(statistics.median(r["p50_ms"] for r in runs)),
        "p99_ms": rnd(statistics.median(r["p99_ms"] for r in runs)),
        "requests": sum(r["requests"] for r in runs),
        "non2xx": sum(r["non2xx"] for r in runs),
        "socket_errors": sum(r["socket_errors"] for r in runs),
        "rounds": runs,
    }


def main() -> None:
    args = parse_args()
    try:  # before the servers start: apt-get the first time
        harness.testenv.ensure_wrk()
    except harness.testenv.SetupError as exc:
        raise SystemExit(f"bench: {exc}") from exc
    with Bench("ingest") as bench:
        env = bench.start_databases()
        closed_port = bench.port()  # nothing listens here; no worker runs anyway
        seeds = bench.setup_portal(env, partner_url=f"http://127.0.0.1:{closed_port}")
        harness.django_setup(env)
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(
                f"CREATE TABLE {BASELINE_TABLE} (id bigserial PRIMARY KEY, body bytea NOT NULL,"
                " received_at timestamptz NOT NULL)"
            )

        portal_port, baseline_port = bench.port(), bench.port()
        gunicorn = {"workers": args.workers, "threads": args.threads}
        portal_cmd = gunicorn_cmd("portal.wsgi:application", portal_port, **gunicorn)
        # --pythonpath is relative to the repository root, where every child runs.
        baseline_cmd = gunicorn_cmd(
            "baseline_app.wsgi:application",
            baseline_port,
            **gunicorn,
            extra=["--pythonpath", "bench"],
        )
        bench.start("portal-web", portal_cmd, env=env)
        baseline_env = {**env, "DJANGO_SETTINGS_MODULE": "baseline_app.settings"}
        bench.start("baseline-web", baseline_cmd, env=baseline_env)
        for port in (portal_port, baseline_port):
            url = f"http://127.0.0.1:{port}/healthz"
            wait_for(lambda u=url: http_ok(u), 60, f"gunicorn on {port}", check=bench.check_alive)

        targets = {
            "baseline": (f"http://127.0.0.1:{baseline_port}/ingest", ""),
            "portal": (
                f"http://127.0.0.1:{portal_port}/api/v1/engine/incoming",
                seeds["engine_key"],
            ),
        }
        runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "portal": []}
        for round_no in range(1, args.rounds + 1):
            for name, (url, auth) in targets.items():
                log(f"round {round_no}: {name} warm-up {args.warmup}s")
                run_wrk(args, url, args.warmup, auth=auth, run=f"w{round_no}")
                log(f"round {round_no}: {name} measured {args.duration}s")
                cpu_before, sessions_before = bench.cpu_snapshot(), harness.pg_sessions()
                result = run_wrk(args, url, args.duration, auth=auth, run=f"r{round_no}")
                # Diagnostics: CPU per request by component (client = wrk), new sessions.
                result["cpu_ms_per_request"] = harness.cpu_delta(
                    cpu_before, bench.cpu_snapshot(), result["requests"]
                )
                result["postgres_sessions_opened"] = harness.pg_sessions() - sessions_before
                log(
                    f"  {name}: {result['rps']} req/s, p50 {result['p50_ms']} ms, "
                    f"p99 {result['p99_ms']} ms, non-2xx {result['non2xx']}"
                )
                runs[name].append(result)
                bench.check_alive()

        time.sleep(1)  # let in-flight requests cut off by wrk finish before counting rows
        from integrations.models import Delivery, Event

        stored = {
            "portal_events": Event.objects.count(),
            "portal_deliveries": Delivery.objects.count(),
        }
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {BASELINE_TABLE}")  # noqa: S608
            stored["baseline_rows"] = cursor.fetchone()[0]
        connection.close()

        portal, baseline = summarize(runs["portal"]), summarize(runs["baseline"])
        per_round = [
            round(p["rps"] / b["rps"], 3)
            for p, b in zip(runs["portal"], runs["baseline"], strict=True)
        ]
        result = {
            "benchmark": "ingest",
            "endpoint": "POST /api/v1/engine/incoming",
            "ratio": round(portal["rps"] / baseline["rps"], 3),
            "ratio_definition": "portal_rps / baseline_rps (medians over rounds)",
            "ratio_per_round": per_round,
            "goal": "ratio >= 0.5 (reported, not asserted)",
            "portal": portal,
            "baseline": baseline,
            "stored": stored,
            "config": {
                "gunicorn_workers": args.workers,
                "gunicorn_threads": args.threads,
                "wrk_threads": args.wrk_threads,
                "connections": args.connections,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "rounds": args.rounds,
                "tickets_per_wrk_thread": args.tickets,
                "baseline_view": "bench/baseline_app: INSERT raw body via connection.cursor(),"
                " no middleware",
            },
            "commands": {
                "portal_server": harness.short_cmd(portal_cmd),
                "baseline_server": "DJANGO_SETTINGS_MODULE=baseline_app.settings "
                + harness.short_cmd(baseline_cmd),
                "load": harness.short_cmd(wrk_cmd(args, "URL", args.duration))
                + "  (BENCH_AUTH=<engine key> for the portal)",
            },
            "versions": bench.versions,
            "machine": harness.machine_info(),
            "seconds": round(bench.elapsed(), 1),
        }
    harness.emit(result)


if __name__ == "__main__":
    main()
