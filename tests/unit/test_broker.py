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
    (tmp_path / "in" / f"0_half.{QUEUE}.msg").write_bytes(b"")  # sorts first
    channel._put(QUEUE, {"n": 2})
    # when a worker reads the queue
    message = channel._get(QUEUE)
    # then it gets the next whole message, and the broken file is kept aside with a log line
    assert message == {"n": 2}
    assert [p.name for p in (tmp_path / "broken").iterdir()] == [f"0_half.{QUEUE}.msg"]
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
