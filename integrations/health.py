"""Liveness and readiness endpoints for operators and load balancers."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterator

from django.conf import settings
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from integrations.services.heartbeats import outbox_gauges, readiness_problems
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


class _OutboxCollector(Collector):
    """The gauges read from the database at each scrape (services/heartbeats.outbox_gauges)."""

    def collect(self) -> Iterator[Metric]:
        state = outbox_gauges(now=timezone.now())
        deliveries = GaugeMetricFamily(
            "portal_deliveries",
            "Deliveries now, by status (the non-final ones, and dead).",
            labels=["status"],
        )
        for status, n in state.deliveries.items():
            deliveries.add_metric([status], n)
        yield deliveries
        yield GaugeMetricFamily(
            "portal_oldest_due_delivery_age_seconds",
            "Seconds the oldest delivery that may go now has waited (0: none waiting).",
            value=state.oldest_due_age_seconds,
        )
        partners = GaugeMetricFamily("portal_partners", "Partners now, by state.", labels=["state"])
        for partner_state, n in state.partners.items():
            partners.add_metric([partner_state], n)
        yield partners
        heartbeats = GaugeMetricFamily(
            "portal_heartbeat_age_seconds",
            "Seconds since the scheduler's, and the newest worker's, heartbeat (+Inf: never).",
            labels=["component"],
        )
        for component, age in state.heartbeat_ages.items():
            heartbeats.add_metric([component], age)
        yield heartbeats


def _metrics_allowed(request) -> bool:
    """With PORTAL_METRICS_TOKEN: that bearer token; without: loopback clients only."""
    token = settings.PORTAL_METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


@require_GET
def metrics(request) -> HttpResponse:
    """Prometheus text format, summed over every web and worker process (SPEC §10)."""
    if not _metrics_allowed(request):
        return HttpResponse(
            "Metrics need PORTAL_METRICS_TOKEN as a bearer token, or a loopback client.\n",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(_OutboxCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
