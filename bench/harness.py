"""What every benchmark needs: throwaway servers, child processes, cleanup, small statistics.

A benchmark script does

    with Bench("ingest") as bench:
        env = bench.start_databases()      # PostgreSQL + Redis on free loopback ports
        bench.manage(env, "migrate", "--noinput")
        proc = bench.spawn("web", [...], env=env)
        ...

and whatever happens inside (an error, Ctrl-C, SIGTERM, SIGHUP) `__exit__` stops every
process it spawned (its whole process group), then Redis and PostgreSQL, then removes the
temporary directory. PostgreSQL and Redis are started by scripts/testenv.py's own functions
(imported, not copied): same binaries, same settings (fsync off), same `runuser -u postgres`
as root. Set BENCH_KEEP=1 to keep the temporary directory (server and process logs).

Only stdout carries the benchmark's JSON result; everything else goes to stderr.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
sys.path.insert(0, str(REPO / "scripts"))
import testenv  # noqa: E402  (scripts/ is not a package)

PYTHON = sys.executable
OWNER = "bench0000000000000000000000000001"
STOP_GRACE_S = 10.0


def log(message: str) -> None:
    """Progress line on stderr (stdout is reserved for the JSON result)."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


# testenv logs to stdout; ours must stay clean for the JSON result.
testenv.log = lambda message: print(f"testenv: {message}", file=sys.stderr, flush=True)


def free_port(taken: Sequence[int] = ()) -> int:
    """A loopback port nothing listens on and not in `taken`."""
    for _ in range(50):
        port = testenv.free_port()
        if port not in taken:
            return port
    raise RuntimeError("no free port found")


class Bench:
    """Owns everything one benchmark run starts; see the module docstring."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.servers = testenv.Servers(run_as=testenv.PG_USER if testenv.is_root() else "")
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.cleanups: list[Callable[[], None]] = []
        self.ports: list[int] = []
        self.versions: dict[str, str] = {}
        self.tmp: Path | None = None
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
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception as exc:  # keep tearing down the rest
                log(f"cleanup failed: {exc!r}")
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
        pg_port = free_port(self.ports)
        self.ports.append(pg_port)
        testenv.start_postgres(self.servers, pg_port)
        redis_port = free_port(self.ports)
        self.ports.append(redis_port)
        testenv.start_redis(self.servers, redis_server, redis_port)
        log(f"PostgreSQL on 127.0.0.1:{pg_port}, Redis on 127.0.0.1:{redis_port} ({self.tmp})")
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        env = dict(os.environ)
        env.update(
            DATABASE_URL=f"postgres://postgres@127.0.0.1:{pg_port}/postgres",
            REDIS_URL=redis_url,
            CELERY_BROKER_URL=redis_url,
            DEBUG="false",
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
        port = free_port(self.ports)
        self.ports.append(port)
        return port

    # --- processes ------------------------------------------------------------------------

    def spawn(
        self, name: str, cmd: list[str], *, env: dict[str, str], cwd: Path = REPO
    ) -> subprocess.Popen:
        """Start a long-running child in its own session, output to <tmp>/<name>.log."""
        assert self.tmp is not None, "start_databases() first"
        with open(self.tmp / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append((name, proc))
        log(f"started {name} (pid {proc.pid})")
        return proc

    def log_path(self, name: str) -> Path:
        assert self.tmp is not None
        return self.tmp / f"{name}.log"

    def log_tail(self, name: str, lines: int = 30) -> str:
        return testenv.tail(self.log_path(name), lines)

    def stop(self, proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM the child's process group, SIGKILL what is left after `grace` seconds."""
        if _signal_group(proc.pid, signal.SIGTERM) and not _wait_group(proc, grace):
            log(f"pid {proc.pid} still running after {grace:.0f}s; killing its group")
            _signal_group(proc.pid, signal.SIGKILL)
            _wait_group(proc, 5)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log(f"warning: pid {proc.pid} did not exit")

    def stop_named(self, name: str) -> None:
        for proc_name, proc in list(self.procs):
            if proc_name == name:
                self.stop(proc)
                self.procs.remove((proc_name, proc))

    def stop_all(self) -> None:
        for _name, proc in reversed(self.procs):
            self.stop(proc)
        self.procs.clear()

    def check_alive(self) -> None:
        """Raise if a spawned process died (with the tail of its log)."""
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    # --- CPU accounting -------------------------------------------------------------------

    def cpu_snapshot(self) -> dict[str, float]:
        """CPU seconds used so far by each component: every spawned process group by name,
        PostgreSQL (postmaster and its backends, ended ones included), Redis, and this process
        with its reaped children (wrk, baseline senders) as "client". Subtract two snapshots
        to get what a phase cost."""
        table = _proc_table()
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
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import django

    django.setup()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to one process group we started; False when it is gone already."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _wait_group(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait until no process of the child's group is left; True when none is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader so it does not keep its group "alive"
        if not _group_alive(proc.pid):
            return True
        time.sleep(0.05)
    return False


def _proc_table() -> dict[int, tuple[int, int, float, float]]:
    """pid -> (ppid, pgid, own CPU seconds, reaped children's CPU seconds), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # ended meanwhile
        fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
        ppid, pgid = int(fields[1]), int(fields[2])
        own = (int(fields[11]) + int(fields[12])) / ticks
        children = (int(fields[13]) + int(fields[14])) / ticks
        table[int(entry)] = (ppid, pgid, own, children)
    return table


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


# --- waiting ----------------------------------------------------------------------------------


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    check: Callable[[], None] | None = None,
) -> float:
    """Poll `predicate` until true (returns seconds waited); raise TimeoutError after timeout."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if check is not None:
            check()
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # loopback only
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


def http_json(url: str, *, method: str = "GET", timeout: float = 30) -> Any:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def tcp_listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def log_contains(path: Path, marker: str) -> bool:
    try:
        return marker in path.read_text(errors="replace")
    except OSError:
        return False


# --- common commands --------------------------------------------------------------------------


def gunicorn_cmd(
    app: str, port: int, *, workers: int, threads: int, pythonpath: str | None = None
) -> list[str]:
    cmd = [
        PYTHON,
        "-m",
        "gunicorn",
        app,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
    ]
    if pythonpath:  # relative to the repository root, where every child runs
        cmd += ["--pythonpath", pythonpath]
    return cmd


def celery_worker_cmd(concurrency: int, name: str = "bench") -> list[str]:
    return [
        PYTHON,
        "-m",
        "celery",
        "-A",
        "portal",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        str(concurrency),
        "--hostname",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def celery_beat_cmd(schedule: Path) -> list[str]:
    return [
        PYTHON,
        "-m",
        "celery",
        "-A",
        "portal",
        "beat",
        "--loglevel",
        "INFO",
        "--schedule",
        str(schedule),
    ]


def start_sink(bench: Bench, env: dict[str, str]) -> str:
    """Start bench/sink.py in its own process; return its base URL."""
    port = bench.port()
    bench.spawn("sink", [PYTHON, str(BENCH_DIR / "sink.py"), "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: http_ok(url + "/_stats"), timeout=30, what="the sink", check=bench.check_alive
    )
    return url


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
