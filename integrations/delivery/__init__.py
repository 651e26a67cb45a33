"""Outbound HTTP for webhook deliveries: sign, guard against SSRF, send, classify.

Pure Python on purpose (no ORM, no settings): the delivery service passes everything in,
the HTTP client included (PORTAL_DELIVERY_CLIENT: "curl", the default, or "requests"), and
stores the returned `DeliveryResult`. Both clients keep the same contract (send_webhook):

- the SSRF guard (rules in integrations.ssrf, applied by guard.py) runs when a socket is
  opened: a host name is resolved once per new connection with `resolve` below, every answer
  is vetted, and a vetted address is connected to from Python; nothing resolves again between
  check and connect, so DNS rebinding is impossible (curl_client.py says how libcurl is kept
  from resolving or choosing the address itself);
- the wall-clock deadline is integrations.deadlines' (curl: CURLOPT_TIMEOUT_MS set to what is
  left of it); no redirects; no proxy or .netrc from the environment; at most max_body bytes
  of the answer, then the connection is dropped; connections are kept alive per process
  (requests) or per thread (curl), and never shared with a forked child;
- signing and the meaning of an answer are integrations.webhooks'.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from urllib3.util.connection import allowed_gai_family

from integrations.deadlines import Watchdog
from integrations.delivery import curl_client, requests_client
from integrations.delivery.exchange import DEAD_ERRORS, Answer, Request
from integrations.ssrf import OutboundPolicy
from integrations.webhooks import Outcome, classify, parse_retry_after, sign_headers

CLIENTS: dict[str, Callable[[Request, Watchdog], Answer]] = {
    "curl": curl_client.exchange,
    "requests": requests_client.exchange,
}
DEFAULT_CLIENT = "curl"


def resolve(host: str, port: int) -> list[str]:
    """Resolve `host` to address strings (tests monkeypatch this; raises socket.gaierror)."""
    infos = socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)
    # For AF_INET and AF_INET6 (all allowed_gai_family() asks for) sockaddr[0] is the address
    # string already; str() only tells the type checker so (other families may give an int).
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class DeliveryResult:
    """Everything the delivery service stores about one attempt."""

    outcome: Outcome
    status_code: int | None  # None when no status line arrived
    request_headers: dict[str, str]  # as sent, Authorization redacted to "Bearer ***"
    response_headers: dict[str, str]
    response_body: bytes  # at most max_body bytes; the caller truncates further to store
    duration_ms: int  # monotonic clock, request start to result
    error_class: str  # "" or e.g. "timeout", "blocked_destination", "deadline_exceeded"
    error_message: str
    retry_after: float | None  # parsed Retry-After seconds, None if absent or invalid
    gone: bool  # a clean 410: the caller pauses the partner


def _redacted(headers: Any) -> dict[str, str]:
    return {
        name: ("Bearer ***" if name.lower() == "authorization" else str(value))
        for name, value in headers.items()
    }


REDACTED = "***"


def redact_url(url: str) -> str:
    """The URL with the password of credentials written into it (user:password@host) shown
    as ***: for storing and showing. They travel as an Authorization header, which is never
    stored either."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{REDACTED}@{netloc}"))


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises ValueError for a malformed port
    except (TypeError, ValueError, AttributeError):
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def send_webhook(
    *,
    url: str,
    body: bytes,
    msg_id: str,
    secrets: Sequence[str],
    policy: OutboundPolicy,
    bearer_token: str = "",
    connect_timeout: float = 3.0,
    deadline: float = 10.0,
    max_body: int = 65536,
    user_agent: str = "IntegrationPortal/1.0",
    client: str = DEFAULT_CLIENT,
) -> DeliveryResult:
    """POST one signed webhook with `client` ("curl" or "requests") and report what happened;
    never raises for network/HTTP trouble.

    Redirects are not followed (a 3xx is DEAD). The whole exchange, headers and body included,
    ends at `deadline` seconds (RETRY, "deadline_exceeded"); at most `max_body` bytes of the
    answer are read, then the connection is dropped. A refused destination is DEAD with
    "blocked_destination": it is a configuration error that retrying cannot fix. A malformed
    or non-http(s) URL is DEAD with "invalid_url". Other failures are RETRY with an
    error_class such as "timeout", "connect_error", "connection_reset", "dns_error".
    Raises ValueError only for caller errors: signing input (see `sign_headers`) or an
    unknown `client`.
    """
    exchange = CLIENTS.get(client)
    if exchange is None:
        raise ValueError(f"unknown delivery client {client!r} (one of {', '.join(CLIENTS)})")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": user_agent,
        "Accept": "*/*",
        # Compressed answers would make max_body meaningless (and invite zip bombs).
        "Accept-Encoding": "identity",
        **sign_headers(msg_id=msg_id, body=body, secrets=secrets),
    }
    if bearer_token:
        headers["Authorization"] = f"Bearer {bearer_token}"
    started = time.monotonic()
    if not _is_http_url(url):
        message = f"not an absolute http(s) URL: {url!r}"[:1000]
        answer = Answer(sent_headers=headers, error_class="invalid_url", message=message)
    else:
        request = Request(
            url=url,
            body=body,
            headers=headers,
            policy=policy,
            resolve=resolve,  # looked up per call: tests replace it
            connect_timeout=connect_timeout,
            deadline=deadline,
            max_body=max_body,
        )
        with Watchdog(deadline) as watchdog:
            answer = exchange(request, watchdog)
    if answer.error_class:
        outcome = Outcome.DEAD if answer.error_class in DEAD_ERRORS else Outcome.RETRY
    else:
        outcome = classify(answer.status, bytes(answer.body), answer.headers.get("Content-Type"))
    return DeliveryResult(
        outcome=outcome,
        status_code=answer.status,
        request_headers=_redacted(answer.sent_headers),
        response_headers=answer.headers,
        response_body=bytes(answer.body),
        duration_ms=int((time.monotonic() - started) * 1000),
        error_class=answer.error_class,
        error_message=answer.message,
        retry_after=parse_retry_after(answer.headers.get("Retry-After")),
        gone=not answer.error_class and answer.status == 410,
    )
