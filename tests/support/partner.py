"""The fake partner: a real HTTP/1.1 server on 127.0.0.1, for tests and benchmarks.

In a test, `PartnerServer(respond)` answers every request with what `respond(received, n)`
returns for the n-th request (1-based) on the server, `(status, body, headers)`; by default
`200 {"status":"success"}`, what the integration guide's webhook answers. The connection is
kept open, as a well-behaved partner does. `server.routes[path] = behaviour` makes one path
misbehave instead: a behaviour gets the raw socket, so it can do what a server library will
not (hang, drip, reset, stream 50 MB, answer garbage or 429 with Retry-After), and the
connection is closed after it. Every request is recorded as a `Received` (path, headers,
body, time, counts, what was answered). Every wait is bounded, and `close()` releases hanging
handlers at once.

For a benchmark it runs as its own process, a sink:

    python -m tests.support.partner --port 8123

Every POST is answered 200 and its receipt time (`time.time()`, once the body is read) is
recorded under its `webhook-id`; nothing else is kept. Control endpoints (GET unless noted):

    /_stats     {"count", "unique", "duplicates", "without_id", "first", "last"}
    /_receipts  {"receipts": {webhook-id: first receipt time}, ...stats}
    /_reset     (POST) forget everything

A thread per connection, keep-alive, no framework: the sink should never be the slowest part
of a benchmark. It stops on SIGTERM or SIGINT. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

OK_BODY = b'{"status":"success"}'
MAX_HOLD_SECONDS = 60.0  # the longest a behaviour keeps a connection (hang, drip)
MAX_HEAD = 1024 * 1024


class Headers(dict):
    """Request headers: names kept in lower case, looked up in any case."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


@dataclass
class Received:
    """One request as the partner saw it."""

    path: str
    headers: Headers
    body: bytes
    at: float  # time.time() once the body was read
    n: int  # 1-based count of requests on this path
    n_for_id: int  # 1-based count of requests on this path with this webhook-id
    status: int = 0  # the status answered; 0 when there was no HTTP answer (hang, reset...)
    answer: str = ""  # what was done: "200", "500", "hang", "reset", "huge:<bytes sent>"...

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def json(self) -> dict:
        return json.loads(self.body)


# respond(received, n) -> (status, body, headers) for the n-th request on the server.
Respond = Callable[[Received, int], tuple[int, bytes, dict[str, str]]]
# A behaviour writes the answer (or does something worse) and returns a short label.
Behaviour = Callable[[socket.socket, Received, threading.Event], str]


def reply(
    sock: socket.socket,
    status: int,
    body: bytes = OK_BODY,
    headers: dict[str, str] | None = None,
    *,
    close: bool = True,
) -> None:
    """Write one whole answer (a JSON content type unless `headers` say otherwise)."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "X"
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if close:
        head.append("Connection: close")
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)


# --- behaviours ----------------------------------------------------------------------------


def ok(delay: float = 0.0) -> Behaviour:
    """200 {"status":"success"}, after `delay` seconds."""

    def behave(sock, received, stop):
        if delay:
            stop.wait(delay)
        reply(sock, 200)
        return "200"

    return behave


def fail_during(seconds: float, status: int = 500) -> Behaviour:
    """`status` for `seconds` from the first request on the path, then 200 (an outage)."""
    started: list[float] = []

    def behave(sock, received, stop):
        if not started:
            started.append(received.at)
        if received.at < started[0] + seconds:
            reply(sock, status, b'{"error":"down"}')
            return str(status)
        reply(sock, 200)
        return "200"

    return behave


def first_try_per_id(
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    retry_after_s: int | None = None,
    http_date: bool = False,
) -> Behaviour:
    """`status` on the first request of every webhook-id (optionally with Retry-After in
    seconds or as an HTTP-date), 200 on the next ones."""

    def behave(sock, received, stop):
        if received.n_for_id == 1:
            extra = dict(headers or {})
            if retry_after_s is not None:
                extra["Retry-After"] = (
                    formatdate(time.time() + retry_after_s, usegmt=True)
                    if http_date
                    else str(retry_after_s)
                )
            reply(sock, status, body, extra)
            return str(status)
        reply(sock, 200)
        return "200"

    return behave


def always(status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> Behaviour:
    """The same answer every time (410, a redirect with Location, ...)."""

    def behave(sock, received, stop):
        reply(sock, status, body, headers)
        return str(status)

    return behave


def hang() -> Behaviour:
    """Read the request, then say nothing until the client gives up (or MAX_HOLD_SECONDS)."""

    def behave(sock, received, stop):
        sock.settimeout(0.2)
        deadline = time.monotonic() + MAX_HOLD_SECONDS
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                if sock.recv(1) == b"":
                    break  # the client closed: it gave up
            except TimeoutError:
                continue
            except OSError:
                break
        return "hang"

    return behave


def drip(interval: float = 0.5, length: int = 10_000) -> Behaviour:
    """Headers at once, then the body one byte every `interval` seconds."""

    def behave(sock, received, stop):
        sock.sendall(
            f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n"
            "Content-Type: application/json\r\nConnection: close\r\n\r\n".encode()
        )
        deadline = time.monotonic() + MAX_HOLD_SECONDS
        try:
            for _ in range(length):
                if stop.wait(interval) or time.monotonic() > deadline:
                    break
                sock.sendall(b" ")
        except OSError:
            pass  # the client hung up at its deadline
        return "drip"

    return behave


def raw(data: bytes) -> Behaviour:
    """Write `data` as the whole answer (garbage instead of HTTP, NUL bytes...), then close."""

    def behave(sock, received, stop):
        sock.sendall(data)
        return "raw"

    return behave


def reset() -> Behaviour:
    """Read the request, then abort the connection with a TCP RST."""

    def behave(sock, received, stop):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return "reset"

    return behave


def huge(size: int = 50 * 1024 * 1024, status: int = 200) -> Behaviour:
    """A `size`-byte answer streamed as fast as the client reads it (zero bytes)."""

    def behave(sock, received, stop):
        sock.sendall(
            f"HTTP/1.1 {status} OK\r\nContent-Length: {size}\r\n"
            "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n".encode()
        )
        chunk = b"\0" * 65536
        sent = 0
        sock.settimeout(5)
        try:
            while sent < size and not stop.is_set():
                sock.sendall(chunk[: size - sent])
                sent += len(chunk)
        except OSError:
            pass  # the client stopped reading after its limit: expected
        return f"huge:{sent}"

    return behave


# --- the server ----------------------------------------------------------------------------


def success(received: Received, n: int) -> tuple[int, bytes, dict[str, str]]:
    return 200, OK_BODY, {}


class PartnerServer:
    """Serves 127.0.0.1:`port` (0: a free port): `routes[path]` for its path, else `respond`.

    `record=False` keeps counts and first receipt times only (the benchmark sink);
    `control=True` serves the /_ endpoints of the module docstring.
    """

    def __init__(
        self,
        respond: Respond | None = None,
        *,
        routes: dict[str, Behaviour] | None = None,
        port: int = 0,
        record: bool = True,
        control: bool = False,
    ) -> None:
        self.respond = respond or success
        self.routes = dict(routes or {})
        self.record = record
        self.control = control
        self.lock = threading.Lock()
        self.reset()
        self._stop = threading.Event()
        self._open: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", port), backlog=1024)
        self._listener.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    @property
    def receipts(self) -> list[Received]:
        """Every request so far (the fault tests' name for `received`)."""
        return self.received

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]

    def reset(self) -> None:
        """Forget every request."""
        with self.lock:
            self.received: list[Received] = []
            self.count = self.duplicates = self.without_id = 0
            self.first: float | None = None
            self.last: float | None = None
            self.first_seen: dict[str, float] = {}  # webhook-id -> first receipt time
            self._on_path: dict[str, int] = {}
            self._on_path_id: dict[tuple[str, str], int] = {}

    def stats(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "unique": len(self.first_seen),
            "duplicates": self.duplicates,
            "without_id": self.without_id,
            "first": self.first,
            "last": self.last,
        }

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        with self.lock:
            open_now = list(self._open)
        for conn in open_now:  # wakes handlers blocked reading an idle keep-alive connection
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            # Headers and body go out in one write, but a keep-alive answer must not wait for
            # the client's delayed ACK of the previous one (~40 ms) either.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with self.lock:
            self._open.add(conn)
        try:
            with conn:
                rest = b""
                while not self._stop.is_set():
                    request = _read_request(conn, rest)
                    if request is None:
                        return
                    method, path, headers, body, keep_alive, rest = request
                    if self.control and path.startswith("/_"):
                        reply(conn, 200, self._control(method, path), close=not keep_alive)
                    else:
                        received, n = self._note(path, headers, body)
                        behaviour = self.routes.get(path)
                        if behaviour is not None:
                            received.answer = behaviour(conn, received, self._stop)
                            if received.answer.isdigit():
                                received.status = int(received.answer)
                            return  # a misbehaving answer ends the connection
                        status, answer, extra = self.respond(received, n)
                        received.status, received.answer = status, str(status)
                        reply(conn, status, answer, extra, close=not keep_alive)
                    if not keep_alive:
                        return
        except (OSError, ValueError):
            pass  # the client went away, or sent something that is not HTTP
        finally:
            with self.lock:
                self._open.discard(conn)

    def _note(self, path: str, headers: Headers, body: bytes) -> tuple[Received, int]:
        """Count and record one request; returns it and its number on the server."""
        now = time.time()
        webhook_id = headers.get("webhook-id")
        with self.lock:
            self.count += 1
            if self.first is None:
                self.first = now
            self.last = now
            if webhook_id is None:
                self.without_id += 1
            elif webhook_id in self.first_seen:
                self.duplicates += 1
            else:
                self.first_seen[webhook_id] = now
            n_path = self._on_path[path] = self._on_path.get(path, 0) + 1
            key = (path, webhook_id or "")
            n_id = self._on_path_id[key] = self._on_path_id.get(key, 0) + 1
            received = Received(path, headers, body, now, n_path, n_id)
            if self.record:
                self.received.append(received)
            return received, self.count

    def _control(self, method: str, path: str) -> bytes:
        path = path.split("?", 1)[0]
        if path == "/_reset" and method == "POST":
            self.reset()
            return OK_BODY
        with self.lock:
            stats = self.stats()
            if path == "/_receipts":
                stats["receipts"] = dict(self.first_seen)
        return json.dumps(stats).encode()


def _read_request(
    conn: socket.socket, data: bytes
) -> tuple[str, str, Headers, bytes, bool, bytes] | None:
    """Read one request (`data`: bytes already read); returns (method, path, headers, body,
    whether the client keeps the connection open, bytes read past it), None at its end."""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            return None
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, data = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, version = lines[0].split(" ", 2)
    headers = Headers()
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length") or 0)
    while len(data) < length:
        chunk = conn.recv(max(65536, length - len(data)))
        if not chunk:
            return None
        data += chunk
    keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    return method, path, headers, data[:length], keep_alive, data[length:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The fake partner as a benchmark sink.")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Blocked before the server's threads start, so they inherit the mask and only
    # sigwait() below sees the signals.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    server = PartnerServer(port=args.port, record=False, control=True)
    signal.sigwait(stop_signals)
    server.close()


if __name__ == "__main__":
    main()
