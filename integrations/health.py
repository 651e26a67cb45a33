"""Liveness and readiness endpoints for operators and load balancers."""

from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from integrations.services.heartbeats import readiness_problems
from portal.celery import app as celery_app


@require_GET
def healthz(request) -> JsonResponse:
    """Liveness: the process answers. Checks nothing else on purpose."""
    return JsonResponse({"status": "ok"})


def _check_database() -> str | None:
    try:
        connection.ensure_connection()
        if not connection.is_usable():  # Django's own round trip to the server
            connection.close()
            raise ConnectionError("the connection is not usable")
    except Exception as exc:
        return f"database unreachable: {exc.__class__.__name__}: {str(exc)[:200]}"
    return None


def _check_broker() -> str | None:
    try:
        with celery_app.connection_for_write(settings.CELERY_BROKER_URL) as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return f"broker unreachable: {exc.__class__.__name__}: {str(exc)[:200]}"
    return None


def _check_delivery() -> list[str]:
    try:
        return readiness_problems(now=timezone.now())
    except Exception as exc:
        return [f"delivery state unreadable: {exc.__class__.__name__}: {str(exc)[:200]}"]


@require_GET
def readyz(request) -> JsonResponse:
    """Readiness: 200 when the database and the broker answer, the scheduler and a worker
    have reported lately and deliveries are not falling behind (SPEC §10); else 503 with
    the reasons."""
    problems = [p for p in (_check_database(), _check_broker()) if p]
    if not problems:
        problems = _check_delivery()
    if problems:
        return JsonResponse({"status": "unavailable", "problems": problems}, status=503)
    vendor = connection.vendor
    broker = settings.CELERY_BROKER_URL.split("://", 1)[0]
    return JsonResponse({"status": "ok", "database": vendor, "broker": broker})
