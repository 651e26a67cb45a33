"""Run the four benchmarks and write docs/PERFORMANCE.md from their results.

    .venv/bin/python bench/run_all.py [--quick] [--only ingest --only latency] [--no-write]

`make bench` runs it at full size. Each benchmark is its own process (bench/ingest.py,
bench/delivery.py, bench/latency.py, bench/logscale.py) that starts and stops its own
servers; this script collects the one JSON object each prints, prints them together as one
JSON object, and rewrites docs/PERFORMANCE.md: the figures and ratios of this run, the
machine (with its load average before and after each benchmark), the exact commands, the
date. Text below the NOTES_MARKER line of the existing file is kept.

Exits 1 when a benchmark failed (the report then says which); goals are reported, never
asserted.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import harness

REPO = harness.REPO
REPORT = REPO / "docs" / "PERFORMANCE.md"
NOTES_MARKER = "<!-- Hand-written notes below this line are kept by bench/run_all.py. -->"

# name -> (arguments at full size, arguments with --quick)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "ingest": ([], ["--duration", "5", "--warmup", "2", "--rounds", "1"]),
    "delivery": ([], ["--count", "2000", "--tickets", "200"]),
    "latency": ([], ["--duration", "10", "--probe-seconds", "5"]),
    # Full size: 1,000,000 events, with its own 10,000-event baseline run for the ratios.
    "logscale": (
        [],
        ["--events", "20000", "--baseline-events", "2000", "--runs", "3", "--warmups", "1"],
    ),
}
CHILD_TIMEOUT_S = 3600
# logscale: a sequential scan of at least this many rows is named in the report.
BIG_SCAN_ROWS = 10_000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a minute or two)")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        help="run only this benchmark (repeatable)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not touch the report")
    return parser.parse_args()


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg has them."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def run_one(name: str, extra: list[str]) -> tuple[dict[str, Any] | None, float, str]:
    """Run bench/NAME.py; returns (its JSON or None, seconds, command line)."""
    cmd = [sys.executable, f"bench/{name}.py", *extra]
    line = harness.short_cmd(cmd)
    harness.log(f"running {line}")
    result, seconds = harness.run_json(cmd, timeout=CHILD_TIMEOUT_S)
    return result, seconds, line


# --- the report -------------------------------------------------------------------------------


def _goal(met: bool | None) -> str:
    return "n/a" if met is None else ("meets" if met else "below")


def _f(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        value = f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return f"{value}{unit}"


def rows_ingest(r: dict[str, Any]) -> list[str]:
    p, b = r["portal"], r["baseline"]
    return [
        "| ingest: `POST /api/v1/engine/incoming` (wrk, same gunicorn, same PostgreSQL) "
        f"| {_f(p['rps'])} req/s, p50 {_f(p['p50_ms'])} ms, p99 {_f(p['p99_ms'])} ms, "
        f"non-2xx {p['non2xx']} "
        f"| bare Django view, one INSERT: {_f(b['rps'])} req/s, p50 {_f(b['p50_ms'])} ms, "
        f"p99 {_f(b['p99_ms'])} ms "
        f"| **{r['ratio']}×** (rps) | ≥ 0.5× — {_goal(r['ratio'] >= 0.5)} |"
    ]


def rows_delivery(r: dict[str, Any]) -> list[str]:
    b, b_db = r["baseline"], r.get("baseline_db") or {}
    # Runs before the curl client existed sent (and measured) with requests only.
    client = r.get("client") or "requests"
    loop = "pycurl" if client == "curl" else "`requests.Session`"
    rows = []
    for p in r.get("by_batch") or [r["portal"]]:
        if "batch" not in p:
            how = "one message per delivery"
        elif p["message_size"] == 0:
            how = f"one wake per delivery, as ingest does; PORTAL_DELIVERY_BATCH={p['batch']}"
        else:
            how = f"messages of {p['message_size']}, PORTAL_DELIVERY_BATCH={p['batch']}"
        ratio = p.get("ratio", r["ratio"])
        rows.append(
            f"| delivery: {r['count']:,} queued deliveries drained by Celery "
            f"(concurrency {r['config']['concurrency']}; {how}) "
            f"| {_f(p['deliveries_per_s'])} deliveries/s; {p['succeeded']:,}/{r['count']:,} "
            f"succeeded, sink got {p['sink_requests']:,} "
            f"| bare {loop} loop, {r['config']['concurrency']} processes: "
            f"{_f(b['deliveries_per_s'])} /s"
            + (
                f"; with bare-SQL claim and record (baseline_db): "
                f"{_f(b_db['deliveries_per_s'])} /s, ratio {p.get('ratio_db')}×"
                if b_db.get("deliveries_per_s")
                else ""
            )
            + f" | **{ratio}×** | ≥ 0.7× — {_goal(ratio is not None and ratio >= 0.7)} |"
        )
    return rows


# Issue #16's reference: the latency bench's capacity before the issue (events/s).
CAPACITY_BEFORE = 157.0
PORTAL_PROCESSES = ("web", "worker", "beat", "postgres", "redis")


def summary(results: dict[str, Any]) -> list[str]:
    """The leading table: the four goals of issue #16 and the CPU per event by process."""
    ingest, delivery, latency = (results.get(n) or {} for n in ("ingest", "delivery", "latency"))
    live = next(
        (p for p in delivery.get("by_batch") or [] if p.get("message_size") == 0),
        None,
    )
    capacity = (latency.get("capacity") or {}).get("events_per_s")
    half = next((p for p in latency.get("phases") or [] if p["rate_label"] == "half"), None)
    cpu = (half or {}).get("portal", {}).get("cpu_ms_per_event") or {}
    portal_cpu = sum(cpu.get(n, 0.0) for n in PORTAL_PROCESSES) if cpu else None
    p99 = (half or {}).get("portal", {}).get("p99_ms")
    rows = [
        ("ingest / bare-insert view", ingest.get("ratio"), "≥ 0.5×", 0.5, True),
        (
            "delivery, live shape (wakes) / bare client loop",
            (live or {}).get("ratio"),
            "≥ 0.7×",
            0.7,
            True,
        ),
        (
            f"end-to-end capacity / {CAPACITY_BEFORE:.0f} events/s",
            capacity / CAPACITY_BEFORE if capacity else None,
            "≥ 3×",
            3.0,
            True,
        ),
        ("p99 at 50 % of capacity (ms)", p99, "< 100", 100.0, False),
        ("PostgreSQL CPU per event (ms)", cpu.get("postgres"), "≤ 1", 1.0, False),
        (
            "portal CPU per event (ms; web, worker, beat, PostgreSQL, Redis)",
            portal_cpu,
            "≤ 3",
            3.0,
            False,
        ),
    ]
    lines = ["| measure | this run | goal | met |", "|---|---|---|---|"]
    for name, value, goal, bound, higher in rows:
        met = None if value is None else (value >= bound if higher else value <= bound)
        lines.append(f"| {name} | {_f(value)} | {goal} | {_goal(met)} |")
    if cpu:
        by_process = ", ".join(
            f"{n} {_f(cpu[n])}" for n in (*PORTAL_PROCESSES, "client", "sink") if n in cpu
        )
        lines += ["", f"CPU ms per event at 50 % load, by process (idle included): {by_process}."]
    return lines


def rows_latency(r: dict[str, Any]) -> list[str]:
    rows = []
    capacity = (r.get("capacity") or {}).get("events_per_s")
    for phase in r["phases"]:
        p, b = phase["portal"], phase["bare"]
        load = phase["load_fraction_of_capacity"]
        load_text = f"{load * 100:.0f} % of capacity {_f(capacity)}/s" if load else "load n/a"
        is_half = phase["rate_label"] == "half"
        goal = (
            f"p99 < 100 ms — {_goal(p['p99_ms'] is not None and p['p99_ms'] < 100)}"
            if is_half
            else f"(goal is at 50 % load; this is {load_text.split(' of')[0]})"
        )
        rows.append(
            f"| end-to-end latency at {_f(phase['rate_per_s'])} events/s ({load_text}), "
            f"{p['duration_s']:.0f} s "
            f"| p50 {_f(p['p50_ms'])} ms, p95 {_f(p['p95_ms'])} ms, p99 {_f(p['p99_ms'])} ms; "
            f"sent {p['sent']}, received {p['received']}, lost {p['lost']} "
            f"| client → sink directly: p50 {_f(b['p50_ms'])} ms, p99 {_f(b['p99_ms'])} ms "
            f"| {_f(phase['ratio_p99'])}× (p99) | {goal} |"
        )
    return rows


def rows_logscale(r: dict[str, Any]) -> list[str]:
    """One summary line for the Results table; the pages are in their own section."""
    pages = r["pages"]
    goal = {n: p for n, p in pages.items() if p["goal_applies"]}
    met = sum(1 for p in goal.values() if p["goal_300ms"])
    slowest = max(goal.items(), key=lambda kv: kv[1]["median_ms"], default=None)
    ratios = [p["ratio_vs_baseline"] for p in goal.values() if "ratio_vs_baseline" in p]
    base = r.get("baseline") or {}
    summary = r["summary"]
    return [
        f"| log scale: admin lists, ticket timeline, history API with {r['events']:,} events "
        f"(server time, django.test.Client) "
        f"| {met}/{len(goal)} goal pages < 300 ms; slowest "
        + (f"`{slowest[0]}` {_f(slowest[1]['median_ms'])} ms" if slowest else "n/a")
        + f" | same pages at {base.get('events', 0):,} events "
        f"| {_f(min(ratios)) if ratios else 'n/a'}–{_f(max(ratios)) if ratios else 'n/a'}× "
        "(median, per page) "
        f"| median < 300 ms — {_goal(summary['goal_met'])}"
        + (
            f" (missed: {', '.join(summary['goal_missed_by'])})"
            if summary["goal_missed_by"]
            else ""
        )
        + (
            "; not served, so not judged: "
            + ", ".join(f"`{n}` HTTP {status}" for n, status in summary["not_200"].items())
            if summary["not_200"]
            else ""
        )
        + " |"
    ]


def _n(value: float | None) -> str:
    """A count or rate as a whole number with thousands separators."""
    return "n/a" if value is None else f"{round(value):,}"


def logscale_section(r: dict[str, Any]) -> list[str]:
    """Each page's median at full size and at the baseline size, the load, the prune."""
    base_events = (r.get("baseline") or {}).get("events")
    base_head = f"{base_events:,}" if base_events else "baseline"
    lines = [
        f"### Log scale ({r['events']:,} events)",
        "",
        f"`bench/logscale.py`: {r['events']:,} events (with their tickets, contacts, "
        "deliveries and attempts) loaded in bulk with SQL into PostgreSQL, then each page "
        f"requested {r['config']['runs']} times after {r['config']['warmups']} warm-up(s) "
        "in process through `django.test.Client` (middleware, view, template; no network): "
        "median server time. The baseline is the same script at "
        f"{base_head} events in a separate run with its own servers; ratio = median at "
        f"{r['events']:,} / median at {base_head}. Queries: SQL statements of one request. "
        "The goal (median < 300 ms) covers the admin lists, the ticket timeline and the "
        "history API; the dashboard and the event status API are reported without one.",
        "",
        f"| page / caller | median at {r['events']:,} | median at {base_head} | ratio | "
        "queries | slowest SQL | goal < 300 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, p in r["pages"].items():
        if p["status"] != 200:
            goal = f"HTTP {p['status']}"
        elif not p["goal_applies"]:
            goal = "— (no goal)"
        else:
            goal = "meets" if p["goal_300ms"] else "**below**"
        ratio = p.get("ratio_vs_baseline")
        lines.append(
            f"| `{name}` | {_f(p['median_ms'])} ms | "
            f"{_f(p.get('baseline_median_ms'))}{' ms' if p.get('baseline_median_ms') else ''} "
            f"| {_f(ratio)}{'×' if ratio is not None else ''} | {p['queries']} "
            f"| {_f(p['slowest_query_ms'])} ms | {goal} |"
        )
    load, data = r["load"], r["load"]["data"]
    rows = data["rows"]
    base = r.get("baseline") or {}
    lines += [
        "",
        f"- Load: {rows['event']:,} events, {rows['ticket']:,} tickets, "
        f"{rows['contact']:,} contacts, {rows['delivery']:,} deliveries, "
        f"{rows['deliveryattempt']:,} attempts in **{_f(load['seconds'])} s** (SQL inserts "
        f"{_f(load['insert_seconds'])} s, then VACUUM (ANALYZE) "
        f"{_f(load['vacuum_analyze_seconds'])} s)"
        + (
            f"; the {base['events']:,}-event baseline loaded in {_f(base['load_seconds'])} s"
            if base.get("load_seconds") is not None
            else ""
        )
        + ".",
    ]
    prune = r.get("prune")
    if prune:
        lines.append(
            f"- Retention (`events_prune`, {prune['retention_days']} days, batches of "
            f"{prune['batch']:,}): **{prune['deleted_events']:,} events deleted in "
            f"{_f(prune['seconds'])} s** ({_n(prune['events_per_s'])} events/s; with them "
            f"{prune['deleted_deliveries']:,} deliveries and {prune['deleted_attempts']:,} "
            f"attempts); {prune['kept_old_events']:,} older events kept because a delivery "
            "of theirs is not final."
        )
    else:
        lines.append("- Retention: not measured in this run.")
    big_scans = []
    for name, page in r["pages"].items():
        for scan in (page.get("plan") or {}).get("seq_scans", []):
            found = re.search(r"\(([\d,]+) rows\)", scan)
            if found and int(found.group(1).replace(",", "")) >= BIG_SCAN_ROWS:
                big_scans.append(f"`{name}` {scan}")
    lines.append(
        f"- Sequential scans of {BIG_SCAN_ROWS:,} rows or more in the plan of a page's "
        "slowest query (EXPLAIN ANALYZE): " + ("; ".join(big_scans) if big_scans else "none") + "."
    )
    return lines


def diagnostics(results: dict[str, Any]) -> list[str]:
    lines = ["| run | CPU ms per unit, by process | PostgreSQL sessions opened |", "|---|---|---|"]

    def cpu_text(cpu: dict[str, float]) -> str:
        parts = [f"{k} {v:.2f}" for k, v in cpu.items() if k != "total" and v >= 0.01]
        return f"total {cpu['total']:.2f}: " + ", ".join(parts)

    if "ingest" in results:
        for name in ("portal", "baseline"):
            last = results["ingest"][name]["rounds"][-1]
            lines.append(
                f"| ingest {name} (per request, last round) "
                f"| {cpu_text(last['cpu_ms_per_request'])} "
                f"| {last['postgres_sessions_opened']} |"
            )
    if "delivery" in results:
        d = results["delivery"]
        for p in d.get("by_batch") or [d["portal"]]:
            how = f"messages of {p['message_size']}, batch {p['batch']}; " if "batch" in p else ""
            lines.append(
                f"| delivery portal (per delivery; {how}tasks run {p['tasks_run']}, "
                f"deliveries found not claimable {p['tasks_not_claimed']}) "
                f"| {cpu_text(p['cpu_ms_per_delivery'])} "
                f"| {p['postgres_sessions_opened']} |"
            )
        lines.append(
            f"| delivery baseline (per delivery) "
            f"| {cpu_text(d['baseline']['before']['cpu_ms_per_delivery'])} | 0 |"
        )
        if (d.get("baseline_db") or {}).get("before"):
            lines.append(
                f"| delivery baseline_db (per delivery) "
                f"| {cpu_text(d['baseline_db']['before']['cpu_ms_per_delivery'])} | — |"
            )
    if "latency" in results:
        for phase in results["latency"]["phases"]:
            cpu = phase["portal"].get("cpu_ms_per_event")
            if cpu:
                lines.append(
                    f"| latency portal at {_f(phase['rate_per_s'])}/s (per event, "
                    f"idle time included) | {cpu_text(cpu)} | — |"
                )
    return lines


def machine_lines(results: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    any_result = next(iter(results.values()), None)
    machine = harness.machine_info()
    versions = (any_result or {}).get("versions", {})
    load = []
    if runs:
        load = [
            f"- Load average (1/5/15 min, /proc/loadavg) at the start of the run: "
            f"{runs[0]['load_before']}; at the end: {runs[-1]['load_after']}. Per benchmark "
            "(before → after): "
            + "; ".join(f"{r['name']} {r['load_before']} → {r['load_after']}" for r in runs)
            + ". The load average counts the benchmarks' own processes too (wrk, gunicorn, the "
            "worker, PostgreSQL): only the value before the first benchmark shows the machine "
            "without them."
        ]
    return [
        f"- CPUs (nproc): {machine['nproc']}; memory: {machine['memory_gib']} GiB; "
        f"CPU model: {machine['cpu_model']}; kernel {machine['kernel']}",
        f"- Python {machine['python']}; {versions.get('postgresql', 'PostgreSQL: n/a')}; "
        f"{versions.get('redis', 'Redis: n/a')}",
        "- PostgreSQL and Redis are throwaway servers started by scripts/testenv.py "
        "(PostgreSQL with fsync, synchronous_commit and full_page_writes off): the same "
        "servers for the portal and its baseline.",
        "- The machine is shared and noisy (other test suites may run at the same time): "
        "absolute numbers move between runs; the ratios, measured minutes apart in one run, "
        "move less.",
        *load,
    ]


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip()


def git_head() -> str:
    return _git("rev-parse", "--short", "HEAD") or "unknown"


def git_state() -> str:
    """The commit measured (taken when the run starts) and uncommitted changes outside bench/."""
    git = _git
    commit = git_head()
    dirty = [
        line
        for line in git("status", "--porcelain").splitlines()
        if not line[3:].startswith(("bench/", "docs/PERFORMANCE.md"))
    ]
    return f"commit `{commit}`" + (
        f" plus uncommitted changes in {len(dirty)} file(s) outside bench/" if dirty else ""
    )


def write_report(
    results: dict[str, Any], runs: list[dict[str, Any]], quick: bool, state: str | None = None
) -> None:
    """Rewrite REPORT; `state` is git_state() taken when the run started."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    state = state or git_state()
    table = [
        "| benchmark | portal | baseline | ratio | team goal (reported, not asserted) |",
        "|---|---|---|---|---|",
    ]
    for name, rows in (
        ("ingest", rows_ingest),
        ("delivery", rows_delivery),
        ("latency", rows_latency),
        ("logscale", rows_logscale),
    ):
        if name in results:
            table += rows(results[name])
    failed = [r["name"] for r in runs if not r["ok"]]
    commands = [
        f"- `{r['command']}` — {r['seconds']:.0f} s" + ("" if r["ok"] else " — **failed**")
        for r in runs
    ]
    detail_cmds = []
    for name, result in results.items():
        for role, line in result.get("commands", {}).items():
            detail_cmds.append(f"- {name} {role}: `{line}`")
        if (result.get("baseline") or {}).get("command"):  # logscale's own baseline run
            detail_cmds.append(f"- {name} baseline: `{result['baseline']['command']}`")
    notes = ""
    if REPORT.exists():
        old = REPORT.read_text()
        if NOTES_MARKER in old:
            notes = old.split(NOTES_MARKER, 1)[1].lstrip("\n")
    capacity = results.get("latency", {}).get("capacity") or {}
    text = "\n".join(
        [
            "# Performance",
            "",
            f"Last run: **{now}**, `{'make bench' if not quick else 'bench/run_all.py --quick'}`"
            f"{' (quick sizes)' if quick else ' (full size)'}, on {state}.",
            "Generated by `bench/run_all.py`; the numbers below are from that one run.",
            "",
            "Every figure is a ratio against a baseline measured in the same run, on the same "
            "machine, against the same PostgreSQL/Redis/sink: the machine is small and shared, so "
            "only ratios are comparable between runs.",
            "",
            *([f"**Failed in this run:** {', '.join(failed)}.", ""] if failed else []),
            "## Summary",
            "",
            *summary(results),
            "",
            "## Results",
            "",
            *table,
            "",
            *(
                [
                    'What "50 % load" means: the latency benchmark first measures the maximum '
                    "sustainable ingest+delivery throughput (closed-loop clients posting "
                    "back-to-back; accepted events / time until the sink received the last one)"
                    + (
                        f": **{_f(capacity.get('events_per_s'))} events/s** in this run"
                        if capacity
                        else ""
                    )
                    + "; `half` runs at 50 % of that. The fixed 50 events/s phase is "
                    "reported beside it with the load it represents.",
                    "",
                ]
                if "latency" in results
                else []
            ),
            *(logscale_section(results["logscale"]) + [""] if "logscale" in results else []),
            "### Diagnostics (where the time goes)",
            "",
            "CPU time per request/delivery/event of each process group, read from /proc around "
            "each measured run (client = wrk or the bench's own senders; postgres includes "
            "backends that ended), and PostgreSQL sessions opened during the run.",
            "",
            *diagnostics(results),
            "",
            "## Machine",
            "",
            *machine_lines(results, runs),
            "",
            "## Commands",
            "",
            "Run (each benchmark starts its own PostgreSQL, Redis, servers and sink on free "
            "loopback ports and removes them afterwards):",
            "",
            *commands,
            "",
            "What they ran (PORT: a free loopback port):",
            "",
            *detail_cmds,
            "",
            "Method and options of each benchmark: bench/README.md and the docstring at the top "
            "of each script.",
            "",
            "<details><summary>Full results (JSON)</summary>",
            "",
            "```json",
            json.dumps(results, indent=1),
            "```",
            "",
            "</details>",
            "",
            NOTES_MARKER,
            "",
            notes.rstrip() + "\n" if notes.strip() else "",
        ]
    )
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(text.rstrip() + "\n")
    harness.log(f"wrote {REPORT}")


def main() -> int:
    args = parse_args()
    names = args.only or list(BENCHMARKS)
    state, head = git_state(), git_head()
    results: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    for name in names:
        full, quick = BENCHMARKS[name]
        load_before = loadavg()
        harness.log(f"load average before {name}: {load_before}")
        result, seconds, line = run_one(name, quick if args.quick else full)
        runs.append(
            {
                "name": name,
                "command": line,
                "seconds": seconds,
                "ok": result is not None,
                "load_before": load_before,
                "load_after": loadavg(),
            }
        )
        if result is not None:
            results[name] = result
        harness.log(f"{name}: {seconds:.0f} s")
    if git_head() != head:
        state += f" (HEAD moved to `{git_head()}` during the run)"
    if not args.no_write:
        write_report(results, runs, args.quick, state)
    harness.emit({"runs": runs, "results": results})
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
