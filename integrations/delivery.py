"""Outbound HTTP for webhook deliveries: sign, guard against SSRF, send, classify.

Pure Python on purpose (no ORM, no settings): the delivery service passes everything in and
stores the returned `DeliveryResult`. The SSRF guard runs when a socket is opened, on the
addresses actually connected to, so DNS rebinding between check and connect is impossible.
"""

from __future__ import annotations

import base64
import heapq
import ipaddress
import itertools
import json
import math
import os
import re
import secrets as _secrets
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from standardwebhooks.webhooks import Webhook
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    NameResolutionError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.util.connection import allowed_gai_family

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Outcome(StrEnum):
    """What one attempt means for its delivery (SPEC §5)."""

    SUCCESS = "success"
    RETRY = "retry"
    DEAD = "dead"


class BlockedDestination(Exception):
    """A connection was refused because the target address is not public (SPEC §5 SSRF)."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        super().__init__(f"refused to connect to {host} ({address}): {reason} address")
        self.host, self.address, self.reason = host, address, reason


# --- address classification --------------------------------------------------------------


def _table(*rows: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), reason) for net, reason in rows)


# First match wins, so narrower rows come first. Explicit tables because `is_private` and
# friends differ between Python patch releases (3.11.7 misjudges mapped and some v6 ranges).
_V4_BLOCKED = _table(
    ("0.0.0.0/32", "unspecified"),
    ("0.0.0.0/8", "reserved"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "cgnat"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),
    ("192.0.2.0/24", "reserved"),
    ("192.88.99.0/24", "reserved"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "reserved"),
    ("198.51.100.0/24", "reserved"),
    ("203.0.113.0/24", "reserved"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # incl. 255.255.255.255
)
_V6_BLOCKED = _table(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    # Local-use NAT64 (RFC 8215) translates inside the operator's own network, and where
    # the IPv4 sits depends on that translator's prefix length: refuse it whole.
    ("64:ff9b:1::/48", "reserved (local-use NAT64)"),
    ("fc00::/7", "private"),
    ("fec0::/10", "private"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
    ("2001::/32", "reserved (Teredo)"),
    ("2001::/23", "reserved"),
    ("2001:db8::/32", "reserved"),
    ("3fff::/20", "reserved"),
    ("5f00::/16", "reserved"),
)
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    value = int(ip)
    if ip in _MAPPED:
        return [("IPv4-mapped", ipaddress.IPv4Address(value & 0xFFFFFFFF))]
    if ip in _COMPATIBLE:
        return [("IPv4-compatible", ipaddress.IPv4Address(value & 0xFFFFFFFF))]
    if ip in _NAT64:
        return [("NAT64", ipaddress.IPv4Address(value & 0xFFFFFFFF))]
    if ip in _SIX_TO_FOUR:
        return [("6to4", ipaddress.IPv4Address((value >> 80) & 0xFFFFFFFF))]
    return []


def address_block_reason(ip: IPAddress) -> str | None:
    """Say why connecting to `ip` is refused, ignoring any allowlist.

    Returns None for a public address, else a reason such as "loopback", "private",
    "link-local", "cgnat", "multicast", "reserved" or "unspecified"; an address embedding IPv4
    (mapped, compatible, NAT64, 6to4) is judged by that IPv4, e.g. "loopback (in 6to4)".
    """
    if ip.version == 4:
        return next((reason for net, reason in _V4_BLOCKED if ip in net), None)
    for net, reason in _V6_BLOCKED[:3]:  # these win over the embedded-IPv4 forms below
        if ip in net:
            return reason
    embedded = _embedded_ipv4(ip)
    for form, v4 in embedded:
        if reason := address_block_reason(v4):
            return f"{reason} (in {form})"
    if embedded:
        return None
    for net, reason in _V6_BLOCKED:
        if ip in net:
            return reason
    # Only 2000::/3 is allocated for global unicast; everything else is special or unassigned.
    return None if ip in _V6_GLOBAL_UNICAST else "reserved"


_HOSTNAME = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$")


@dataclass(frozen=True)
class OutboundPolicy:
    """What may be connected to despite the SSRF guard (`PORTAL_OUTBOUND_ALLOWLIST`)."""

    allowlist_networks: tuple[IPNetwork, ...] = ()
    allowlist_hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_setting(cls, value: str) -> OutboundPolicy:
        """Parse "127.0.0.0/8,::1,partner.local" (CIDRs, addresses, host names; may be empty).

        Raises ValueError naming the bad entry: a malformed network, one with host bits set,
        or something that is neither an address nor a host name.
        """
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for raw in (value or "").split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry))
                continue
            except ValueError as exc:
                network_error = str(exc)
            host = entry.rstrip(".")
            looks_numeric = all(label.isdigit() for label in host.split("."))
            if "/" in entry or ":" in entry or looks_numeric or not _HOSTNAME.match(host):
                raise ValueError(
                    f"outbound allowlist entry {raw.strip()!r} is neither a network "
                    f"({network_error}) nor a host name"
                )
            hosts.add(host)
        return cls(tuple(networks), frozenset(hosts))

    def block_reason(self, host: str, ip: IPAddress) -> str | None:
        """Like `address_block_reason`, but None when the host or address is allowlisted."""
        if host.rstrip(".").lower() in self.allowlist_hosts:
            return None
        candidates = [ip]
        if ip.version == 6 and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)  # ::ffff:127.0.0.1 *is* 127.0.0.1
        if any(c in net for c in candidates for net in self.allowlist_networks):
            return None
        return address_block_reason(ip)


# --- signing -------------------------------------------------------------------------------


def generate_secret() -> str:
    """Return a new Standard Webhooks signing secret: "whsec_" + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(_secrets.token_bytes(32)).decode("ascii")


def sign_headers(
    *, msg_id: str, body: bytes, secrets: Sequence[str], timestamp: datetime | None = None
) -> dict[str, str]:
    """Build the Standard Webhooks headers for `body`, one v1 signature per secret.

    Several secrets (a rotation in progress) give space-separated signatures, so a receiver
    holding either secret verifies. A naive `timestamp` is taken as UTC; default now.
    Raises ValueError with no secret, a secret without the "whsec_" prefix or an undecodable
    one, or a body that is not UTF-8.
    """
    if isinstance(secrets, str) or not secrets:
        raise ValueError("sign_headers needs a non-empty sequence of whsec_ secrets")
    moment = timestamp or datetime.now(UTC)
    # Webhook.sign() *replaces* tzinfo with UTC, so hand it a UTC wall-clock time.
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    text = body.decode("utf-8")
    signatures = []
    for secret in secrets:
        if not secret.startswith("whsec_"):
            raise ValueError("signing secrets must start with 'whsec_'")
        try:
            signatures.append(Webhook(secret).sign(msg_id, moment, text))
        except Exception as exc:  # binascii.Error, EmptyWebhookSecretError, ...
            raise ValueError(f"unusable signing secret: {exc}") from exc
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(math.floor(moment.timestamp())),  # as Webhook.sign()
        "webhook-signature": " ".join(signatures),
    }


# --- answers -------------------------------------------------------------------------------

_RETRY_AFTER_MAX = 365 * 24 * 3600.0  # keeps timedelta arithmetic finite; callers cap lower


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date).

    Returns None when absent or invalid (including negative numbers); a date in the past
    gives 0.0; the result is never negative and never above one year.
    """
    text = (value or "").strip()
    if not text:
        return None
    if text.isdigit():
        return min(float(text), _RETRY_AFTER_MAX)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)  # HTTP-dates are GMT
    reference = now or datetime.now(UTC)
    reference = reference if reference.tzinfo else reference.replace(tzinfo=UTC)
    return min(max((when - reference).total_seconds(), 0.0), _RETRY_AFTER_MAX)


def classify(status_code: int | None, body: bytes, content_type: str | None) -> Outcome:
    """Map one answer to an outcome per SPEC §5.

    None (no answer) -> RETRY; 2xx -> SUCCESS unless the body is a JSON object whose "status"
    is not exactly "success" (-> RETRY); 408, 429, 5xx -> RETRY; everything else (1xx, 3xx,
    other 4xx incl. 410, nonsense codes) -> DEAD. `content_type` is deliberately not trusted:
    partners answer JSON as text/plain often enough that the body alone decides.
    """
    if status_code is None or status_code in (408, 429) or 500 <= status_code <= 599:
        return Outcome.RETRY
    if not 200 <= status_code <= 299:
        return Outcome.DEAD
    if body.lstrip()[:1] == b"{":
        try:
            document = json.loads(body)
        except ValueError:  # truncated or not JSON after all: the 2xx stands
            return Outcome.SUCCESS
        if isinstance(document, dict) and "status" in document:
            return Outcome.SUCCESS if document["status"] == "success" else Outcome.RETRY
    return Outcome.SUCCESS


# --- transport -----------------------------------------------------------------------------


def resolve(host: str, port: int) -> list[str]:
    """Resolve `host` to address strings (tests monkeypatch this; raises socket.gaierror)."""
    infos = socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


class _Watchdog:
    """Enforces the wall-clock deadline by shutting down every socket of one exchange.

    Per-recv read timeouts cannot stop a server that drips one byte a second, so at the
    deadline the process's deadline thread shuts the sockets down and the blocked read fails
    at once.
    """

    def __init__(self, seconds: float) -> None:
        self.expires_at = time.monotonic() + seconds
        self.fired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._finished = False

    def remaining(self) -> float:
        return self.expires_at - time.monotonic()

    @property
    def expired(self) -> bool:
        return self.fired or self.remaining() <= 0

    @property
    def finished(self) -> bool:
        return self._finished

    def register(self, sock: socket.socket | None) -> None:
        with self._lock:
            if sock is not None and not self._finished:
                self._sockets.append(sock)
                if self.fired:
                    _shutdown(sock)

    def fire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self.fired = True
            for sock in self._sockets:
                _shutdown(sock)

    def __enter__(self) -> _Watchdog:
        _local.watchdog = self
        _deadlines().add(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:  # after this, fire() can no longer touch a pooled socket
            self._finished = True
            self._sockets.clear()
        _local.watchdog = None


class _Deadlines:
    """One daemon thread per process fires the watchdogs whose deadline has passed.

    A timer thread per request cost more CPU than the rest of sending it (bench/delivery.py,
    py-spy): starting a thread is two context switches and a handshake. Finished watchdogs
    are dropped lazily, when they reach the front of the heap.
    """

    def __init__(self) -> None:
        self._wakeup = threading.Condition()
        self._heap: list[tuple[float, int, _Watchdog]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, watchdog: _Watchdog) -> None:
        with self._wakeup:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="webhook-deadlines", daemon=True
                )
                self._thread.start()
            heapq.heappush(self._heap, (watchdog.expires_at, next(self._order), watchdog))
            if self._heap[0][2] is watchdog:  # a new earliest deadline: wake up for it
                self._wakeup.notify()

    def _run(self) -> None:
        with self._wakeup:
            while True:
                while self._heap and self._heap[0][2].finished:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._wakeup.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._wakeup.wait(wait)
                    continue
                heapq.heappop(self._heap)[2].fire()


_deadline_threads: dict[int, _Deadlines] = {}


def _deadlines() -> _Deadlines:
    """This process's deadline thread (a forked child starts its own)."""
    pid = os.getpid()
    deadlines = _deadline_threads.get(pid)
    if deadlines is None:
        deadlines = _deadline_threads.setdefault(pid, _Deadlines())
    return deadlines


def _shutdown(sock: socket.socket) -> None:
    # The base-class call acts on the file descriptor only: SSLSocket.shutdown() would also
    # unwrap Python state under the reading thread's feet. close() is left to that thread.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed, detached by TLS wrapping, or never connected


_local = threading.local()


def _current_watchdog() -> _Watchdog | None:
    return getattr(_local, "watchdog", None)


class _GuardedConnectionMixin:
    """Resolves once, vets every address, then connects to a vetted one (no re-resolving)."""

    policy: OutboundPolicy = OutboundPolicy()  # per-policy subclasses override this

    def _new_conn(self) -> socket.socket:
        conn: Any = self  # the urllib3 connection this is mixed into
        host = conn._dns_host.strip("[]")
        watchdog = _current_watchdog()
        try:
            literal = ipaddress.ip_address(host)
            addresses = [literal]
        except ValueError:
            try:
                answers = resolve(host, conn.port)
            except socket.gaierror as exc:
                raise NameResolutionError(conn.host, conn, exc) from exc
            addresses = list(dict.fromkeys(ipaddress.ip_address(a) for a in answers))
        for address in addresses:  # all before any connect: one bad answer refuses the host
            if reason := self.policy.block_reason(host, address):
                raise BlockedDestination(host, str(address), reason)
        error: OSError = OSError(f"{host} resolved to no address")
        for address in addresses:
            timeout = conn.timeout
            if watchdog is not None:
                timeout = max(0.001, min(timeout or watchdog.remaining(), watchdog.remaining()))
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                for option in conn.socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(timeout)
                if conn.source_address:
                    sock.bind(conn.source_address)
                sock.connect((str(address), conn.port))
            except OSError as exc:
                sock.close()
                error = exc
                continue
            if watchdog is not None:
                watchdog.register(sock)  # covers the TLS handshake too
            return sock
        if isinstance(error, TimeoutError):
            raise ConnectTimeoutError(conn, f"connection to {host} timed out") from error
        raise NewConnectionError(conn, f"Failed to establish a new connection: {error}") from error

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        if (watchdog := _current_watchdog()) is not None:
            watchdog.register(self.sock)  # type: ignore[attr-defined]  # the TLS socket

    def request(self, *args: Any, **kwargs: Any) -> None:
        if (watchdog := _current_watchdog()) is not None:
            watchdog.register(self.sock)  # type: ignore[attr-defined]  # a reused connection
        super().request(*args, **kwargs)  # type: ignore[misc]


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
    # The parent's deadline thread does not run here (_deadlines() keys them by pid).
    _deadline_threads.clear()


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


def _error_class(exc: BaseException, watchdog: _Watchdog) -> tuple[str, str]:
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
        with _Watchdog(deadline) as watchdog:
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
