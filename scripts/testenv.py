"""Run the test suite against throwaway PostgreSQL and Redis servers.

Usage: python scripts/testenv.py [-- PYTEST_ARGS...]

What it does, in order:

1. install-check: finds the PostgreSQL server binaries (PG_BIN, else the newest
   /usr/lib/postgresql/*/bin, else `pg_config --bindir`) and `redis-server`; when one is
   missing and we are root, installs it with apt-get, otherwise exits saying what to install.
   Debian's Chromium (browser tests), PgBouncer (the test behind it) and Prometheus's promtool
   (the alert rules test) are installed the same way as root; without them, as a normal
   user, those tests skip and say so.
2. postgres: `initdb` + `pg_ctl start` in a new temporary directory, on a free loopback port.
   PostgreSQL refuses to run as root, so as root the directory belongs to the `postgres` user
   and the server commands run through `runuser -u postgres --`.
3. redis: `redis-server` on a free loopback port, no persistence, as our child process.
4. pytest: `sys.executable -m pytest PYTEST_ARGS` from the repository root, with DATABASE_URL,
   REDIS_URL, CELERY_BROKER_URL and the TEST_* variables below pointing at those servers.
5. teardown: stops both servers and removes the directory (always: finally + signal handlers).

Exits with pytest's exit code unchanged (5, "no tests collected", stays a failure), and prints
how long each part took. Set TESTENV_KEEP=1 to keep the temporary directory (server logs).

Variables exported to pytest for reliability tests that stop and restart the servers:
TEST_REDIS_SERVER_BIN, TEST_REDIS_PORT, TEST_PG_BIN, TEST_PG_DATA, TEST_PG_SOCKET_DIR,
TEST_PG_PORT, TEST_PG_RUN_AS ("postgres" when the server must run as that user, else "").

Pure standard library: it runs before anything else is known to work.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PG_USER = "postgres"  # the OS user the server runs as when we are root
STARTUP_TIMEOUT_S = 30.0


class SetupError(Exception):
    """A server could not be found or started; the message says what to do."""


@dataclass
class Servers:
    """What was started, so teardown knows what to stop."""

    tmp_dir: Path | None = None
    pg_bin: Path | None = None
    pg_data: Path | None = None
    pg_started: bool = False
    run_as: str = ""
    redis: subprocess.Popen | None = None
    redis_port: int | None = None
    pytest: subprocess.Popen | None = None
    timings: dict[str, float] = field(default_factory=dict)


def log(message: str) -> None:
    print(f"testenv: {message}", flush=True)


def is_root() -> bool:
    return os.geteuid() == 0


def as_server_user(cmd: list[str], run_as: str) -> list[str]:
    """Prefix cmd so it runs as the PostgreSQL OS user when we are root."""
    return ["runuser", "-u", run_as, "--", *cmd] if run_as else cmd


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it; a race is unlikely enough)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --- install-check ------------------------------------------------------------------------


def apt_install(package: str) -> None:
    """Install a Debian package quietly (root only).

    Debian's postinst scripts may try to start the system-wide service; the image's
    policy-rc.d usually forbids that, and if a service does start it listens on its default
    port, which we never use.
    """
    log(f"installing {package} with apt-get (first run on this machine)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    quiet = {"stdout": subprocess.DEVNULL, "env": env, "check": True}
    try:
        subprocess.run(["apt-get", "update", "-qq"], **quiet)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], **quiet)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SetupError(f"could not install {package} with apt-get: {exc}") from exc


def version_key(path: str) -> tuple[int, ...]:
    """Sort /usr/lib/postgresql/<version>/bin numerically (so 16 beats 9.6)."""
    version = Path(path).parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def find_pg_bin() -> Path | None:
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version_key)
    if candidates:
        return Path(candidates[-1])
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip())
    return None


def has_pg_server(pg_bin: Path | None) -> bool:
    return pg_bin is not None and all(
        (pg_bin / name).is_file() for name in ("initdb", "pg_ctl", "postgres")
    )


def ensure_binaries() -> tuple[Path, str]:
    """Return (PostgreSQL bin dir, redis-server path), installing them if root."""
    pg_bin = find_pg_bin()
    if not has_pg_server(pg_bin):
        if not is_root():
            raise SetupError(
                f"PostgreSQL server binaries (initdb, pg_ctl, postgres) not found"
                f"{f' in {pg_bin}' if pg_bin else ''}: install them "
                "(Debian/Ubuntu: sudo apt-get install postgresql) or set PG_BIN to their directory"
            )
        apt_install("postgresql")
        pg_bin = find_pg_bin()
        if not has_pg_server(pg_bin):
            raise SetupError(f"PostgreSQL installed but initdb/pg_ctl/postgres not in {pg_bin}")

    redis_server = shutil.which("redis-server")
    if redis_server is None:
        if not is_root():
            raise SetupError(
                "redis-server not found on PATH: install it "
                "(Debian/Ubuntu: sudo apt-get install redis-server)"
            )
        apt_install("redis-server")
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise SetupError("redis-server installed but still not on PATH")
    return pg_bin, redis_server


def install_unless_found(found: bool, package: str, missing: str) -> None:
    """A test's optional tool: nothing when `found`; else installed with apt as root, and as
    a normal user only said (`missing`: what is not found, and which tests skip)."""
    if found:
        return
    if not is_root():
        log(f"{missing} (Debian/Ubuntu: sudo apt-get install {package})")
        return
    apt_install(package)


CHROMIUM = "/usr/bin/chromium"


def ensure_chromium() -> None:
    """Debian's Chromium for the browser tests (Playwright drives it; no browser download)."""
    install_unless_found(
        Path(CHROMIUM).exists(), "chromium", f"{CHROMIUM} not found: browser tests will skip"
    )


def ensure_promtool() -> None:
    """Prometheus's promtool, which checks the alert rules and the scrape config
    (tests/test_deploy_signals.py). Debian ships it in `prometheus` (its service is not
    started here)."""
    install_unless_found(
        bool(shutil.which("promtool")),
        "prometheus",
        "promtool not found: the alert rules test will skip",
    )


def ensure_wrk() -> str:
    """wrk, the ingest benchmark's load generator (bench/ingest.py; not the tests): installed
    with apt when missing and we are root; otherwise exits saying what to install."""
    found = shutil.which("wrk")
    if found:
        return found
    if not is_root():
        raise SetupError("wrk not found (Debian/Ubuntu: sudo apt-get install wrk)")
    apt_install("wrk")
    found = shutil.which("wrk")
    if not found:
        raise SetupError("wrk is still not on PATH after apt-get install wrk")
    return found


PGBOUNCER = "/usr/sbin/pgbouncer"


def ensure_pgbouncer() -> None:
    """Debian's PgBouncer for the test that runs the portal behind it (transaction mode)."""
    install_unless_found(
        Path(PGBOUNCER).exists() or bool(shutil.which("pgbouncer")),
        "pgbouncer",
        "pgbouncer not found: the PgBouncer test will skip",
    )


def ensure_pg_user() -> None:
    """As root, PostgreSQL needs an unprivileged OS user to run as."""
    try:
        subprocess.run(["id", "-u", PG_USER], capture_output=True, check=True)
    except subprocess.CalledProcessError:
        log(f"creating system user {PG_USER!r} to run PostgreSQL as")
        subprocess.run(["useradd", "--system", "--no-create-home", PG_USER], check=True)


def version_of(binary: str) -> str:
    """First line of `binary --version`, e.g. "postgres (PostgreSQL) 15.18"."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True)
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else f"{binary}: no version"


# --- servers ------------------------------------------------------------------------------


def make_tmp_dir(servers: Servers) -> Path:
    # As root the directory must belong to the postgres user; /tmp is world-traversable,
    # whereas TMPDIR might point into /root, which postgres cannot enter.
    parent = "/tmp" if servers.run_as and os.path.isdir("/tmp") else None
    tmp_dir = Path(tempfile.mkdtemp(prefix="portal-testenv-", dir=parent))
    if servers.run_as:
        shutil.chown(tmp_dir, user=servers.run_as, group=None)
    servers.tmp_dir = tmp_dir
    return tmp_dir


def start_postgres(servers: Servers, port: int) -> None:
    assert servers.tmp_dir is not None and servers.pg_bin is not None
    data = servers.tmp_dir / "data"
    initdb = [
        str(servers.pg_bin / "initdb"),
        *("-D", str(data), "-A", "trust", "-U", "postgres"),
        # C locale + UTF8: works on any machine, whatever locales are generated.
        *("-E", "UTF8", "--locale=C", "--no-sync"),
    ]
    result = subprocess.run(as_server_user(initdb, servers.run_as), capture_output=True, text=True)
    if result.returncode != 0:
        raise SetupError(f"initdb failed:\n{result.stdout}{result.stderr}")
    servers.pg_data = data

    # A throwaway cluster needs no durability: fsync and friends off make tests faster.
    options = (
        f"-p {port} -k {servers.tmp_dir} -c listen_addresses=127.0.0.1"
        " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    # Extra server options for diagnostics (bench/latency.py --pg-statements sets them).
    if os.environ.get("TESTENV_PG_OPTIONS"):
        options += " " + os.environ["TESTENV_PG_OPTIONS"]
    log_file = servers.tmp_dir / "postgres.log"
    pg_ctl = [
        str(servers.pg_bin / "pg_ctl"),
        *("-D", str(data), "-o", options, "-l", str(log_file)),
        *("-w", "-t", str(int(STARTUP_TIMEOUT_S)), "start"),
    ]
    # pg_ctl returns once the server accepts connections (-w).
    servers.pg_started = True  # set first: a half-started server must still be stopped
    result = subprocess.run(as_server_user(pg_ctl, servers.run_as), capture_output=True, text=True)
    if result.returncode != 0:
        raise SetupError(f"PostgreSQL did not start:\n{result.stderr}\n{tail(log_file)}")


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(servers: Servers, redis_server: str, port: int) -> None:
    assert servers.tmp_dir is not None
    log_file = servers.tmp_dir / "redis.log"
    cmd = [
        redis_server,
        *("--port", str(port), "--bind", "127.0.0.1"),
        *("--save", "", "--appendonly", "no", "--daemonize", "no"),
    ]
    with open(log_file, "wb") as out:
        # Own session: a Ctrl-C in the terminal reaches pytest, not Redis, so Redis stays up
        # until pytest has finished and teardown stops it in order.
        servers.redis = subprocess.Popen(
            cmd,
            cwd=servers.tmp_dir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    servers.redis_port = port
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not redis_ping(port):
        if servers.redis.poll() is not None or time.monotonic() > deadline:
            raise SetupError(f"Redis did not start:\n{tail(log_file)}")
        time.sleep(0.05)


def stop_postgres(servers: Servers) -> None:
    if not (servers.pg_started and servers.pg_bin and servers.pg_data):
        return
    pg_ctl = str(servers.pg_bin / "pg_ctl")
    # pg_ctl finds the running postmaster through the data directory, so this also stops a
    # server that a reliability test restarted. "fast" aborts open sessions; "immediate"
    # is the fallback if that hangs.
    for mode in ("fast", "immediate"):
        cmd = [pg_ctl, "-D", str(servers.pg_data), "-m", mode, "-w", "-t", "20", "stop"]
        try:
            result = subprocess.run(
                as_server_user(cmd, servers.run_as), capture_output=True, text=True, timeout=30
            )
        except subprocess.TimeoutExpired:
            continue
        not_running = "Is server running?" in result.stderr
        if result.returncode == 0 or not_running:
            return
    log("warning: could not stop PostgreSQL; see " + str(servers.tmp_dir))


def stop_redis(servers: Servers) -> None:
    if servers.redis is not None and servers.redis.poll() is None:
        servers.redis.terminate()
        try:
            servers.redis.wait(timeout=10)
        except subprocess.TimeoutExpired:
            servers.redis.kill()
            servers.redis.wait()
    # A reliability test may have restarted Redis itself on the same port; stop that one too.
    if servers.redis_port is not None and redis_ping(servers.redis_port):
        try:
            with socket.create_connection(("127.0.0.1", servers.redis_port), timeout=2) as sock:
                sock.sendall(b"SHUTDOWN NOSAVE\r\n")
                sock.recv(64)
        except OSError:
            pass


def teardown(servers: Servers) -> None:
    stop_pytest(servers)
    stop_redis(servers)
    stop_postgres(servers)
    if servers.tmp_dir is not None:
        if os.environ.get("TESTENV_KEEP"):
            log(f"kept {servers.tmp_dir}")
        else:
            shutil.rmtree(servers.tmp_dir, ignore_errors=True)


# --- pytest -------------------------------------------------------------------------------


def pytest_env(servers: Servers, pg_port: int, redis_server: str) -> dict[str, str]:
    """The environment pytest sees: the caller's, pointed at our servers."""
    assert servers.tmp_dir and servers.pg_bin and servers.pg_data and servers.redis_port
    env = dict(os.environ)
    redis_url = f"redis://127.0.0.1:{servers.redis_port}/0"
    env.update(
        DATABASE_URL=f"postgres://postgres@127.0.0.1:{pg_port}/postgres",
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        # Tests run like production: DEBUG off, so SECRET_KEY is required.
        DEBUG="false",
        TEST_REDIS_SERVER_BIN=redis_server,
        TEST_REDIS_PORT=str(servers.redis_port),
        TEST_PG_BIN=str(servers.pg_bin),
        TEST_PG_DATA=str(servers.pg_data),
        TEST_PG_SOCKET_DIR=str(servers.tmp_dir),
        TEST_PG_PORT=str(pg_port),
        TEST_PG_RUN_AS=servers.run_as,
    )
    # Every test process (pytest, gunicorn, Celery) counts into one fresh metrics directory.
    metrics_dir = servers.tmp_dir / "metrics"
    metrics_dir.mkdir(exist_ok=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    env.setdefault("SECRET_KEY", "testenv-only-not-a-secret-" + "x" * 32)
    # Tests deliver to partners on loopback; production allowlists nothing private.
    env.setdefault("PORTAL_OUTBOUND_ALLOWLIST", "127.0.0.0/8,::1")
    return env


def stop_pytest(servers: Servers) -> None:
    proc = servers.pytest
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_pytest(servers: Servers, args: list[str], env: dict[str, str]) -> int:
    """Run pytest as a child in our process group and return its exit code.

    A Ctrl-C in the terminal reaches pytest directly (same process group), so pytest can
    print its summary; the signal handler only steps in when pytest does not stop by itself.
    """
    cmd = [sys.executable, "-m", "pytest", *args]
    servers.pytest = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env)
    returncode = servers.pytest.wait()
    # A pytest killed by a signal reports -N; the shell convention is 128 + N.
    return returncode if returncode >= 0 else 128 - returncode


def forward_if_running(proc: subprocess.Popen, signum: int) -> None:
    if proc.poll() is None:
        proc.send_signal(signum)


def install_signal_handlers(servers: Servers) -> None:
    """SIGINT/SIGTERM/SIGHUP: stop pytest (if running), then unwind through teardown."""
    received: list[int] = []

    def handle(signum: int, _frame: object) -> None:
        received.append(signum)
        proc = servers.pytest
        if proc is None or proc.poll() is not None:
            # Still setting up (or pytest already gone): unwind now; `finally` tears down.
            raise SystemExit(128 + signum)
        if len(received) > 1:
            proc.kill()  # asked twice: stop waiting for a clean pytest exit
        elif signum != signal.SIGINT:
            # SIGTERM/SIGHUP were sent to us only; pass them on.
            proc.send_signal(signum)
        else:
            # A terminal's SIGINT already reached pytest, which shares our process group, and
            # a second one would cut its clean shutdown short. Forward it only if pytest is
            # still running a moment later, i.e. the SIGINT was sent to us alone.
            timer = threading.Timer(3.0, forward_if_running, (proc, signum))
            timer.daemon = True
            timer.start()

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, handle)


# --- main ---------------------------------------------------------------------------------


def split_args(argv: list[str]) -> list[str]:
    """Everything after `--` goes to pytest (so does everything if there is no `--`)."""
    return argv[argv.index("--") + 1 :] if "--" in argv else argv


def timed(servers: Servers, name: str, started: float) -> None:
    servers.timings[name] = time.monotonic() - started


def main(argv: list[str]) -> int:
    pytest_args = split_args(argv)
    servers = Servers(run_as=PG_USER if is_root() else "")
    install_signal_handlers(servers)
    returncode = 1
    try:
        started = time.monotonic()
        pg_bin, redis_server = ensure_binaries()
        ensure_chromium()
        ensure_pgbouncer()
        ensure_promtool()
        if servers.run_as:
            ensure_pg_user()
        servers.pg_bin = pg_bin
        log(version_of(str(pg_bin / "postgres")))
        log(version_of(redis_server))
        timed(servers, "install-check", started)

        started = time.monotonic()
        make_tmp_dir(servers)
        pg_port = free_port()
        start_postgres(servers, pg_port)
        timed(servers, "postgres", started)

        started = time.monotonic()
        redis_port = free_port()
        while redis_port == pg_port:
            redis_port = free_port()
        start_redis(servers, redis_server, redis_port)
        timed(servers, "redis", started)

        log(f"PostgreSQL on 127.0.0.1:{pg_port}, Redis on 127.0.0.1:{redis_port}")
        started = time.monotonic()
        env = pytest_env(servers, pg_port, redis_server)
        returncode = run_pytest(servers, pytest_args, env)
        timed(servers, "pytest", started)
    except SetupError as exc:
        log(f"error: {exc}")
        returncode = 2
    except SystemExit as exc:  # raised by the signal handler during setup
        returncode = exc.code if isinstance(exc.code, int) else 1
    finally:
        # Signals during teardown must not interrupt it halfway and leave servers behind.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        started = time.monotonic()
        teardown(servers)
        timed(servers, "teardown", started)
        summary = ", ".join(f"{name} {secs:.1f}s" for name, secs in servers.timings.items())
        log(summary)
    return returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
