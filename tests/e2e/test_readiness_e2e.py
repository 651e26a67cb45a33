"""/readyz knows the scheduler and the workers (SPEC §10): real beat and worker processes
write their heartbeats; stopped, /readyz answers 503 naming them within its threshold, and
200 again once they are back."""

from __future__ import annotations

import time

from django.test import Client

from tests.support.processes import wait_for, wait_ready

AGE = 3  # PORTAL_READY_HEARTBEAT_AGE for this test: a heartbeat every 0.5 s


def _readyz() -> tuple[int, list[str]]:
    response = Client().get("/readyz")
    return response.status_code, response.json().get("problems", [])


def test_readyz_follows_the_scheduler_and_the_workers(workers, settings):
    settings.PORTAL_READY_HEARTBEAT_AGE = AGE
    workers.extra_env["PORTAL_READY_HEARTBEAT_AGE"] = str(AGE)
    # given nothing running yet
    status, problems = _readyz()
    assert status == 503 and "scheduler (celery beat) has never reported" in problems
    # when a worker and beat start
    workers.start_worker("w1")
    workers.start_beat()
    wait_ready(workers, "w1")
    wait_for(lambda: _readyz()[0] == 200, 30, "/readyz to be 200", workers.logs)
    # and both stop
    workers.stop_named("w1", grace=10)
    workers.stop_named("beat", grace=10)
    stopped = time.monotonic()
    # then /readyz names both within the threshold (plus one heartbeat interval)
    wait_for(
        lambda: _readyz()[0] == 503 and len(_readyz()[1]) == 2,
        AGE + 5,
        "/readyz to report both silent",
        workers.logs,
    )
    noticed = time.monotonic() - stopped
    problems = _readyz()[1]
    assert problems[0].startswith("scheduler (celery beat) silent for ")
    assert problems[1].startswith("every worker silent for ")
    assert noticed <= AGE + 2
    # and when they are back, it is ready again
    workers.start_worker("w2")
    workers.start_beat()
    wait_for(lambda: _readyz()[0] == 200, 30, "/readyz to be 200 again", workers.logs)
