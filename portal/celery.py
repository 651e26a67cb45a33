"""The Celery application. Settings live in portal/settings.py under the CELERY_ prefix."""

import os

from celery import Celery, signals
from kombu.transport import TRANSPORT_ALIASES

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
# The embedded default's broker (portal/broker.py): file-system messages written atomically.
TRANSPORT_ALIASES.setdefault("portalfs", "portal.broker:Transport")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.task_prerun.connect
def _retire_old_connections(**kwargs) -> None:
    """With connection reuse on (CELERY_DB_REUSE_MAX), drop connections that are broken or
    older than CONN_MAX_AGE before a task runs, as Django does around each request."""
    from django.db import close_old_connections

    close_old_connections()
