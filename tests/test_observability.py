"""Logs, request ids, traces and error reports (SPEC §10; portal/observability.py,
integrations/logs.py, integrations/tracing.py). The whole chain over real processes is in
tests/e2e/test_signals_e2e.py; these tests pin each piece in this process."""

from __future__ import annotations

import gzip
import io
import json
import logging
import logging.config

import pytest
import sentry_sdk
from django.utils import timezone
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from integrations import logs, tracing
from integrations.models import Delivery, Event
from portal import observability
from tests.conftest import OWNER, incoming_body
from tests.support.outbox import send_one
from tests.support.partner import PartnerServer, ok

IN = "/api/v1/engine/incoming"


def _json_logger(stream: io.StringIO) -> logging.Logger:
    """A logger writing through the JSON LOGGING of PORTAL_LOG_FORMAT=json into `stream`."""
    config = observability.logging_config("json", "DEBUG")
    config["handlers"]["console"]["stream"] = stream
    config["root"] = {"handlers": [], "level": "WARNING"}
    config["loggers"] = {"probe": {"handlers": ["console"], "level": "DEBUG", "propagate": False}}
    logging.config.dictConfig(config)
    return logging.getLogger("probe")


@pytest.fixture
def restore_logging(settings):
    yield
    logging.config.dictConfig(settings.LOGGING)


# --- JSON lines and the bound ids ----------------------------------------------------------


def test_json_format_writes_one_object_per_line_with_the_bound_ids(restore_logging):
    stream = io.StringIO()
    log = _json_logger(stream)
    with logs.bound(request_id="r-1", tenant="acme"), logs.bound(event_id="e-1", partner_id=None):
        log.warning("sent %s", "x", extra={"delivery_id": 7})
    log.info("after")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "sent x" and first["level"] == "WARNING"
    assert first["timestamp"].endswith("+00:00")
    assert {k: first[k] for k in ("request_id", "tenant", "event_id", "delivery_id")} == {
        "request_id": "r-1",
        "tenant": "acme",
        "event_id": "e-1",
        "delivery_id": 7,
    }
    assert "partner_id" not in first  # None is left out
    assert "request_id" not in second  # the block is over


def test_an_unknown_log_format_is_refused(monkeypatch):
    monkeypatch.setenv("PORTAL_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="PORTAL_LOG_FORMAT must be one of plain, json"):
        observability.log_format()
    # (the settings turn it into ImproperlyConfigured: tests/test_settings_env.py)


@pytest.mark.parametrize(
    ("given", "kept"),
    [("abc-123", True), ("a" * 64, True), ("a" * 65, False), ("x y", False), ("", False)],
)
def test_a_request_id_is_the_callers_when_sensible(given, kept):
    chosen = logs.request_id_from(given)
    assert (chosen == given) is kept
    assert len(chosen) <= 64 and " " not in chosen


def test_the_request_id_is_answered_stored_and_on_the_accepted_line(engine_api, caplog):
    caplog.set_level(logging.INFO, logger="integrations.services.events")
    response = engine_api.post(IN, incoming_body(), HTTP_X_REQUEST_ID="req-42")
    assert response.status_code == 202 and response["X-Request-ID"] == "req-42"
    event = Event.objects.get(pk=response.json()["eventId"])
    assert event.request_id == "req-42"
    assert event.trace_context == ""  # nothing is traced in this process
    (line,) = [r for r in caplog.records if r.getMessage().startswith("event accepted")]
    assert (line.request_id, line.event_id, line.tenant) == ("req-42", str(event.pk), OWNER)
    # and a caller without one gets a new one, different each time
    ids = {engine_api.post(IN, incoming_body())["X-Request-ID"] for _ in range(2)}
    assert len(ids) == 2 and all(len(i) == 32 for i in ids)


def test_each_attempt_is_logged_with_the_ids_of_its_event(
    engine_api, partner, partner_server_factory, caplog
):
    server = partner_server_factory(lambda r, n: (200 if n > 1 else 503, b"{}", {}))
    partner.base_url = server.url
    partner.save()
    engine_api.post(IN, incoming_body(), HTTP_X_REQUEST_ID="req-7")
    delivery = Delivery.objects.get()
    caplog.set_level(logging.INFO, logger="integrations.outbox.record")
    assert send_one(delivery_id=delivery.pk) == "retrying"
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    assert send_one(delivery_id=delivery.pk) == "succeeded"
    lines = [r for r in caplog.records if r.getMessage().startswith("delivery attempt")]
    assert [(r.levelname, r.attempt, r.status_code, r.outcome) for r in lines] == [
        ("WARNING", 1, 503, "retry"),
        ("INFO", 2, 200, "success"),
    ]
    for r in lines:
        assert (r.request_id, r.event_id, r.delivery_id, r.partner_id, r.tenant) == (
            "req-7",
            str(delivery.event_id),
            delivery.pk,
            partner.pk,
            OWNER,
        )


# --- traces --------------------------------------------------------------------------------


@pytest.fixture
def spans(monkeypatch) -> InMemorySpanExporter:
    """A tracer provider of this test's own (the global one is set once per process)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    return exporter


def test_an_attempt_joins_the_trace_of_the_request_that_accepted_its_event(spans):
    tracer = tracing._tracer
    with tracer.start_as_current_span("POST /api/v1/engine/incoming") as request_span:
        stored = tracing.traceparent()
    # a task of another trace is running: the attempt still goes to the event's trace
    with tracer.start_as_current_span("run/other task"):
        within = tracing.current()
        with tracing.attempt_span("delivery attempt", stored=stored, within=within, attributes={}):
            pass
    attempt = next(s for s in spans.get_finished_spans() if s.name == "delivery attempt")
    assert attempt.context.trace_id == request_span.get_span_context().trace_id
    assert attempt.parent is not None
    assert attempt.parent.span_id == request_span.get_span_context().span_id


def test_an_attempt_is_a_child_of_its_task_when_the_task_is_in_the_events_trace(spans):
    tracer = tracing._tracer
    with tracer.start_as_current_span("request"):
        stored = tracing.traceparent()
        with tracer.start_as_current_span("run/delivery_send_batch") as task:
            within = tracing.current()
    # (sent from another thread, which has no current span of its own)
    with tracing.attempt_span("delivery attempt", stored=stored, within=within, attributes={}):
        pass
    attempt = next(s for s in spans.get_finished_spans() if s.name == "delivery attempt")
    assert attempt.parent is not None
    assert attempt.parent.span_id == task.get_span_context().span_id


def test_nothing_is_stored_when_nothing_is_traced():
    assert tracing.traceparent() == ""


# --- Sentry --------------------------------------------------------------------------------


@pytest.fixture
def sentry_inbox():
    """A fake Sentry on loopback: what the SDK would send, as parsed envelope items."""
    server = PartnerServer(routes={"/api/1/envelope/": ok()})
    items: list[dict] = []

    def received() -> list[dict]:
        items.clear()
        for r in server.on("/api/1/envelope/"):
            body = r.body
            if r.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            lines = body.decode().splitlines()
            items.extend(json.loads(line) for line in lines[2::2])  # header, then item pairs
        return items

    observability.sentry_start(f"http://publickey@{server.url.removeprefix('http://')}/1")
    try:
        yield received
    finally:
        sentry_sdk.init()  # no DSN: reporting off again
        server.close()


def test_an_unhandled_api_error_reaches_sentry_with_secrets_scrubbed(
    engine_api, partner_with_key, monkeypatch, sentry_inbox
):
    _, partner_key, signing = partner_with_key

    def broken(**kwargs):
        raise RuntimeError(
            f"cannot reach http://user:hunter2-pass@partner.example with {partner_key} "
            f"signed by {signing}"
        )

    monkeypatch.setattr("integrations.services.events.event_accept", broken)
    response = engine_api.post(IN, incoming_body(), HTTP_COOKIE="sessionid=session-cookie-value")
    assert response.status_code == 500 and response.json()["code"] == "internal_error"
    sentry_sdk.flush(timeout=5)
    events = [item for item in sentry_inbox() if item.get("level") == "error"]
    assert events, sentry_inbox()
    sent = json.dumps(events)
    assert "RuntimeError" in sent and "cannot reach" in sent
    assert "[Filtered]" in sent
    for secret in (
        engine_api.key.split(".", 1)[1],
        partner_key.split(".", 1)[1],
        signing.removeprefix("whsec_"),
        "hunter2-pass",
        "session-cookie-value",
    ):
        assert secret not in sent, secret


@pytest.mark.parametrize(
    "text",
    [
        "key prt_0123456789ab.Zm9vYmFyYmF6cXV4cXV1eGZvb2Jhcg in a message",
        "glued x_prt_0123456789ab.Zm9vYmFyYmF6cXV4cXV1eGZvb2Jhcg",
        "Authorization: Bearer abc.def-ghi",
        "Authorization: Bearer free{text}token",
        "secret whsec_c2VjcmV0LXNpZ25pbmcta2V5",
        "https://portal-user:p4ss@host/path",
        "broker redis://:p4ss@redis:6379/0",
    ],
)
def test_secret_looking_text_is_scrubbed(text):
    scrubbed = observability.scrub(
        {"message": text, "nested": [{"token": "t0k3n"}], "pair": ("a", text)}
    )
    assert observability.FILTERED in scrubbed["message"]
    assert scrubbed["nested"][0]["token"] == observability.FILTERED
    secrets = ("Zm9vYmFy", "abc.def", "free{text}", "c2Vj", "p4ss")
    assert not any(part in scrubbed["message"] for part in secrets)
    assert not any(part in scrubbed["pair"][1] for part in secrets)


def test_scrubbing_fails_closed_past_its_depth():
    deep: object = "whsec_c2VjcmV0"
    for _ in range(20):
        deep = {"a": deep}
    assert "c2VjcmV0" not in json.dumps(observability.scrub(deep))


def test_a_line_django_logs_after_the_response_still_has_the_request_id():
    class Request:
        request_id = "req-after"

    record = logging.LogRecord("django.request", logging.WARNING, "", 0, "Unauthorized", (), None)
    record.request = Request()
    assert logs.ContextFilter().filter(record) and record.request_id == "req-after"


def test_with_sentry_on_nothing_of_sentrys_reaches_a_partner(
    sentry_inbox, engine_api, partner, partner_server_factory
):
    server = partner_server_factory(lambda r, n: (200, b"{}", {}))
    partner.base_url = f"{server.url}/hook?token=partner-query-secret"
    partner.save()
    engine_api.post(IN, incoming_body())
    # (a Celery task runs inside a Sentry transaction)
    with sentry_sdk.start_transaction(name="integrations.tasks.delivery_send_batch"):
        assert send_one(delivery_id=Delivery.objects.get().pk) == "succeeded"
    (received,) = server.received
    assert not {"sentry-trace", "baggage", "traceparent"} & set(received.headers)
    # and no breadcrumb of the outbound request (its query) goes to Sentry
    sentry_sdk.capture_message("after the attempt", level="error")
    sentry_sdk.flush(timeout=5)
    sent = json.dumps(sentry_inbox())
    assert "after the attempt" in sent and "partner-query-secret" not in sent
