"""A real Celery worker process takes a task from real Redis and writes to PostgreSQL."""

import uuid

from integrations.models import WorkerHeartbeat
from integrations.tasks import ping
from tests.support.processes import wait_for


def test_worker_takes_task_from_redis_and_writes_to_postgres(workers):
    # given a worker process on the test database and Redis
    workers.start_worker()
    marker = f"e2e-{uuid.uuid4()}"
    # when a task is sent through the broker
    ping.delay(marker)
    # then the worker runs it and its write is visible here
    wait_for(
        lambda: WorkerHeartbeat.objects.filter(marker=marker).exists(),
        60,
        "the worker's heartbeat row",
        workers.logs,
    )
