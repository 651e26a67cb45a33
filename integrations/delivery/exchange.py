"""What a client is given (`Request`) and what it reports back (`Answer`) for one POST, and
how a Python exception met on the way is named (error classes of `DeliveryResult`).

Both clients (requests_client, curl_client) take a `Request` and a running `Watchdog` and
return an `Answer`; they never raise. `integrations.delivery.send_webhook` builds the
request, picks the client and turns the answer into a `DeliveryResult`.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field

import requests
from urllib3.exceptions import NameResolutionError, NewConnectionError, ReadTimeoutError

from integrations.deadlines import Watchdog
from integrations.delivery.guard import Resolver
from integrations.ssrf import BlockedDestination, OutboundPolicy


@dataclass(frozen=True)
class Request:
    """One signed POST, as every client must send it."""

    url: str  # an absolute http(s) URL (checked before a client sees it)
    body: bytes
    headers: dict[str, str]  # as built by send_webhook, Authorization in clear
    policy: OutboundPolicy
    resolve: Resolver
    connect_timeout: float  # bounds each connect (TCP only, like urllib3's)
    deadline: float  # the whole exchange, enforced with the watchdog
    max_body: int  # bytes of the answer kept; the connection is dropped past them


@dataclass
class Answer:
    """What came back; `error_class` "" when the exchange completed (or was cut at
    max_body)."""

    sent_headers: dict[str, str]  # as sent (in clear; send_webhook redacts them)
    status: int | None = None  # None until a complete header block arrived
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    error_class: str = ""
    message: str = ""


DEADLINE_MESSAGE = "no complete answer before the delivery deadline"


def causes(exc: BaseException) -> list[BaseException]:
    """`exc` and everything it wraps (__cause__, __context__, args, urllib3's .reason)."""
    found: list[BaseException] = []
    pending = [exc]
    while pending:
        current = pending.pop()
        if any(current is seen for seen in found):
            continue
        found.append(current)
        nested = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        nested += list(current.args)
        pending += [e for e in nested if isinstance(e, BaseException)]
    return found


# Order matters: the operating system's own error is the most specific witness (urllib3's
# NewConnectionError subclasses ConnectTimeoutError, so class names alone mislead).
_ERROR_CLASSES: tuple[tuple[tuple[type[BaseException], ...], str], ...] = (
    (
        (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
        ),
        "invalid_url",
    ),
    ((NameResolutionError, socket.gaierror), "dns_error"),
    ((requests.exceptions.SSLError, ssl.SSLError), "tls_error"),
    ((ConnectionResetError, ConnectionAbortedError, BrokenPipeError), "connection_reset"),
    ((ConnectionRefusedError,), "connect_error"),
    ((TimeoutError, requests.exceptions.Timeout, ReadTimeoutError), "timeout"),
    ((NewConnectionError,), "connect_error"),
    (
        (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError),
        "protocol_error",
    ),
    ((requests.exceptions.ConnectionError, OSError), "network_error"),
)
DEAD_ERRORS = frozenset({"blocked_destination", "invalid_url"})


def error_class(exc: BaseException, watchdog: Watchdog) -> tuple[str, str]:
    """(error class, message) for an exception met while sending: a refused destination
    first, then the deadline, then the most specific cause."""
    chain = causes(exc)
    for cause in chain:
        if isinstance(cause, BlockedDestination):
            return "blocked_destination", str(cause)
    if watchdog.expired:
        return "deadline_exceeded", DEADLINE_MESSAGE
    for types, name in _ERROR_CLASSES:
        if any(isinstance(cause, types) for cause in chain):
            return name, f"{type(exc).__name__}: {exc}"[:1000]
    return "unexpected_error", f"{type(exc).__name__}: {exc}"[:1000]
