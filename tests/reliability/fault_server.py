"""A misbehaving HTTP partner on loopback: raw sockets, so it can do what a well-behaved
server library will not (hang, drip, reset, stream 50 MB, answer 429 with Retry-After).

Each path has a `Behaviour`; every request is recorded (path, headers, body, time, what was
answered). Every wait in here is bounded, and `close()` releases hanging handlers at once.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate

OK_BODY = b'{"status":"success"}'
MAX_HOLD_SECONDS = 60.0  # the longest any handler keeps a connection (hang, drip)
REQUEST_READ_TIMEOUT = 10.0


@dataclass
class Receipt:
    """One request as the partner saw it."""

    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.time() when the request was fully read
    n: int  # 1-based count of requests on this path
    n_for_id: int  # 1-based count of requests on this path with this webhook-id
    answer: str = ""  # what the behaviour did: "200", "500", "hang", "reset", ...

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    @property
    def json(self) -> dict:
        return json.loads(self.body)


# A behaviour writes the answer (or does something worse) and returns a short label.
Behaviour = Callable[[socket.socket, Receipt, threading.Event], str]


def _answer(
    sock: socket.socket,
    status: int,
    body: bytes = OK_BODY,
    headers: dict[str, str] | None = None,
    reason: str = "X",
) -> None:
    head = [
        f"HTTP/1.1 {status} {reason}",
        f"Content-Length: {len(body)}",
        "Content-Type: application/json",
        "Connection: close",
    ]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)


def ok(delay: float = 0.0) -> Behaviour:
    """200 {"status":"success"}, after `delay` seconds."""

    def behave(sock, receipt, stop):
        if delay:
            stop.wait(delay)
        _answer(sock, 200)
        return "200"

    return behave


def fail_during(seconds: float, status: int = 500) -> Behaviour:
    """`status` for `seconds` from the first request on the path, then 200 (an outage)."""
    started: list[float] = []

    def behave(sock, receipt, stop):
        if not started:
            started.append(receipt.at)
        if receipt.at < started[0] + seconds:
            _answer(sock, status, b'{"error":"down"}')
            return str(status)
        _answer(sock, 200)
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

    def behave(sock, receipt, stop):
        if receipt.n_for_id == 1:
            extra = dict(headers or {})
            if retry_after_s is not None:
                extra["Retry-After"] = (
                    formatdate(time.time() + retry_after_s, usegmt=True)
                    if http_date
                    else str(retry_after_s)
                )
            _answer(sock, status, body, extra)
            return str(status)
        _answer(sock, 200)
        return "200"

    return behave


def always(status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> Behaviour:
    """The same answer every time (410, a redirect with Location, ...)."""

    def behave(sock, receipt, stop):
        _answer(sock, status, body, headers)
        return str(status)

    return behave


def hang() -> Behaviour:
    """Read the request, then say nothing until the client gives up (or MAX_HOLD_SECONDS)."""

    def behave(sock, receipt, stop):
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

    def behave(sock, receipt, stop):
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

    def behave(sock, receipt, stop):
        sock.sendall(data)
        return "raw"

    return behave


def reset() -> Behaviour:
    """Read the request, then abort the connection with a TCP RST."""

    def behave(sock, receipt, stop):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return "reset"

    return behave


def huge(size: int = 50 * 1024 * 1024, status: int = 200) -> Behaviour:
    """A `size`-byte answer streamed as fast as the client reads it (zero bytes)."""

    def behave(sock, receipt, stop):
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


@dataclass
class FaultServer:
    """Serves `routes` (path -> Behaviour) on 127.0.0.1; unknown paths answer 404."""

    routes: dict[str, Behaviour] = field(default_factory=dict)
    receipts: list[Receipt] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._id_counts: dict[tuple[str, str], int] = {}
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def on(self, path: str) -> list[Receipt]:
        with self._lock:
            return [r for r in self.receipts if r.path == path]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(REQUEST_READ_TIMEOUT)
                receipt = self._read_request(conn)
                if receipt is None:
                    return
                behaviour = self.routes.get(receipt.path) or always(404, body=b"no route")
                receipt.answer = behaviour(conn, receipt, self._stop)
            except OSError:
                pass

    def _read_request(self, conn: socket.socket) -> Receipt | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
            if len(data) > 1024 * 1024:
                return None
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        _method, path, _version = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            body += chunk
        with self._lock:
            self._counts[path] = self._counts.get(path, 0) + 1
            id_key = (path, headers.get("webhook-id", ""))
            self._id_counts[id_key] = self._id_counts.get(id_key, 0) + 1
            receipt = Receipt(
                path=path,
                headers=headers,
                body=body[:length],
                at=time.time(),
                n=self._counts[path],
                n_for_id=self._id_counts[id_key],
            )
            self.receipts.append(receipt)
        return receipt
