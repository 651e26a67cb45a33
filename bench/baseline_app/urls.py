"""POST /ingest stores the raw body as one row; GET /healthz for readiness."""

from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.urls import path

# Created by bench/ingest.py before the server starts.
TABLE = "bench_baseline_event"
ACCEPTED = b'{"status":"success"}'


def ingest(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {TABLE} (body, received_at) VALUES (%s, now())",  # noqa: S608
            [request.body],
        )
    return HttpResponse(ACCEPTED, status=202, content_type="application/json")


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"ok", content_type="text/plain")


urlpatterns = [path("ingest", ingest), path("healthz", healthz)]
