"""Unit tests of the wall-clock deadlines of HTTP exchanges (integrations/deadlines.py).

Deadlines cutting a real exchange through `send_webhook` are tested in test_delivery.py.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

from integrations import deadlines


def test_deadlines_fire_in_order_and_never_after_the_exchange_ended() -> None:
    # given watchdogs with deadlines out of order, one of which finishes in time
    dogs = [deadlines.Watchdog(seconds) for seconds in (0.6, 0.2, 0.4)]
    finished_early = deadlines.Watchdog(0.3)
    for dog in [*dogs, finished_early]:
        dog.__enter__()
    finished_early.__exit__(None, None, None)
    # when their deadlines pass
    time.sleep(0.35)
    # then only those due have fired, and the finished one never does
    assert [d.fired for d in dogs] == [False, True, False]
    time.sleep(0.4)
    assert all(d.fired for d in dogs) and not finished_early.fired


def test_a_deadline_that_cannot_be_enforced_does_not_stop_the_later_ones(monkeypatch) -> None:
    # given a watchdog whose firing breaks, due before a normal one
    broken = deadlines.Watchdog(0.1)
    monkeypatch.setattr(broken, "fire", lambda: 1 / 0)
    later = deadlines.Watchdog(0.3)
    broken.__enter__()
    later.__enter__()
    # when both deadlines pass, then the later one still fires
    time.sleep(0.6)
    assert later.fired
    broken.__exit__(None, None, None)
    later.__exit__(None, None, None)


def test_deadlines_of_concurrent_exchanges_each_cut_their_own_socket() -> None:
    # given 8 threads each blocked reading a socket that never answers, deadlines 0.2..0.9 s
    results: dict[int, float] = {}

    def blocked(i: int) -> None:
        ours, theirs = socket.socketpair()
        try:
            with deadlines.Watchdog(0.2 + 0.1 * i) as dog:
                dog.register(ours)
                started = time.monotonic()
                assert ours.recv(1) == b""  # shut down at the deadline: end of stream
                results[i] = time.monotonic() - started
        finally:
            ours.close()
            theirs.close()

    threads = [threading.Thread(target=blocked, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    # then each read ended at its own deadline (give or take the scheduler)
    assert sorted(results) == list(range(8))
    for i, took in results.items():
        assert 0.2 + 0.1 * i - 0.05 <= took < 0.2 + 0.1 * i + 0.5, (i, took)


def test_a_forked_child_gets_its_own_deadline_thread() -> None:
    # given the parent's deadline thread is running
    with deadlines.Watchdog(5):
        pass
    pid = os.fork()
    if pid == 0:  # the child: a deadline must still cut a blocked read
        code = 1
        signal.alarm(5)  # a deadline that never fires must not hang the suite
        try:
            ours, _theirs = socket.socketpair()
            with deadlines.Watchdog(0.2) as dog:
                dog.register(ours)
                code = 0 if ours.recv(1) == b"" and dog.fired else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
