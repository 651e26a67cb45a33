"""Reliability and security suite (issue #8): shared sizes, figures, servers and chaos.

Every test runs in two sizes: `ci` (part of `make test`, seconds) and `full` (marked `soak`,
run by `make soak`). `RELIABILITY_SCALE` (default 1) multiplies the full sizes.

Figures: tests call `figures.record(...)`; at the end of the session they are printed and
written to var/reliability/figures-<size>.json (docs/RELIABILITY.md quotes the full run).

Servers: real Celery workers and beat (`Workers` from the e2e harness), a real gunicorn on
the test database (`web_server`), the fake partner with no routes yet (`fault_server`: tests
give paths their misbehaviour, tests/support/partner.py), and helpers that kill and restart
Redis and PostgreSQL (the TEST_* variables exported by scripts/testenv.py). Process groups,
pool children and their memory: tests/support/processes.py.
Only loopback receives traffic: an autouse guard refuses any other connect from this process.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from django.db import connection, connections

from tests.e2e.conftest import Workers, _database_url
from tests.support.partner import PartnerServer
from tests.support.processes import REPO, Children, free_port, gunicorn_cmd, http_ok, wait_for

FULL_SCALE = float(os.environ.get("RELIABILITY_SCALE") or "1")
FIGURES_DIR = REPO / "var" / "reliability"


# --- sizes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    """The knobs of one test at one size; `name` is "ci" or "full"."""

    name: str
    values: dict[str, Any]

    def __getattr__(self, item: str) -> Any:
        try:
            return self.values[item]
        except KeyError:
            raise AttributeError(item) from None

    @property
    def full(self) -> bool:
        return self.name == "full"


def sizes(ci: dict[str, Any], full: dict[str, Any], scaled: tuple[str, ...] = ()) -> list:
    """Parameters for `@pytest.mark.parametrize("size", ...)`: a ci size and a soak-marked
    full size whose `scaled` knobs are multiplied by RELIABILITY_SCALE."""
    full = {k: (max(1, int(v * FULL_SCALE)) if k in scaled else v) for k, v in full.items()}
    return [
        pytest.param(Size("ci", ci), id="ci"),
        pytest.param(Size("full", full), id="full", marks=pytest.mark.soak),
    ]


# --- figures -------------------------------------------------------------------------------


@dataclass
class Figures:
    rows: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def record(self, size: Size, test: str, **values: Any) -> None:
        """Keep `values` under (size, test) and print them (visible with -s)."""
        self.rows.setdefault(size.name, {}).setdefault(test, {}).update(values)
        print(f"FIGURES {size.name} {test}: {json.dumps(values, default=str)}")


_FIGURES = Figures()


@pytest.fixture(scope="session")
def figures() -> Figures:
    return _FIGURES


def pytest_sessionfinish(session, exitstatus) -> None:
    if not _FIGURES.rows:
        return
    FIGURES_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for size, tests in _FIGURES.rows.items():
        path = FIGURES_DIR / f"figures-{size}.json"
        document = {
            "finished_at": stamp,
            "exit_status": int(exitstatus),
            "scale": FULL_SCALE if size == "full" else None,
            "tests": tests,
        }
        path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def pytest_terminal_summary(terminalreporter) -> None:
    if not _FIGURES.rows:
        return
    terminalreporter.section("reliability figures")
    for size, tests in _FIGURES.rows.items():
        for test, values in tests.items():
            terminalreporter.write_line(f"[{size}] {test}: {json.dumps(values, default=str)}")
    terminalreporter.write_line(f"written to {FIGURES_DIR}/figures-*.json")


# --- markers -------------------------------------------------------------------------------


def pytest_collection_modifyitems(items) -> None:
    # Tests with real worker processes use the real broker (see _no_broker in tests/conftest).
    for item in items:
        if "tests/reliability" in str(item.fspath) and (
            {"workers", "web_server"} & set(getattr(item, "fixturenames", ()))
        ):
            item.add_marker(pytest.mark.e2e)


# --- loopback guard ------------------------------------------------------------------------


@dataclass
class LoopbackGuard:
    """Every connect this process makes to a non-loopback address is refused and recorded."""

    intercepted: list[Any] = field(default_factory=list)
    allow_intercepts: bool = False


def _is_loopback(address: Any) -> bool:
    if not isinstance(address, tuple):
        return True  # AF_UNIX paths (PostgreSQL's socket directory) stay on this machine
    host = str(address[0]).split("%")[0]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@pytest.fixture(autouse=True)
def loopback_guard(monkeypatch) -> Iterator[LoopbackGuard]:
    """Refuse (ConnectionRefusedError, nothing sent) and record non-loopback connects;
    a test fails if one happened, unless it expects them (`allow_intercepts`)."""
    guard = LoopbackGuard()
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(sock, address):
        if not _is_loopback(address):
            guard.intercepted.append(address)
            raise ConnectionRefusedError(111, f"test guard: {address} is not loopback")
        return real_connect(sock, address)

    def connect_ex(sock, address):
        if not _is_loopback(address):
            guard.intercepted.append(address)
            return 111
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield guard
    if not guard.allow_intercepts:
        assert guard.intercepted == [], f"traffic tried to leave loopback: {guard.intercepted}"


# --- servers -------------------------------------------------------------------------------


def _need_servers() -> None:
    if not os.environ.get("REDIS_URL") or connection.vendor != "postgresql":
        pytest.skip("reliability tests need REDIS_URL and PostgreSQL (run `make test`)")


@pytest.fixture
def servers_ready(transactional_db, settings):
    _need_servers()
    settings.PORTAL_RETRY_SCHEDULE = (0, 1, 1, 1, 1, 1, 1, 1)
    yield
    _redis_ensure_up()
    redis.Redis.from_url(os.environ["REDIS_URL"]).delete("celery")  # no stale messages


@pytest.fixture
def workers(servers_ready, tmp_path) -> Iterator[Workers]:
    w = Workers(tmp_path)
    yield w
    w.stop_all(grace=0)


@dataclass
class WebServer:
    url: str
    log: Path
    proc: subprocess.Popen

    def log_text(self, since: int = 0) -> str:
        """The server's log, from byte offset `since` (see `log_size`)."""
        with open(self.log, "rb") as log:
            log.seek(since)
            return log.read().decode(errors="replace")

    def log_size(self) -> int:
        return self.log.stat().st_size


@pytest.fixture(scope="session")
def web_server(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[WebServer]:
    """gunicorn (2 workers x 4 threads, as compose runs it) on the test database, logging
    JSON lines."""
    with django_db_blocker.unblock():
        _need_servers()
        database_url = _database_url()
    children = Children(tmp_path_factory.mktemp("web"))
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": database_url,
            "PORTAL_VAR_DIR": str(children.tmp),
            "LOG_LEVEL": "DEBUG",
            "PORTAL_LOG_FORMAT": "json",  # as an operator feeding a log pipeline runs it
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "PORTAL_PARTNER_RATE": "100000/second",
        }
    )
    extra = ("--timeout=60", "--graceful-timeout=5", "--access-logfile=-", "--log-level=debug")
    cmd = gunicorn_cmd("portal.wsgi:application", port, workers=2, threads=4, extra=extra)
    proc = children.start("gunicorn", cmd, env=env)
    server = WebServer(f"http://127.0.0.1:{port}", children.log_path("gunicorn"), proc)
    try:
        wait_for(
            lambda: http_ok(f"{server.url}/healthz"),
            30,
            "gunicorn to start",
            children.logs,
            check=children.check_alive,
        )
        yield server
    finally:
        children.stop_all(grace=15)


@pytest.fixture
def web(servers_ready, web_server) -> WebServer:
    """The session's gunicorn, for a test whose rows it must see (committed data)."""
    return web_server


@pytest.fixture
def fault_server() -> Iterator[PartnerServer]:
    """The fake partner with no routes: a test sets `routes[path]`; other paths get 404."""
    server = PartnerServer(lambda received, n: (404, b"no route", {}))
    yield server
    server.close()


# --- chaos: Redis and PostgreSQL ------------------------------------------------------------


def _redis_port() -> int:
    return int(os.environ["TEST_REDIS_PORT"])


def redis_client() -> redis.Redis:
    return redis.Redis(
        host="127.0.0.1", port=_redis_port(), socket_timeout=2, socket_connect_timeout=2
    )


def redis_up() -> bool:
    try:
        return bool(redis_client().ping())
    except redis.RedisError:
        return False


def redis_kill() -> None:
    """SIGKILL the Redis server (a crash: nothing is saved, queued messages are gone)."""
    pid = int(redis_client().info("server")["process_id"])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while redis_up() and time.monotonic() < deadline:
        time.sleep(0.05)


_restarted_redis: list[subprocess.Popen] = []


def redis_start() -> None:
    """Start Redis again on the same port, as scripts/testenv.py does (testenv's teardown
    stops it with SHUTDOWN NOSAVE)."""
    proc = subprocess.Popen(
        [
            os.environ["TEST_REDIS_SERVER_BIN"],
            "--port",
            str(_redis_port()),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        cwd="/tmp",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    _restarted_redis.append(proc)
    wait_for(redis_up, 15, "Redis to accept connections again")


def _redis_ensure_up() -> None:
    if os.environ.get("TEST_REDIS_PORT") and not redis_up():
        redis_start()


def pg_ctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run pg_ctl on the test cluster (as the server's OS user when we are root)."""
    cmd = [f"{os.environ['TEST_PG_BIN']}/pg_ctl", "-D", os.environ["TEST_PG_DATA"], *args]
    if os.environ.get("TEST_PG_RUN_AS"):
        cmd = ["runuser", "-u", os.environ["TEST_PG_RUN_AS"], "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)


def pg_options() -> str:
    # testenv's options: a throwaway cluster needs no fsync.
    return (
        f"-p {os.environ['TEST_PG_PORT']} -k {os.environ['TEST_PG_SOCKET_DIR']} "
        "-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
        "-c full_page_writes=off"
    )


def pg_durable_options() -> str:
    """Production's durability: fsync, synchronous_commit and full_page_writes on."""
    return (
        pg_options()
        .replace("fsync=off", "fsync=on")
        .replace("synchronous_commit=off", "synchronous_commit=on")
        .replace("full_page_writes=off", "full_page_writes=on")
    )


def _children_of(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid …": comm may hold spaces, so split after the last ")"
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(entry.name))
    return children


def pg_hard_crash(options: str) -> float:
    """SIGKILL the postmaster and every backend at once (no shutdown, no checkpoint: what a
    power cut leaves of the processes), then start it again with `options`: PostgreSQL
    recovers from its WAL. Returns how long the restart (recovery included) took."""
    data = Path(os.environ["TEST_PG_DATA"])
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    victims = [postmaster, *_children_of(postmaster)]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in victims), 30, "gone")
    started = time.monotonic()
    log = Path(os.environ["TEST_PG_SOCKET_DIR"]) / "postgres.log"
    pg_ctl("-o", options, "-l", str(log), "-w", "-t", "120", "start")
    connections.close_all()
    return time.monotonic() - started


def pg_restart(options: str | None = None) -> float:
    """Restart PostgreSQL (fast shutdown: sessions are cut, committed work is kept), with
    testenv's options unless `options` are given; returns how long it took. This process's
    own connections are closed afterwards."""
    started = time.monotonic()
    log = Path(os.environ["TEST_PG_SOCKET_DIR"]) / "postgres.log"
    pg_ctl("-o", options or pg_options(), "-l", str(log), "-m", "fast", "-w", "-t", "60", "restart")
    connections.close_all()
    return time.monotonic() - started
