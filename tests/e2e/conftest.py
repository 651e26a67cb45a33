"""End-to-end harness: real Celery worker processes on real Redis, the real test database,
and a real HTTP partner on loopback.

These tests need REDIS_URL and a server database; `make test` provides both. Run alone they
are skipped with the reason.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from django.db import connection

REPO = Path(__file__).resolve().parents[2]
E2E_SCHEDULE = "0,1,1,1,1,1,1,1"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/e2e" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def e2e_ready(transactional_db, settings):
    if not os.environ.get("REDIS_URL") or connection.vendor != "postgresql":
        pytest.skip("end-to-end tests need REDIS_URL and PostgreSQL (run `make test`)")
    settings.PORTAL_RETRY_SCHEDULE = tuple(int(x) for x in E2E_SCHEDULE.split(","))


def _database_url() -> str:
    s = connection.settings_dict
    return f"postgres://{s['USER']}:{s['PASSWORD'] or ''}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


@dataclass
class Workers:
    """Celery worker (and beat) processes sharing the test database and Redis."""

    tmp: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    loglevel: str = "INFO"
    procs: list[subprocess.Popen] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "DATABASE_URL": _database_url(),
                "PORTAL_RETRY_SCHEDULE": E2E_SCHEDULE,
                "PORTAL_DISPATCH_INTERVAL_MS": "300",
                "PORTAL_REDISPATCH_AFTER": "2",
                "PORTAL_DELIVERY_LEASE_SECONDS": "10",
                "PORTAL_VAR_DIR": str(self.tmp),
            }
        )
        env.update(self.extra_env)
        return env

    def start_worker(self, name: str = "w1", concurrency: int = 2) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "portal",
                "worker",
                "--loglevel",
                self.loglevel,
                "--concurrency",
                str(concurrency),
                "--hostname",
                f"{name}@%h",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=REPO,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def start_beat(self) -> subprocess.Popen:
        log = open(self.tmp / "beat.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "portal",
                "beat",
                "--loglevel",
                self.loglevel,
                "--schedule",
                str(self.tmp / "beat-schedule"),
            ],
            cwd=REPO,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        """Kill a worker's whole process group (the main process and its pool children)."""
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(15)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.kill(proc)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.tmp.glob("*.log"))
        )


@pytest.fixture
def workers(e2e_ready, tmp_path) -> Iterator[Workers]:
    w = Workers(tmp=tmp_path)
    yield w
    w.stop_all()


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, logs: Callable[[], str] | None = None
) -> None:
    """Poll until `predicate()` is true; fail with `what` (and worker logs) on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{logs() if logs else ''}")
