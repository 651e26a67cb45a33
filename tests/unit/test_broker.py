"""The embedded default's broker (portal/broker.py): a message is read whole or not at all,
and a file that cannot be decoded never stops a worker (issue #17.7)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import filesystem as stock

import portal.celery  # noqa: F401 (registers portalfs://)
from portal import broker

QUEUE = "celery"


def _channel(folder: Path, transport: str = "portalfs") -> Any:
    inbox = folder / "in"
    for sub in ("in", "processed"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    connection = Connection(
        f"{transport}://",
        transport_options={
            "data_folder_in": str(inbox),
            "data_folder_out": str(inbox),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "control_folder": str(folder),
        },
    )
    return connection.channel()


def test_portalfs_is_registered():
    assert TRANSPORT_ALIASES["portalfs"] == "portal.broker:Transport"


def test_a_message_is_never_visible_before_it_is_whole(tmp_path, monkeypatch):
    channel = _channel(tmp_path)
    seen_during_write: list[list[str]] = []
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        # at the moment of the rename, the reader's view has no file of the queue yet
        seen_during_write.append(
            [n for n in os.listdir(tmp_path / "in") if n.endswith(f"{QUEUE}.msg")]
        )
        with pytest.raises(stock.Empty):
            channel._get(QUEUE)
        real_replace(src, dst)

    monkeypatch.setattr(broker.os, "replace", replace)
    channel._put(QUEUE, {"body": "x" * 100_000})
    assert seen_during_write == [[]]
    assert channel._get(QUEUE) == {"body": "x" * 100_000}


def test_kombus_own_transport_raises_on_a_file_not_yet_written(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / f"0_half.{QUEUE}.msg").write_bytes(b"")
    with pytest.raises(ValueError):  # JSONDecodeError: the worker exited on it
        _channel(tmp_path, "filesystem")._get(QUEUE)


def test_an_unreadable_file_is_set_aside_not_raised(tmp_path, caplog):
    # given a message file that was created and never written (what crashed the worker)
    channel = _channel(tmp_path)
    half = f"{0:020d}_half.{QUEUE}.msg"  # sorts first
    (tmp_path / "in" / half).write_bytes(b"")
    channel._put(QUEUE, {"n": 2})
    # when a worker reads the queue
    message = channel._get(QUEUE)
    # then it gets the next whole message, and the broken file is kept aside with a log line
    assert message == {"n": 2}
    assert [p.name for p in (tmp_path / "broken").iterdir()] == [half]
    assert "could not be read" in caplog.text
    with pytest.raises(stock.Empty):
        channel._get(QUEUE)


def test_writers_and_readers_at_once_lose_and_break_nothing(tmp_path):
    writer_channel, reader_channel = _channel(tmp_path), _channel(tmp_path)
    total, received, errors = 2000, [], []

    def write() -> None:
        for i in range(total):
            writer_channel._put(QUEUE, {"n": i, "pad": "y" * (i % 5000)})

    def read() -> None:
        while len(received) < total:
            try:
                received.append(reader_channel._get(QUEUE)["n"])
            except stock.Empty:
                continue
            except Exception as exc:  # any other error is what broke the worker
                errors.append(exc)
                return

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == [] and sorted(received) == list(range(total))


def test_a_backlog_is_listed_once_and_read_oldest_first(tmp_path, monkeypatch):
    # given a backlog of 50 messages
    channel = _channel(tmp_path)
    for i in range(50):
        channel._put(QUEUE, {"n": i})
    listings = []
    real_listdir = os.listdir
    monkeypatch.setattr(broker.os, "listdir", lambda p: listings.append(p) or real_listdir(p))
    # when a worker reads it, while another message arrives half-way
    got = [channel._get(QUEUE)["n"] for _ in range(25)]
    channel._put(QUEUE, {"n": 50})
    got += [channel._get(QUEUE)["n"] for _ in range(26)]
    # then it listed the folder once for the backlog and once for what came after it
    assert got == list(range(51))
    assert len(listings) == 2
    with pytest.raises(stock.Empty):
        channel._get(QUEUE)


def test_two_readers_with_their_own_listings_take_each_message_once(tmp_path):
    writer, first, second = _channel(tmp_path), _channel(tmp_path), _channel(tmp_path)
    for i in range(200):
        writer._put(QUEUE, {"n": i})
    received: list[int] = []
    for _ in range(400):  # alternate: each reader's listing names files the other took
        for reader in (first, second):
            try:
                received.append(reader._get(QUEUE)["n"])
            except stock.Empty:
                pass
    assert sorted(received) == list(range(200))


def test_a_busy_worker_looks_again_soon_and_an_idle_one_every_interval(tmp_path, monkeypatch):
    transport = _channel(tmp_path).connection
    transport.polling_interval = 0.1  # as settings.py sets it
    clock, pauses = [1000.0], []

    def fake_sleep(seconds: float) -> None:
        pauses.append(round(seconds, 3))
        clock[0] += seconds

    monkeypatch.setattr(broker, "monotonic", lambda: clock[0])
    monkeypatch.setattr(broker, "sleep", fake_sleep)
    # a message came just now: nothing to take (or the worker holds all it may) -> 5 ms
    transport._last_message = clock[0]
    with pytest.raises(TimeoutError):
        transport.drain_events(None, timeout=0.02)
    assert sum(pauses) == pytest.approx(0.02) and set(pauses) <= {0.005}
    # nothing for longer than BUSY_FOR: the polling interval (0.1 s), cut to the timeout
    pauses.clear()
    transport._last_message = clock[0] - 5
    with pytest.raises(TimeoutError):
        transport.drain_events(None, timeout=0.25)
    assert pauses[:2] == [0.1, 0.1] and sum(pauses) == pytest.approx(0.25)
    # and a message taken marks the worker busy again
    monkeypatch.setattr(transport.cycle, "get", lambda callback, timeout=None: None)
    transport.drain_events(None, timeout=1)
    assert transport._last_message == clock[0]
