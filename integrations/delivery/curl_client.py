"""The curl client (PORTAL_DELIVERY_CLIENT=curl, the default): one libcurl handle per thread,
kept between deliveries so its connections stay alive.

How the guarantees of `send_webhook` are kept with libcurl:

- SSRF: libcurl never resolves a partner's name nor picks the address. CURLOPT_RESOLVE gives
  it a placeholder address for the URL's host (192.0.2.1, TEST-NET-1: unroutable), and
  CURLOPT_OPENSOCKETFUNCTION, called whenever libcurl wants a new connection, ignores the
  address it asks for: it resolves the host once with `integrations.delivery.resolve`, vets
  every answer and connects to a vetted one from Python (guard.connect_vetted, the same code
  the requests client uses), and CURLOPT_SOCKOPTFUNCTION tells libcurl the socket is already
  connected. So the address connected to is always one the guard checked, a reused
  connection is not resolved again (as with urllib3's pools), and no proxy could redirect
  the connection even if one were configured.
- No redirects (CURLOPT_FOLLOWLOCATION off), no proxy (CURLOPT_PROXY "" and NOPROXY "*",
  whatever the environment says), no .netrc (CURLOPT_NETRC ignored), no cookies, HTTP/1.1
  only, TLS 1.2 or later verified against certifi's bundle (the one requests uses).
- Deadline: CURLOPT_TIMEOUT_MS is what is left of the watchdog's time when the transfer
  starts; each connect is bounded by min(connect_timeout, what is left).
- At most max_body bytes: the WRITEFUNCTION keeps them, then aborts the transfer, and
  libcurl closes that connection instead of draining the rest.

One difference from the requests client is libcurl's own and cannot be switched off: when a
kept-alive connection dies before any byte of the answer arrives, libcurl sends the POST again
on a fresh connection (opened by the guard as above) within the same transfer. A partner that
read the request and dropped the connection without answering can get it twice under one
recorded attempt, with the same webhook-id (SPEC §5: receivers deduplicate on it); requests
records a failed attempt instead and the retry comes later.

After a fork the child makes its own handles; the parent's are kept referenced and never
cleaned up in the child (cleanup could write a TLS close_notify into the parent's session).
"""

from __future__ import annotations

import base64
import errno
import ipaddress
import math
import os
import socket
import threading
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import certifi
import pycurl

from integrations.deadlines import Watchdog
from integrations.delivery.exchange import DEADLINE_MESSAGE, Answer, Request, error_class
from integrations.delivery.guard import connect_vetted
from integrations.ssrf import OutboundPolicy

# Verified against the same CA bundle requests uses (tests point it at their own CA).
CA_BUNDLE = certifi.where()
# libcurl is handed this address for every host name; the OPENSOCKETFUNCTION never dials it.
PLACEHOLDER_ADDRESS = "192.0.2.1"
# Idle connections one handle keeps (urllib3's pools: up to 100 hosts, 10 per host).
MAX_CONNECTS = 100

_handles_lock = threading.Lock()
# (thread ident, policy) -> that thread's handle for that policy (this process). One per
# policy, as requests keeps a session per policy: a connection vetted under a lenient policy
# must not be reused by a request under a strict one.
_handles: dict[tuple[int, OutboundPolicy], pycurl.Curl] = {}
_handles_pid = os.getpid()
_inherited: list[pycurl.Curl] = []  # a forked child's copy of its parent's handles


def _new_handle() -> pycurl.Curl:
    handle = pycurl.Curl()
    handle.setopt(pycurl.NOSIGNAL, 1)  # threads: no SIGALRM for timeouts
    handle.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
    handle.setopt(pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
    handle.setopt(pycurl.FOLLOWLOCATION, 0)
    # "" disables proxies even when http_proxy/HTTPS_PROXY/ALL_PROXY are set.
    handle.setopt(pycurl.PROXY, "")
    handle.setopt(pycurl.NOPROXY, "*")
    handle.setopt(pycurl.NETRC, pycurl.NETRC_IGNORED)
    handle.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
    handle.setopt(pycurl.SSLVERSION, pycurl.SSLVERSION_TLSv1_2)
    handle.setopt(pycurl.MAXCONNECTS, MAX_CONNECTS)
    handle.setopt(pycurl.SOCKOPTFUNCTION, lambda fd, purpose: pycurl.SOCKOPT_ALREADY_CONNECTED)
    return handle


def _handle(policy: OutboundPolicy) -> pycurl.Curl:
    """This thread's handle for `policy`: made on first use, and again in a forked child."""
    global _handles_pid
    with _handles_lock:
        if _handles_pid != os.getpid():
            _inherited.extend(_handles.values())  # the parent's connections: never touched
            _handles.clear()
            _handles_pid = os.getpid()
        key = (threading.get_ident(), policy)
        handle = _handles.get(key)
        if handle is None:
            alive = {thread.ident for thread in threading.enumerate()}
            for gone in [k for k in _handles if k[0] not in alive]:
                _handles.pop(gone).close()  # a finished thread's handle and connections
            handle = _handles[key] = _new_handle()
        return handle


def _reset_after_fork() -> None:
    global _handles_lock
    _handles_lock = threading.Lock()  # a thread may have held it at fork time


os.register_at_fork(after_in_child=_reset_after_fork)


class _InvalidHeader(ValueError):
    """A header value that would split the request (requests refuses these too)."""


def _target(url: str, headers: dict[str, str]) -> tuple[str, str, int]:
    """(URL as libcurl gets it, host as resolved, port): IDNA host, requoted path, and
    credentials in the URL moved to a Basic Authorization header (as requests does)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").encode("idna").decode("ascii")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if parts.username or parts.password:
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode("latin-1")).decode()
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    path = quote(parts.path or "/", safe="!#$%&'()*+,/:;=?@[]~")
    query = "?" + quote(parts.query, safe="!#$%&'()*+,/:;=?@[]~") if parts.query else ""
    return f"{parts.scheme}://{netloc}{path}{query}", host, port


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _header_lines(headers: dict[str, str]) -> list[bytes]:
    lines = []
    for name, value in headers.items():
        if any(c in f"{name}{value}" for c in "\r\n\0"):
            raise _InvalidHeader(f"invalid header {name!r}: it contains a line break or NUL")
        lines.append(f"{name}: {value}".encode("latin-1"))
    # libcurl would add "Expect: 100-continue" to a large POST and wait for a 100 reply.
    lines.append(b"Expect:")
    return lines


class _Reader:
    """The HEADERFUNCTION and WRITEFUNCTION of one transfer."""

    def __init__(self, answer: Answer, max_body: int) -> None:
        self.answer, self.max_body = answer, max_body
        self.capped = False
        self._status: int | None = None
        self._headers: dict[str, str] = {}
        self._done = False  # the final header block arrived; later lines are trailers

    def header(self, line: bytes) -> None:
        text = line.decode("latin-1").rstrip("\r\n")
        if text.startswith("HTTP/"):  # a status line starts a block (1xx blocks come first)
            fields = text.split(None, 2)
            self._status = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
            self._headers, self._done = {}, False
        elif not text:
            if self._status is not None and not self._done and self._status >= 200:
                self.answer.status, self.answer.headers = self._status, self._headers
                self._done = True
        elif ":" in text and not self._done:
            name, value = text.split(":", 1)
            name, value = name.strip(), value.strip()
            known = next((k for k in self._headers if k.lower() == name.lower()), None)
            if known is None:
                self._headers[name] = value
            else:  # repeated: joined, as urllib3 does
                self._headers[known] += ", " + value

    def write(self, data: bytes) -> int | None:
        body = self.answer.body
        body += data[: self.max_body - len(body)]
        if len(body) >= self.max_body:
            self.capped = True
            return 0  # fewer bytes than given: libcurl aborts and drops the connection
        return None


class _Opener:
    """The OPENSOCKETFUNCTION of one transfer: the guard's connected socket, or SOCKET_BAD
    with the reason kept in `failure` (a callback must not raise)."""

    def __init__(self, request: Request, host: str, port: int, watchdog: Watchdog) -> None:
        self.request, self.host, self.port, self.watchdog = request, host, port, watchdog
        self.failure: Exception | None = None
        self.opened: list[socket.socket] = []  # pycurl keeps a dup; ours are closed after

    def __call__(self, purpose: int, address: Any) -> Any:
        # `address` is libcurl's choice (the placeholder, or a literal IP of the URL): never
        # dialled; the guard resolves and vets the URL's host itself.
        try:
            sock = connect_vetted(
                self.host,
                self.port,
                policy=self.request.policy,
                resolve=self.request.resolve,
                timeout=self.request.connect_timeout,
                watchdog=self.watchdog,
            )
        except Exception as exc:
            self.failure = exc
            return pycurl.SOCKET_BAD
        self.opened.append(sock)
        return sock

    def close(self) -> None:
        for sock in self.opened:
            sock.close()


_CONNECT_RESET = {errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE}
_TLS_ERRORS = {
    getattr(pycurl, name)
    for name in (
        "E_SSL_CONNECT_ERROR",
        "E_PEER_FAILED_VERIFICATION",
        "E_SSL_CACERT",
        "E_SSL_CERTPROBLEM",
        "E_SSL_CIPHER",
        "E_SSL_CACERT_BADFILE",
        "E_SSL_ENGINE_NOTFOUND",
        "E_SSL_ENGINE_SETFAILED",
        "E_SSL_ENGINE_INITFAILED",
        "E_SSL_SHUTDOWN_FAILED",
        "E_SSL_CRL_BADFILE",
        "E_SSL_ISSUER_ERROR",
        "E_SSL_PINNEDPUBKEYNOTMATCH",
        "E_SSL_INVALIDCERTSTATUS",
        "E_USE_SSL_FAILED",
    )
    if hasattr(pycurl, name)
}
# libcurl's CURLE_WEIRD_SERVER_REPLY (8; pycurl names it E_FTP_WEIRD_SERVER_REPLY) is also
# what a NUL byte in a response header gives: libcurl refuses such an answer, where
# http.client (requests) accepts it.
_PROTOCOL_ERRORS = {
    pycurl.E_PARTIAL_FILE,
    pycurl.E_BAD_CONTENT_ENCODING,
    pycurl.E_FTP_WEIRD_SERVER_REPLY,
}


def _curl_error_class(code: int, os_errno: int) -> str:
    """The error class of a libcurl failure (the names the requests client gives the same
    trouble)."""
    if code == pycurl.E_URL_MALFORMAT:
        return "invalid_url"
    if code == pycurl.E_UNSUPPORTED_PROTOCOL:
        # send_webhook refuses a URL that is not http(s) before any client runs: here it is
        # the answer's protocol, e.g. "Received HTTP/0.9 when not allowed" (garbage instead
        # of a status line), which requests calls a network error; retried, as that is
        return "protocol_error"
    if code == pycurl.E_COULDNT_RESOLVE_HOST:
        return "dns_error"
    if code in _TLS_ERRORS:
        return "tls_error"
    if code == pycurl.E_GOT_NOTHING or os_errno in _CONNECT_RESET:
        return "connection_reset"  # requests: RemoteDisconnected, a ConnectionResetError
    if code == pycurl.E_COULDNT_CONNECT:
        return "connect_error"
    if code == pycurl.E_OPERATION_TIMEDOUT:
        return "timeout"
    if code in _PROTOCOL_ERRORS:
        return "protocol_error"
    return "network_error"


def exchange(request: Request, watchdog: Watchdog) -> Answer:
    """POST `request` over this thread's libcurl handle; never raises (see send_webhook)."""
    headers = dict(request.headers)
    answer = Answer(sent_headers=headers)
    reader = _Reader(answer, request.max_body)
    opener: _Opener | None = None
    handle: pycurl.Curl | None = None
    try:
        try:
            url, host, port = _target(request.url, headers)
        except UnicodeError as exc:  # a host name IDNA cannot encode (requests: InvalidURL)
            answer.error_class, answer.message = "invalid_url", f"{type(exc).__name__}: {exc}"
            return answer
        lines = _header_lines(headers)
        headers["Content-Length"] = str(len(request.body))  # libcurl sends it (as requests)
        opener = _Opener(request, host, port, watchdog)
        handle = _handle(request.policy)
        handle.setopt(pycurl.URL, url)
        # A literal address is not resolved by libcurl: only a name needs the placeholder.
        resolve = [] if _is_address(host) else [f"{host}:{port}:{PLACEHOLDER_ADDRESS}"]
        handle.setopt(pycurl.RESOLVE, resolve)
        handle.setopt(pycurl.OPENSOCKETFUNCTION, opener)
        handle.setopt(pycurl.CAINFO, CA_BUNDLE)
        handle.setopt(pycurl.HTTPHEADER, lines)
        handle.setopt(pycurl.POSTFIELDS, request.body)
        handle.setopt(pycurl.POSTFIELDSIZE, len(request.body))
        handle.setopt(pycurl.HEADERFUNCTION, reader.header)
        handle.setopt(pycurl.WRITEFUNCTION, reader.write)
        # What is left of the deadline, rounded up: when libcurl gives up, it has passed.
        handle.setopt(pycurl.TIMEOUT_MS, max(1, math.ceil(watchdog.remaining() * 1000)))
        try:
            handle.perform()
        except pycurl.error as exc:
            code = int(exc.args[0])
            failure = opener.failure
            if code == pycurl.E_WRITE_ERROR and reader.capped:
                pass  # max_body reached: the rest is not read, the connection is dropped
            elif failure is not None:
                answer.error_class, answer.message = error_class(failure, watchdog)
                if answer.error_class == "network_error":
                    answer.error_class = "connect_error"  # urllib3: NewConnectionError
            elif watchdog.expired:
                answer.error_class, answer.message = "deadline_exceeded", DEADLINE_MESSAGE
            else:
                os_errno = int(handle.getinfo(pycurl.OS_ERRNO))
                answer.error_class = _curl_error_class(code, os_errno)
                reason = f" [{os.strerror(os_errno)}]" if os_errno else ""
                answer.message = f"pycurl.error ({code}): {exc.args[1]}{reason}"[:1000]
    except Exception as exc:  # the transport boundary: every failure becomes an answer
        answer.error_class, answer.message = error_class(exc, watchdog)
    finally:
        if opener is not None:
            opener.close()
        if handle is not None:  # no callback keeps this request's objects alive
            handle.setopt(pycurl.OPENSOCKETFUNCTION, _no_socket)
            handle.setopt(pycurl.HEADERFUNCTION, _ignore)
            handle.setopt(pycurl.WRITEFUNCTION, _ignore)
    return answer


def _no_socket(purpose: int, address: Any) -> Any:
    return pycurl.SOCKET_BAD


def _ignore(data: bytes) -> None:
    return None
