"""What every benchmark needs: throwaway servers, child processes, cleanup, small statistics.

A benchmark script does

    with Bench("ingest") as bench:
        env = bench.start_databases()      # PostgreSQL + Redis on free loopback ports
        bench.manage(env, "migrate", "--noinput")
        proc = bench.start("web", [...], env=env)
        ...

and whatever happens inside (an error, Ctrl-C, SIGTERM, SIGHUP) `__exit__` stops every
process it started (its whole process group), then Redis and PostgreSQL, then removes the
temporary directory. PostgreSQL and Redis are started by scripts/testenv.py's own functions
(imported, not copied): same binaries, same settings (fsync off), same `runuser -u postgres`
as root. Child processes, their logs and command lines are the tests' own
(tests/support/processes.py), and so is the sink (tests/support/partner.py). Set
BENCH_KEEP=1 to keep the temporary directory (server and process logs).

Only stdout carries the benchmark's JSON result; everything else goes to stderr.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# The repository (tests.support, the portal) and scripts/ (testenv.py, not a package).
sys.path[:0] = [str(REPO), str(REPO / "scripts")]
import testenv  # noqa: E402

from tests.support import processes  # noqa: E402
from tests.support.processes import PYTHON, Children, http_ok, wait_for  # noqa: E402

OWNER = "bench0000000000000000000000000001"


def log(message: str) -> None:
    """Progress line on stderr (stdout is reserved for the JSON result)."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


# testenv logs to stdout; ours must stay clean for the JSON result.
testenv.log = lambda message: print(f"testenv: {message}", file=sys.stderr, flush=True)


class Bench(Children):
    """Owns everything one benchmark run starts; see the module docstring. Its children's
    logs are <tmp>/<name>.log, tmp being the servers' temporary directory."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.servers = testenv.Servers(run_as=testenv.PG_USER if testenv.is_root() else "")
        self.ports: list[int] = []
        self.versions: dict[str, str] = {}
        self.started = time.monotonic()

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Bench:
        def on_signal(signum: int, _frame: object) -> None:
            raise SystemExit(128 + signum)

        # SIGINT raises KeyboardInterrupt even when we were started with it ignored (a
        # background job of a script); all three unwind through __exit__.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGHUP, on_signal)
        return self

    def __exit__(self, *exc_info: object) -> None:
        # A second Ctrl-C must not cut the teardown short and leave servers behind.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        started = time.monotonic()
        self.stop_all()
        if os.environ.get("BENCH_KEEP"):
            os.environ["TESTENV_KEEP"] = "1"
        testenv.teardown(self.servers)
        log(f"{self.name}: teardown {time.monotonic() - started:.1f}s, total {self.elapsed():.1f}s")
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # --- servers --------------------------------------------------------------------------

    def start_databases(self) -> dict[str, str]:
        """Start PostgreSQL and Redis; return the environment for portal processes."""
        pg_bin, redis_server = testenv.ensure_binaries()
        if self.servers.run_as:
            testenv.ensure_pg_user()
        self.servers.pg_bin = pg_bin
        self.versions = {
            "postgresql": testenv.version_of(str(pg_bin / "postgres")),
            "redis": testenv.version_of(redis_server),
        }
        self.tmp = testenv.make_tmp_dir(self.servers)
        pg_port, redis_port = self.port(), self.port()
        testenv.start_postgres(self.servers, pg_port)
        testenv.start_redis(self.servers, redis_server, redis_port)
        log(f"PostgreSQL on 127.0.0.1:{pg_port}, Redis on 127.0.0.1:{redis_port} ({self.tmp})")
        # testenv's environment for pytest: DATABASE_URL, REDIS_URL, CELERY_BROKER_URL and
        # DEBUG=false pointing at these servers (its TEST_* variables go unused here).
        env = testenv.pytest_env(self.servers, pg_port, redis_server)
        env.update(
            SECRET_KEY="bench-only-not-a-secret-" + "x" * 32,
            # BENCH_SETTINGS: a what-if settings module (e.g. one that imports portal.settings
            # and changes one value) to measure a proposed fix without editing the portal.
            DJANGO_SETTINGS_MODULE=os.environ.get("BENCH_SETTINGS") or "portal.settings",
            # Deliveries go to the loopback sink only.
            PORTAL_OUTBOUND_ALLOWLIST="127.0.0.0/8",
            PORTAL_VAR_DIR=str(self.tmp / "var"),
            PYTHONUNBUFFERED="1",
        )
        return env

    def port(self) -> int:
        """A free loopback port not handed out before in this run."""
        while (port := processes.free_port()) in self.ports:
            pass
        self.ports.append(port)
        return port

    def start(
        self, name: str, cmd: Sequence[str], *, env: dict[str, str], cwd: Path = REPO
    ) -> subprocess.Popen:
        """Start a long-running child in its own process group, output to <tmp>/<name>.log."""
        proc = super().start(name, cmd, env=env, cwd=cwd)
        log(f"started {name} (pid {proc.pid})")
        return proc

    # --- CPU accounting -------------------------------------------------------------------

    def cpu_snapshot(self) -> dict[str, float]:
        """CPU seconds used so far by each component: every child's process group by name,
        PostgreSQL (postmaster and its backends, ended ones included), Redis, and this process
        with its reaped children (wrk, baseline senders) as "client". Subtract two snapshots
        to get what a phase cost."""
        table = processes.proc_table()
        result: dict[str, float] = {}
        for name, proc in self.procs:
            members = [pid for pid, row in table.items() if row[1] == proc.pid]
            reaped = table.get(proc.pid, (0, 0, 0.0, 0.0))[3]
            result[name] = result.get(name, 0.0) + reaped + sum(table[p][2] for p in members)
        postmaster = _postmaster_pid(self.servers.pg_data)
        if postmaster in table:
            backends = [pid for pid, row in table.items() if row[0] == postmaster]
            result["postgres"] = (
                table[postmaster][2] + table[postmaster][3] + sum(table[p][2] for p in backends)
            )
        if self.servers.redis is not None and self.servers.redis.pid in table:
            result["redis"] = table[self.servers.redis.pid][2]
        times = os.times()
        result["client"] = sum(times[:4])
        return result

    # --- Django ---------------------------------------------------------------------------

    def manage(self, env: dict[str, str], *args: str) -> dict[str, Any]:
        """Run `manage.py ARGS`; return its JSON output ({} when it prints none)."""
        result = subprocess.run(
            [PYTHON, "manage.py", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stderr}")
        out = result.stdout.strip()
        if out.startswith("{"):
            return json.loads(out)
        return {}

    def setup_portal(self, env: dict[str, str], *, partner_url: str) -> dict[str, str]:
        """Migrate, then a tenant, one partner and an engine key via the management commands."""
        started = time.monotonic()
        self.manage(env, "migrate", "--noinput")
        self.manage(env, "create_tenant", "--owner", OWNER, "--name", "Bench")
        partner = self.manage(
            env,
            "create_partner",
            "--owner",
            OWNER,
            "--name",
            "Desk",
            "--base-url",
            partner_url,
            "--incoming-path",
            "/incoming",
            "--send-path",
            "/send",
        )
        engine = self.manage(env, "create_engine_key", "--owner", OWNER, "--name", "bench")
        log(f"migrated and seeded in {time.monotonic() - started:.1f}s")
        return {
            "owner": OWNER,
            "engine_key": engine["apiKey"],
            "partner_id": str(partner["partnerId"]),
            "partner_key": partner["apiKey"],
        }


def django_setup(env: dict[str, str]) -> None:
    """Use the portal's ORM in this process, on the bench database."""
    os.environ.update(env)
    import django

    django.setup()


def _postmaster_pid(pg_data: Path | None) -> int:
    try:
        return int((pg_data / "postmaster.pid").read_text().split()[0]) if pg_data else 0
    except (OSError, ValueError, IndexError):
        return 0


def cpu_delta(before: dict[str, float], after: dict[str, float], per: int) -> dict[str, Any]:
    """CPU milliseconds per unit of work (request, delivery) of each component, and total."""
    per = max(per, 1)
    out = {name: round((after[name] - before.get(name, 0.0)) * 1000 / per, 3) for name in after}
    out["total"] = round(sum(out.values()), 3)
    return out


def pg_sessions() -> int:
    """Sessions opened on the bench database so far (pg_stat_database, PostgreSQL >= 14)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def wait_pg_quiet(timeout: float = 15.0) -> None:
    """Wait until no other client session is connected to PostgreSQL.

    An ended backend's CPU reaches the postmaster's counters when it is reaped, so the
    sessions of a worker stopped just before would be charged to the next measured phase.
    """
    from django.db import connection

    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                " AND pid <> pg_backend_pid()"
            )
            if cursor.fetchone()[0] == 0:
                return
            time.sleep(0.2)


# --- the sink and the portal's processes ------------------------------------------------------

SINK_CMD = [PYTHON, "-m", "tests.support.partner", "--port"]


def start_sink(bench: Bench, env: dict[str, str]) -> str:
    """Start the fake partner as a sink in its own process; return its base URL."""
    port = bench.port()
    bench.start("sink", [*SINK_CMD, str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_ok(url + "/_stats"), 30, "the sink", check=bench.check_alive)
    return url


def http_json(url: str, *, method: str = "GET", timeout: float = 30) -> Any:
    """A sink control endpoint's JSON (`/_stats`, `/_receipts`, POST `/_reset`)."""
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def run_json(cmd: list[str], *, timeout: float = 3600) -> tuple[dict[str, Any] | None, float]:
    """Run a benchmark script to its end; returns (the one JSON object it printed, or None when
    it failed, and the seconds it took). A SIGTERM we get is passed on; after `timeout` it is
    sent one."""
    started = time.monotonic()
    # Same process group: a terminal's Ctrl-C reaches the child too, which then tears its
    # servers down; we only wait for that (never kill it mid-teardown).
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)

    def forward(signum: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except KeyboardInterrupt:
        proc.wait(timeout=120)
        raise
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        signal.signal(signal.SIGTERM, previous)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        log(f"{short_cmd(cmd)} failed with exit code {proc.returncode}")
        return None, seconds
    try:
        return json.loads(out), seconds
    except json.JSONDecodeError:
        log(f"{short_cmd(cmd)} printed no JSON object:\n{out[-2000:]}")
        return None, seconds


def celery_worker_cmd(concurrency: int) -> list[str]:
    return processes.celery_worker_cmd(concurrency, "bench", extra=["--without-heartbeat"])


def short_cmd(cmd: Sequence[str]) -> str:
    """A command line as a reader would type it: the venv's python as .venv/bin/python, the
    run's free ports as PORT."""
    parts = [".venv/bin/python" if part == PYTHON else str(part) for part in cmd]
    return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", " ".join(parts))


# --- statistics -------------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (pct in 0..100) of `values`; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def rnd(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def machine_info() -> dict[str, Any]:
    """nproc, memory, CPU model, Python: for the report."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "cpu_model": model or platform.processor() or "unknown",
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def emit(result: dict[str, Any]) -> None:
    """The one JSON object on stdout."""
    print(json.dumps(result, indent=2), flush=True)
