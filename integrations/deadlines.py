"""Wall-clock deadlines for HTTP exchanges.

Per-recv read timeouts cannot stop a server that drips one byte a second. A `Watchdog`
registers the sockets of one exchange; at its deadline the process's deadline thread shuts
them down and the blocked read fails at once.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import socket
import threading
import time

logger = logging.getLogger(__name__)


class Watchdog:
    """The deadline of one exchange: `register` its sockets; at the deadline they are shut
    down (`fired`). Use as a context manager: `current_watchdog()` is this one inside it."""

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
                    shutdown(sock)

    def fire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self.fired = True
            for sock in self._sockets:
                shutdown(sock)

    def __enter__(self) -> Watchdog:
        _local.watchdog = self
        _deadlines().add(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:  # after this, fire() can no longer touch a pooled socket
            self._finished = True
            self._sockets.clear()
        _local.watchdog = None


class Deadlines:
    """One daemon thread per process fires the watchdogs whose deadline has passed.

    A timer thread per request cost more CPU than the rest of sending it (bench/delivery.py,
    py-spy): starting a thread is two context switches and a handshake. Finished watchdogs
    are dropped lazily, when they reach the front of the heap.
    """

    def __init__(self) -> None:
        self._wakeup = threading.Condition()
        self._heap: list[tuple[float, int, Watchdog]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, watchdog: Watchdog) -> None:
        with self._wakeup:
            if self._thread is None or not self._thread.is_alive():
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
                try:
                    heapq.heappop(self._heap)[2].fire()
                except Exception:  # never let one socket stop every later deadline
                    logger.exception("could not enforce a webhook deadline")


_deadline_threads: dict[int, Deadlines] = {}


def _deadlines() -> Deadlines:
    """This process's deadline thread (a forked child starts its own)."""
    pid = os.getpid()
    deadlines = _deadline_threads.get(pid)
    if deadlines is None:
        deadlines = _deadline_threads.setdefault(pid, Deadlines())
    return deadlines


def shutdown(sock: socket.socket) -> None:
    # The base-class call acts on the file descriptor only: SSLSocket.shutdown() would also
    # unwrap Python state under the reading thread's feet. close() is left to that thread.
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed, detached by TLS wrapping, or never connected


_local = threading.local()


def current_watchdog() -> Watchdog | None:
    watchdog: Watchdog | None = getattr(_local, "watchdog", None)
    return watchdog


def _reset_after_fork() -> None:
    # The parent's deadline thread does not run here (_deadlines() keys them by pid).
    _deadline_threads.clear()


os.register_at_fork(after_in_child=_reset_after_fork)
