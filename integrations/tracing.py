"""Trace context for the outbox (SPEC §10): an accepted event keeps the W3C `traceparent` of
the request that brought it, and each delivery attempt (the outbound POST) is a CLIENT span
of that trace, so one trace runs from the API request through the Celery task to the
partner, however long the event waited. Nothing of the trace is sent to partners.

With no tracer provider set up (portal/observability.py sets one up only when an OTLP
endpoint is configured) every call here is a cheap no-op and no context is stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("integrations.outbox")


def traceparent() -> str:
    """The current span's `traceparent` header value, or "" when nothing is traced."""
    if not trace.get_current_span().get_span_context().is_valid:
        return ""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent", "")


def current() -> otel_context.Context:
    """The current context, to hand to another thread (`attempt_span(..., within=)`)."""
    return otel_context.get_current()


def url_attributes(url: str) -> dict[str, str]:
    """What a span may say of an outbound URL: scheme, host, port and path; never the
    credentials or the query (where a partner may keep a token)."""
    parts = urlsplit(url)
    shown = {
        "http.request.method": "POST",
        "url.scheme": parts.scheme,
        "server.address": parts.hostname or "",
        "url.path": parts.path or "/",
    }
    if parts.port:
        shown["server.port"] = str(parts.port)
    return shown


@contextmanager
def attempt_span(
    name: str, *, stored: str, within: otel_context.Context | None, attributes: dict[str, str]
) -> Iterator[trace.Span]:
    """A span for one delivery attempt in the trace of `stored` (the event's traceparent): a
    child of the span current in `within` (the Celery task sending the batch) when that is
    the same trace, else of the accepting request's span; a new trace when nothing is
    stored."""
    parent = within
    if stored:
        remote = _propagator.extract({"traceparent": stored})
        remote_trace = trace.get_current_span(remote).get_span_context().trace_id
        local = trace.get_current_span(within).get_span_context() if within else None
        if local is None or local.trace_id != remote_trace:
            parent = remote
    with _tracer.start_as_current_span(
        name, context=parent, kind=trace.SpanKind.CLIENT, attributes=attributes
    ) as span:
        yield span
