"""Outbound HTTP for webhook deliveries: sign, guard against SSRF, send, classify.

Pure Python on purpose (no ORM, no settings): the delivery service passes everything in and
stores the returned `DeliveryResult`. The SSRF guard (rules in integrations.ssrf) runs when a
socket is opened, on the addresses actually connected to, so DNS rebinding between check and
connect is impossible; the wall-clock deadline is integrations.deadlines'; signing and the
meaning of an answer are integrations.webhooks'.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    NameResolutionError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.util.connection import allowed_gai_family

from integrations.deadlines import Watchdog, current_watchdog
from integrations.ssrf import BlockedDestination, OutboundPolicy
from integrations.webhooks import Outcome, classify, parse_retry_after, sign_headers


def resolve(host: str, port: int) -> list[str]:
    """Resolve `host` to address strings (tests monkeypatch this; raises socket.gaierror)."""
    infos = socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)
    # For AF_INET and AF_INET6 (all allowed_gai_family() asks for) sockaddr[0] is the address
    # string already; str() only tells the type checker so (other families may give an int).
    return [str(info[4][0]) for info in infos]


# Mixed into urllib3's connections only: typed as one so its attributes are checked, while
# at run time the mixin stays a plain class ahead of HTTP(S)Connection in the MRO.
if TYPE_CHECKING:
    _ConnectionBase = HTTPConnection
else:
    _ConnectionBase = object


class _GuardedConnectionMixin(_ConnectionBase):
    """Resolves once, vets every address, then connects to a vetted one (no re-resolving)."""

    policy: OutboundPolicy = OutboundPolicy()  # per-policy subclasses override this

    def _new_conn(self) -> socket.socket:
        host = self._dns_host.strip("[]")
        watchdog = current_watchdog()
        try:
            literal = ipaddress.ip_address(host)
            addresses = [literal]
        except ValueError:
            try:
                answers = resolve(host, self.port)
            except socket.gaierror as exc:
                raise NameResolutionError(self.host, self, exc) from exc
            addresses = list(dict.fromkeys(ipaddress.ip_address(a) for a in answers))
        for address in addresses:  # all before any connect: one bad answer refuses the host
            if reason := self.policy.block_reason(host, address):
                raise BlockedDestination(host, str(address), reason)
        error: OSError = OSError(f"{host} resolved to no address")
        for address in addresses:
            timeout = self.timeout
            if watchdog is not None:
                timeout = max(0.001, min(timeout or watchdog.remaining(), watchdog.remaining()))
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(timeout)
                if self.source_address:
                    sock.bind(self.source_address)
                sock.connect((str(address), self.port))
            except OSError as exc:
                sock.close()
                error = exc
                continue
            if watchdog is not None:
                watchdog.register(sock)  # covers the TLS handshake too
            return sock
        if isinstance(error, TimeoutError):
            raise ConnectTimeoutError(self, f"connection to {host} timed out") from error
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}") from error

    def connect(self) -> None:
        super().connect()
        if (watchdog := current_watchdog()) is not None:
            watchdog.register(self.sock)  # the TLS socket

    def request(self, *args: Any, **kwargs: Any) -> None:
        if (watchdog := current_watchdog()) is not None:
            watchdog.register(self.sock)  # a reused connection
        super().request(*args, **kwargs)


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedAdapter(HTTPAdapter):
    """An HTTPAdapter whose pools only open guarded connections bound to one policy."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self.policy = policy
        # Many partners -> many hosts; pools are cheap, re-handshaking every delivery is not.
        super().__init__(pool_connections=100, pool_maxsize=10, max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        bound = {"policy": self.policy}
        http_conn = type("_PolicyHTTPConnection", (_GuardedHTTPConnection,), bound)
        https_conn = type("_PolicyHTTPSConnection", (_GuardedHTTPSConnection,), bound)
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("_PolicyHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type(
                "_PolicyHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}
            ),
        }


_sessions_lock = threading.Lock()
_sessions: dict[OutboundPolicy, requests.Session] = {}
_sessions_pid = os.getpid()


def _session_for(policy: OutboundPolicy) -> requests.Session:
    """The process's pooled session for `policy`; rebuilt after fork (sockets aren't shareable)."""
    global _sessions_pid
    with _sessions_lock:
        if _sessions_pid != os.getpid():
            _sessions.clear()  # the parent's pools: dropped, never closed (its sockets)
            _sessions_pid = os.getpid()
        session = _sessions.get(policy)
        if session is None:
            session = requests.Session()
            # No proxies or .netrc from the environment: a proxy would bypass the guard and
            # .netrc could attach credentials to a partner's URL.
            session.trust_env = False
            session.headers.clear()
            session.mount("http://", _GuardedAdapter(policy))
            session.mount("https://", _GuardedAdapter(policy))
            _sessions[policy] = session
        return session


def _reset_after_fork() -> None:
    global _sessions_lock
    _sessions_lock = threading.Lock()  # a thread may have held it at fork time


os.register_at_fork(after_in_child=_reset_after_fork)


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


def _causes(exc: BaseException) -> list[BaseException]:
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
_DEAD_ERRORS = frozenset({"blocked_destination", "invalid_url"})


def _error_class(exc: BaseException, watchdog: Watchdog) -> tuple[str, str]:
    chain = _causes(exc)
    for cause in chain:
        if isinstance(cause, BlockedDestination):
            return "blocked_destination", str(cause)
    if watchdog.expired:
        return "deadline_exceeded", "no complete answer before the delivery deadline"
    for types, name in _ERROR_CLASSES:
        if any(isinstance(cause, types) for cause in chain):
            return name, f"{type(exc).__name__}: {exc}"[:1000]
    return "unexpected_error", f"{type(exc).__name__}: {exc}"[:1000]


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
) -> DeliveryResult:
    """POST one signed webhook and report what happened; never raises for network/HTTP trouble.

    Redirects are not followed (a 3xx is DEAD). The whole exchange, headers and body included,
    ends at `deadline` seconds (RETRY, "deadline_exceeded"); at most `max_body` bytes of the
    answer are read, then the connection is dropped. A refused destination is DEAD with
    "blocked_destination": it is a configuration error that retrying cannot fix. A malformed
    or non-http(s) URL is DEAD with "invalid_url". Other failures are RETRY with an
    error_class such as "timeout", "connect_error", "connection_reset", "dns_error".
    Raises ValueError only for caller errors in signing input (see `sign_headers`).
    """
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
    sent = _redacted(headers)
    status: int | None = None
    response_headers: dict[str, str] = {}
    received = bytearray()
    error_class = message = ""
    started = time.monotonic()
    if not _is_http_url(url):
        error_class, message = "invalid_url", f"not an absolute http(s) URL: {url!r}"[:1000]
    else:
        with Watchdog(deadline) as watchdog:
            try:
                response = _session_for(policy).post(
                    url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    stream=True,
                    # The read timeout only bounds one recv; the watchdog bounds the whole.
                    timeout=(connect_timeout, deadline),
                )
                try:
                    status, response_headers = response.status_code, dict(response.headers)
                    sent = _redacted(response.request.headers)
                    size = min(16384, max_body)
                    for chunk in response.iter_content(chunk_size=size) if max_body else ():
                        received += chunk[: max_body - len(received)]
                        if len(received) >= max_body:
                            break
                        if watchdog.expired:  # between chunks: no exception to catch
                            error_class, message = "deadline_exceeded", "answer too slow"
                            break
                finally:
                    response.close()  # unread rest -> the connection is dropped, not pooled
            except Exception as exc:  # the transport boundary: every failure becomes a result
                error_class, message = _error_class(exc, watchdog)
    if error_class:
        outcome = Outcome.DEAD if error_class in _DEAD_ERRORS else Outcome.RETRY
    else:
        outcome = classify(status, bytes(received), response_headers.get("Content-Type"))
    return DeliveryResult(
        outcome=outcome,
        status_code=status,
        request_headers=sent,
        response_headers=response_headers,
        response_body=bytes(received),
        duration_ms=int((time.monotonic() - started) * 1000),
        error_class=error_class,
        error_message=message,
        retry_after=parse_retry_after(response_headers.get("Retry-After")),
        gone=not error_class and status == 410,
    )
