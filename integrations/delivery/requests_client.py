"""The requests client (PORTAL_DELIVERY_CLIENT=requests): a pooled `requests.Session` per
process and SSRF policy whose urllib3 connections connect through the guard.

Redirects are never followed; proxies and .netrc from the environment are ignored; the
watchdog shuts the exchange's sockets down at the deadline (a per-recv timeout cannot stop a
server that drips). After a fork the child builds its own sessions.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import TYPE_CHECKING, Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from integrations.deadlines import Watchdog, current_watchdog
from integrations.delivery.exchange import Answer, Request, error_class
from integrations.delivery.guard import Resolver, connect_vetted
from integrations.ssrf import OutboundPolicy

# The resolver of the exchange this thread is sending: urllib3 opens connections inside
# `Session.post`, in the calling thread, with no way to pass it one per request.
_exchange = threading.local()


def _current_resolver() -> Resolver:
    resolver: Resolver = _exchange.resolve
    return resolver


# Mixed into urllib3's connections only: typed as one so its attributes are checked, while
# at run time the mixin stays a plain class ahead of HTTP(S)Connection in the MRO.
if TYPE_CHECKING:
    _ConnectionBase = HTTPConnection
else:
    _ConnectionBase = object


class _GuardedConnectionMixin(_ConnectionBase):
    """Opens its socket through the guard (resolve once, vet every address, connect to a
    vetted one) and registers it with the exchange's watchdog."""

    policy: OutboundPolicy = OutboundPolicy()  # per-policy subclasses override this

    def _new_conn(self) -> socket.socket:
        watchdog = current_watchdog()
        try:
            sock = connect_vetted(
                self._dns_host,
                self.port,
                policy=self.policy,
                resolve=_current_resolver(),
                timeout=self.timeout,
                watchdog=watchdog,
                socket_options=self.socket_options or (),
                source_address=self.source_address,
            )
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        except TimeoutError as exc:
            raise ConnectTimeoutError(self, f"connection to {self.host} timed out") from exc
        except OSError as exc:
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc
        if watchdog is not None:
            watchdog.register(sock)  # covers the TLS handshake too
        return sock

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


def exchange(request: Request, watchdog: Watchdog) -> Answer:
    """POST `request` over the process's pooled session; never raises (see send_webhook)."""
    answer = Answer(sent_headers=dict(request.headers))
    _exchange.resolve = request.resolve
    try:
        response = _session_for(request.policy).post(
            request.url,
            data=request.body,
            headers=request.headers,
            allow_redirects=False,
            stream=True,
            # The read timeout only bounds one recv; the watchdog bounds the whole.
            timeout=(request.connect_timeout, request.deadline),
        )
        try:
            answer.status, answer.headers = response.status_code, dict(response.headers)
            answer.sent_headers = dict(response.request.headers)
            max_body, received = request.max_body, answer.body
            size = min(16384, max_body)
            for chunk in response.iter_content(chunk_size=size) if max_body else ():
                received += chunk[: max_body - len(received)]
                if len(received) >= max_body:
                    break
                if watchdog.expired:  # between chunks: no exception to catch
                    answer.error_class, answer.message = "deadline_exceeded", "answer too slow"
                    break
        finally:
            response.close()  # unread rest -> the connection is dropped, not pooled
    except Exception as exc:  # the transport boundary: every failure becomes an answer
        answer.error_class, answer.message = error_class(exc, watchdog)
    finally:
        _exchange.resolve = None
    return answer
