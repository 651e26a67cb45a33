"""What a log line knows about its work (SPEC §10): the ids of the request, tenant, event,
delivery and partner it is about, carried in a context variable so that every line logged
while the work runs has them, whoever logs it.

    with logs.bound(event_id=event.pk, tenant=tenant.owner):
        ...  # every log line in here carries event_id and tenant

`ContextFilter` (installed on the log handlers by portal/settings.py) copies them onto each
record; the JSON format (PORTAL_LOG_FORMAT=json) writes them out. A request's id comes from
portal/middleware.py, is stored with the event it accepts, and is bound again by the worker
that delivers the event, so one id follows an event from the API call to the partner.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

FIELDS = ("request_id", "tenant", "event_id", "delivery_id", "partner_id")

_context: ContextVar[dict[str, str]] = ContextVar("portal_log_context", default={})  # noqa: B039 - never mutated
# A request id taken from the caller's X-Request-ID: short, and nothing a log reader could
# mistake for something else (no spaces, quotes or control characters).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id_from(header: str | None) -> str:
    """The caller's request id when it is a sensible one, else a new one."""
    if header and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def _merged(ids: dict[str, object]) -> dict[str, str]:
    return {**_context.get(), **{k: str(v) for k, v in ids.items() if v is not None and v != ""}}


def bind(**ids: object) -> Token[dict[str, str]]:
    """Add these ids to the current context until `unbind(token)` (a request's lifetime)."""
    return _context.set(_merged(ids))


def unbind(token: Token[dict[str, str]]) -> None:
    _context.reset(token)


@contextmanager
def bound(**ids: object) -> Iterator[None]:
    """These ids on every log line logged inside the block (None and "" are left out)."""
    token = bind(**ids)
    try:
        yield
    finally:
        unbind(token)


def current(field: str) -> str:
    """The bound value of `field`, or ""."""
    return _context.get().get(field, "")


class ContextFilter(logging.Filter):
    """Puts the bound ids on each record (ids given with `extra=` win)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for field, value in _context.get().items():
            if not hasattr(record, field):
                setattr(record, field, value)
        if not hasattr(record, "request_id"):  # django.request's lines after the response
            request_id = getattr(getattr(record, "request", None), "request_id", None)
            if request_id:
                record.request_id = request_id
        return True
