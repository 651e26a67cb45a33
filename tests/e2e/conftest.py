"""End-to-end harness: real Celery worker processes on real Redis, the real test database,
and a real HTTP partner on loopback.

These tests need REDIS_URL and a server database; `make test` provides both. Run alone they
are skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection

from tests.support.processes import Children, celery_beat_cmd, celery_worker_cmd

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


class Workers(Children):
    """Celery worker (and beat) processes sharing the test database and Redis; their logs,
    `<name>.log`, in `tmp`. `kill(proc, sig)` signals a worker's whole process group."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp)
        self.tmp: Path = tmp
        self.extra_env: dict[str, str] = {}
        self.loglevel = "INFO"
        self.quiet = False  # no Celery start-up banners (for JSON logs)

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
        cmd = celery_worker_cmd(concurrency, name, self.loglevel, quiet=self.quiet)
        return self.start(name, cmd, env=self.env())

    def start_beat(self) -> subprocess.Popen:
        cmd = celery_beat_cmd(self.tmp / "beat-schedule", self.loglevel, quiet=self.quiet)
        return self.start("beat", cmd, env=self.env())


@pytest.fixture
def workers(e2e_ready, tmp_path) -> Iterator[Workers]:
    w = Workers(tmp_path)
    yield w
    w.stop_all(grace=0)
