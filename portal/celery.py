"""The Celery application. Settings live in portal/settings.py under the CELERY_ prefix."""

import logging
import logging.config
import os
import time
from typing import Any

from celery import Celery, bootsteps, signals
from celery.beat import PersistentScheduler
from kombu.transport import TRANSPORT_ALIASES

from portal import observability

logger = logging.getLogger(__name__)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
# The embedded default's broker (portal/broker.py): file-system messages written atomically.
TRANSPORT_ALIASES.setdefault("portalfs", "portal.broker:Transport")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


if os.environ.get("PORTAL_LOG_FORMAT", "").strip().lower() == "json":
    # From the start: Celery warns (running as root, say) before it sets up logging.
    logging.config.dictConfig(
        observability.logging_config("json", os.environ.get("LOG_LEVEL") or "INFO")
    )
    logging.captureWarnings(True)

    @signals.setup_logging.connect
    def _json_logging(loglevel: Any = None, **kwargs: Any) -> None:
        """With JSON logs, the worker and beat log through the portal's LOGGING (one JSON
        object per line, with the bound ids) instead of Celery's own format."""
        from django.conf import settings

        logging.config.dictConfig(settings.LOGGING)
        logging.captureWarnings(True)  # warnings as log lines (Django does so for web)
        if loglevel:
            logging.getLogger().setLevel(loglevel)


@signals.worker_process_init.connect
def _tracing(**kwargs: Any) -> None:
    """Each pool process traces its tasks when an OTLP endpoint is set (after the fork: the
    exporting thread does not survive one)."""
    from portal.observability import tracing_start

    tracing_start("worker")


@signals.task_prerun.connect
def _retire_old_connections(**kwargs) -> None:
    """With connection reuse on (CELERY_DB_REUSE_MAX), drop connections that are broken or
    older than CONN_MAX_AGE before a task runs, as Django does around each request."""
    from django.db import close_old_connections

    close_old_connections()


def _heartbeat(marker: str) -> None:
    """Write a heartbeat (integrations/services/heartbeats.py) and close the connection; a
    failure is logged, never raised: a database hiccup must not stop beat or a worker."""
    try:
        from django.apps import apps

        if not apps.ready:  # beat; a worker's Django is set up by Celery (setup() again
            import django  # would configure logging again, silencing Celery's own)

            django.setup()
        from integrations.services.heartbeats import heartbeat_record

        heartbeat_record(marker, close=True)
    except Exception:
        logger.exception("could not write the %s heartbeat", marker)


def _heartbeat_every() -> float:
    from integrations.services.heartbeats import heartbeat_every

    return heartbeat_every()


class WorkerHeartbeat(bootsteps.StartStopStep):
    """Writes `worker:<hostname>` from the worker's main process, on its timer."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.timer_entry: Any = None

    def start(self, worker: Any) -> None:
        marker = f"worker:{worker.hostname}"
        _heartbeat(marker)
        self.timer_entry = worker.timer.call_repeatedly(_heartbeat_every(), _heartbeat, (marker,))

    def stop(self, worker: Any) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()


app.steps["worker"].add(WorkerHeartbeat)


class HeartbeatScheduler(PersistentScheduler):
    """Celery beat's default scheduler, writing the scheduler's heartbeat as it ticks."""

    _last_heartbeat = float("-inf")

    def tick(self, *args: Any, **kwargs: Any) -> float:
        every = _heartbeat_every()
        if time.monotonic() - self._last_heartbeat >= every:
            self._last_heartbeat = time.monotonic()
            _heartbeat("scheduler")
        return min(super().tick(*args, **kwargs), every)
