"""Logs, traces and operations webhooks end to end (SPEC §10): real gunicorn and Celery worker
processes with PORTAL_LOG_FORMAT=json and an OTLP endpoint (a collector on loopback that
records what it is sent), a real partner on loopback.

Promises: every line the web and worker processes log is a JSON object with timestamp,
level and message; the API call's request id is on the line that accepts the event and on
the worker's line about its delivery attempt, with the tenant, event, delivery and partner
ids; no key or secret is on any line; one trace runs from the API request through the
Celery task to the outbound POST, and nothing of it reaches the partner. A tenant's
operations URL hears, signed and retried by a real worker, of a partner's pause and of the
dead delivery that caused it.
"""

from __future__ import annotations

import gzip
import json

import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from standardwebhooks.webhooks import Webhook

from integrations.models import Delivery, Event, SigningSecret
from integrations.services.accounts import tenant_update
from tests.conftest import incoming_body
from tests.support.partner import PartnerServer, ok
from tests.support.processes import free_port, gunicorn_cmd, http_ok, json_log_lines, wait_for
from tests.support.processes import wait_ready as worker_ready

IN = "/api/v1/engine/incoming"
REQUEST_ID = "e2e-signals-0001"


def _spans(collector: PartnerServer) -> list[dict]:
    """Every span the collector was sent: service, name, kind, ids (hex), attributes."""
    spans = []
    for received in collector.on("/v1/traces"):
        body = received.body
        if received.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            service = next(
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            )
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    spans.append(
                        {
                            "service": service,
                            "name": span.name,
                            "kind": span.kind,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_id": span.parent_span_id.hex(),
                            "attributes": {
                                a.key: a.value.string_value or a.value.int_value
                                for a in span.attributes
                            },
                        }
                    )
    return spans


def test_one_event_is_one_trace_and_its_log_lines_carry_its_ids(
    workers, engine_api, partner_with_key, partner_server_factory
):
    partner, partner_key, _ = partner_with_key
    server = partner_server_factory(lambda r, n: (200, b'{"status":"success"}', {}))
    partner.base_url = server.url
    partner.save()
    collector = PartnerServer(routes={"/v1/traces": ok()})
    try:
        # given web and a worker logging JSON and exporting traces to the collector
        workers.extra_env.update(
            {
                "PORTAL_LOG_FORMAT": "json",
                "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            }
        )
        port = free_port()
        web_cmd = gunicorn_cmd(
            "portal.wsgi:application", port, workers=1, threads=2, extra=("--access-logfile=-",)
        )
        workers.start("gunicorn", web_cmd, env={**workers.env(), "ALLOWED_HOSTS": "127.0.0.1"})
        web = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_ok(f"{web}/healthz"), 30, "gunicorn", workers.logs)
        workers.quiet = True  # no start-up banner: plain text
        workers.start_worker("w1")
        worker_ready(workers, "w1")
        # when the engine posts one message with its own request id
        response = requests.post(
            f"{web}{IN}",
            json=incoming_body(ticketNumber="SIG-1"),
            headers={"Authorization": f"Bearer {engine_api.key}", "X-Request-ID": REQUEST_ID},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        assert response.headers["X-Request-ID"] == REQUEST_ID
        event = Event.objects.get(pk=response.json()["eventId"])
        wait_for(lambda: server.received, 60, "the partner to be called", workers.logs)
        delivery = Delivery.objects.get(event=event)
        wait_for(
            lambda: (
                {"integration-portal-web", "integration-portal-worker"}
                <= {s["service"] for s in _spans(collector)}
                and any(s["name"] == "delivery attempt" for s in _spans(collector))
            ),
            30,
            "spans from web and worker",
            workers.logs,
        )
    finally:
        workers.stop_all(grace=10)
        collector.close()

    # then the event kept the request id, and its trace context
    assert event.request_id == REQUEST_ID
    assert event.trace_context.startswith("00-")
    trace_id = event.trace_context.split("-")[1]
    # and the API request, the Celery task and the outbound POST are spans of that one trace
    spans = [s for s in _spans(collector) if s["trace_id"] == trace_id]
    by_name = {(s["service"], s["name"]): s for s in spans}
    server_span = next(s for s in spans if s["service"].endswith("web") and s["kind"] == 2)
    assert IN in server_span["name"] or server_span["attributes"].get("http.route"), server_span
    assert any(
        service.endswith("worker") and name.startswith("run/") for service, name in by_name
    ), sorted(by_name)
    attempt = by_name[("integration-portal-worker", "delivery attempt")]
    assert attempt["attributes"]["portal.delivery_id"] == str(delivery.pk)
    # the attempt is the outbound POST: a CLIENT span with the URL fit to show, the answer
    assert attempt["kind"] == 3
    assert attempt["attributes"]["http.request.method"] == "POST"
    assert attempt["attributes"]["server.address"] == "127.0.0.1"
    assert attempt["attributes"]["url.path"] == "/incoming"
    assert attempt["attributes"]["http.response.status_code"] == 200
    task_run = next(s for s in spans if s["name"].startswith("run/"))
    assert attempt["parent_id"] == task_run["span_id"]
    # and nothing of the trace reached the partner
    assert "traceparent" not in server.received[0].headers

    # and every line web and worker logged is a JSON object with timestamp, level, message
    web_lines = json_log_lines(workers.log_path("gunicorn").read_text())
    worker_lines = json_log_lines(workers.log_path("w1").read_text())
    for line in web_lines + worker_lines:
        assert {"timestamp", "level", "message"} <= line.keys(), line
    # with the request id on the line that accepted the event, and on the attempt's line
    accepted = [line for line in web_lines if line["message"].startswith("event accepted")]
    assert len(accepted) == 1
    assert accepted[0]["request_id"] == REQUEST_ID
    assert accepted[0]["event_id"] == str(event.pk)
    assert accepted[0]["tenant"] == event.tenant.owner
    attempts = [line for line in worker_lines if line["message"].startswith("delivery attempt")]
    assert len(attempts) == 1
    assert {
        k: attempts[0][k] for k in ("request_id", "tenant", "event_id", "delivery_id", "partner_id")
    } == {
        "request_id": REQUEST_ID,
        "tenant": event.tenant.owner,
        "event_id": str(event.pk),
        "delivery_id": delivery.pk,
        "partner_id": partner.pk,
    }
    assert attempts[0]["status_code"] == 200 and attempts[0]["outcome"] == "success"
    # and the access log line is JSON too
    assert any(IN in line["message"] and "202" in line["message"] for line in web_lines)
    # and no key or secret is on any line
    text = json.dumps(web_lines + worker_lines)
    for name, secret in {
        "engine key": engine_api.key.split(".", 1)[1],
        "partner key": partner_key.split(".", 1)[1],
        **{
            f"signing secret {s.pk}": s.secret.removeprefix("whsec_")
            for s in SigningSecret.objects.all()
        },
    }.items():
        assert secret not in text, name


def test_operations_url_hears_of_a_pause_and_a_dead_delivery_through_a_worker(
    workers, engine_api, tenant, partner, partner_server_factory
):
    # given a tenant with an operations URL, whose partner answers 410 Gone
    ops = partner_server_factory(lambda r, n: (503, b"", {}) if n == 1 else (200, b"{}", {}))
    tenant = tenant_update(tenant=tenant, operations_url=f"{ops.url}/ops")
    gone = partner_server_factory(lambda r, n: (410, b"", {}))
    partner.base_url = gone.url
    partner.save()
    workers.start_worker("w1")
    workers.start_beat()
    worker_ready(workers, "w1")
    # when the engine posts a message
    assert engine_api.post(IN, incoming_body(ticketNumber="OPS-1")).status_code == 202
    # then the operations URL hears of the dead delivery and the pause, signed, its first
    # failure retried
    wait_for(
        lambda: len([r for r in ops.on("/ops") if r.status == 200]) == 2,
        60,
        "two notices delivered",
        workers.logs,
    )
    verifier = Webhook(str(tenant.operations_signing_secret))
    delivered = [
        verifier.verify(r.body, dict(r.headers)) for r in ops.on("/ops") if r.status == 200
    ]
    assert sorted(n["type"] for n in delivered) == ["delivery.dead", "partner.paused"]
    assert {n["partnerId"] for n in delivered} == {partner.pk}
    assert len(ops.on("/ops")) == 3  # one 503, then both
