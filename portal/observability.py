"""Logs, traces and error reports for the operators' own tools (SPEC §10; docs/OPERATIONS.md).

- Logs: `logging_config()` is the LOGGING setting: plain lines by default, one JSON object
  per line with PORTAL_LOG_FORMAT=json (python-json-logger), each carrying the ids bound in
  integrations/logs.py. gunicorn.conf.py and the Celery processes (portal/celery.py) use the
  same formatters, so every process of a deployment writes the same format.
- Traces: `tracing_start()` sets up OpenTelemetry (its SDK, the OTLP exporter and the Django,
  Celery and psycopg instrumentations) when OTEL_EXPORTER_OTLP_ENDPOINT (or
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; nothing otherwise.
- Errors: `sentry_start()` sets up sentry-sdk when SENTRY_DSN is set, with what would reveal
  a secret scrubbed from every report (`scrub_event`).

This module reads no Django setting and imports no app, so gunicorn.conf.py and the Celery
app module can use it before Django is set up.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from sentry_sdk.types import Event

LOG_FORMATS = ("plain", "json")

_PLAIN = "%(asctime)s %(levelname)s %(name)s %(message)s"


def formatters() -> dict[str, dict[str, Any]]:
    """The LOGGING formatters: `plain` and `json` (timestamp, level, logger, message, the
    bound ids, the exception if any)."""
    return {
        "plain": {"format": _PLAIN},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": True,
        },
    }


def log_format() -> str:
    """PORTAL_LOG_FORMAT: `plain` (the default) or `json`; anything else is refused."""
    value = (os.environ.get("PORTAL_LOG_FORMAT") or "plain").strip().lower()
    if value not in LOG_FORMATS:
        choices = ", ".join(LOG_FORMATS)
        raise ValueError(f"PORTAL_LOG_FORMAT must be one of {choices}; got {value!r}.")
    return value


def logging_config(fmt: str, level: str) -> dict[str, Any]:
    """The LOGGING dict for this format and root level."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "integrations.logs.ContextFilter"}},
        "formatters": formatters(),
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": fmt,
                "filters": ["context"],
            }
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            "django.db.backends": {"level": "WARNING"},
            # Django's own DEBUG-only console handler would print a second, plain line
            "django": {"handlers": [], "level": level, "propagate": True},
        },
    }


def gunicorn_logging_config() -> dict[str, Any]:
    """gunicorn's own loggers (its errors and the access log) in the JSON format."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "filters": ["context"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "integrations.logs.ContextFilter"}},
        "formatters": formatters(),
        "handlers": {
            "console": {**handler, "stream": "ext://sys.stdout"},
            "error_console": {**handler, "stream": "ext://sys.stderr"},
        },
        "root": {"handlers": ["console"], "level": "INFO"},
        "loggers": {
            "gunicorn.error": {"handlers": ["error_console"], "level": "INFO", "propagate": False},
            "gunicorn.access": {"handlers": ["console"], "level": "INFO", "propagate": False},
        },
    }


# --- traces -------------------------------------------------------------------------------

_tracing_pid = 0


def tracing_enabled() -> bool:
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def tracing_start(service: str, exporter: Any = None) -> bool:
    """Trace this process to the OTLP endpoint (or to `exporter`, tests): the API requests,
    the Celery tasks (published and run), the outbound POSTs and the SQL. Once per process
    (a forked child starts its own: the exporting thread does not survive a fork). Returns
    whether tracing is on."""
    global _tracing_pid
    if exporter is None and not tracing_enabled():
        return False
    if _tracing_pid == os.getpid():
        return True
    from opentelemetry import trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME") or f"integration-portal-{service}"
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    # Not the requests instrumentation: it would send our trace context to partners and
    # export their URLs with the query (where a partner may keep a token); the outbox's own
    # `delivery attempt` span stands for the POST, with a URL fit to show.
    for instrumentor in (DjangoInstrumentor(), CeleryInstrumentor(), PsycopgInstrumentor()):
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=provider)
    _tracing_pid = os.getpid()
    return True


# --- errors -------------------------------------------------------------------------------

FILTERED = "[Filtered]"
# Names whose values are never sent: keys, tokens, secrets, signatures, passwords, cookies.
_SECRET_NAME = re.compile(
    r"authorization|cookie|csrf|secret|password|passwd|token|api[-_]?key|signature|session|dsn",
    re.IGNORECASE,
)
# Values that look like one of the portal's secrets wherever they appear in text: an API key
# (`<prefix>.<secret>`), a signing secret (`whsec_…`), a bearer or basic credential, a URL's
# user:password.
_SECRET_VALUE = re.compile(
    r"whsec_[A-Za-z0-9+/=_-]+"
    r"|(?i:bearer|basic)\s+\S+"
    r"|[a-z]{3}_[0-9a-f]{12}\.[A-Za-z0-9_-]{20,}"
    r"|(?<=://)[^/@\s:]*:[^/@\s]+(?=@)"
)


def scrub(value: Any, depth: int = 0) -> Any:
    """`value` with secret-named entries and secret-looking text replaced by FILTERED."""
    if depth > 12:
        return FILTERED  # deeper than anything Sentry sends: fail closed
    if isinstance(value, dict):
        return {
            k: FILTERED if isinstance(k, str) and _SECRET_NAME.search(k) else scrub(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub(v, depth + 1) for v in value]
    if isinstance(value, str):
        return _SECRET_VALUE.sub(FILTERED, value)
    return value


def scrub_event(event: Event, hint: dict[str, Any]) -> Event:
    """Sentry's before_send (and before_send_transaction): the whole event scrubbed."""
    return cast("Event", scrub(event))


def sentry_start(dsn: str, *, environment: str = "", release: str = "") -> bool:
    """Report unhandled errors (web requests, Celery tasks) and ERROR log lines to Sentry."""
    if not dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration
    from sentry_sdk.integrations.stdlib import StdlibIntegration

    sentry_sdk.init(
        dsn=dsn,
        environment=environment or None,
        release=release or None,
        integrations=[DjangoIntegration(), CeleryIntegration()],
        # Nothing of Sentry's on the wire to partners (sentry-trace and baggage headers carry
        # the DSN's key), and no breadcrumbs of outbound requests (their URLs may hold a
        # partner's token in the query).
        trace_propagation_targets=[],
        disabled_integrations=[StdlibIntegration()],
        include_local_variables=False,
        max_request_body_size="never",
        before_send=scrub_event,
        before_send_transaction=scrub_event,
        traces_sample_rate=0,
    )
    return True
