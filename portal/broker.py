"""The embedded default's broker: kombu's file-system transport, made safe to read while
it is written (issue #17).

kombu's own `_put` creates the message file under its final name and then writes it, and
its `_get` renames and reads any file with that name: under load a worker read a file that
was created but not yet written, and exited on the JSONDecodeError, taking `make run` down.
Here a message is written under a name `_get` never picks (`.part`) and renamed into place
in one step (os.replace), so a reader sees a whole message or none; a file that still
cannot be decoded is moved aside with a log line instead of stopping the worker (the
database holds the truth: the dispatcher queues its deliveries again).

It also drains a backlog at a rate near Redis's (bench/delivery.py --embedded): the folder is
listed once per backlog, not once per message, and a busy worker does not sleep a whole
polling interval between messages (`Transport`).

Used as `portalfs://` (registered in portal/celery.py); the options are the file-system
transport's (data_folder_in, data_folder_out, processed_folder, control_folder).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections import deque
from queue import Empty
from time import monotonic, sleep
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

logger = logging.getLogger(__name__)

PART = ".part"
BROKEN_FOLDER = "broken"


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        """Write the message whole under a temporary name, then rename it into place."""
        # nanoseconds, zero-padded: names sort in the order they were written (kombu uses
        # milliseconds, so messages of the same millisecond came out in random order)
        name = f"{time.monotonic_ns():020d}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f"{uuid.uuid4()}{PART}")
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            try:
                os.remove(partial)
            except OSError:
                pass
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _listing(self, queue: str) -> deque[str]:
        """The names of `queue`'s message files not yet taken by this channel, oldest first.

        The folder is listed again only once the last listing is used up: kombu's own `_get`
        lists and sorts the whole folder for every message, so draining a backlog of n
        messages cost n listings of up to n names.
        """
        listings: dict[str, deque[str]] = self.__dict__.setdefault("_listings", {})
        names = listings.get(queue)
        if not names:
            wanted = f"{queue}.msg"
            found = (n for n in os.listdir(self.data_folder_in) if n.partition(".")[2] == wanted)
            names = listings[queue] = deque(sorted(found))
        return names

    def _get(self, queue: str) -> Any:
        """The oldest whole message of `queue`; a file that cannot be decoded is set aside."""
        names = self._listing(queue)
        while names:
            name = names.popleft()
            taken = os.path.join(self.processed_folder or tempfile.gettempdir(), name)
            try:
                shutil.move(os.path.join(self.data_folder_in, name), taken)
            except OSError:
                continue  # another worker took it
            try:
                with open(taken, "rb") as f:
                    payload = f.read()
                message = loads(bytes_to_str(payload))
            except (OSError, ValueError, json.JSONDecodeError):
                self._set_aside(taken)
                continue
            if not self.store_processed:
                os.remove(taken)
            return message
        raise Empty()

    def _set_aside(self, path: str) -> None:
        broken = os.path.join(os.path.dirname(self.data_folder_in), BROKEN_FOLDER)
        os.makedirs(broken, exist_ok=True)
        logger.error(
            "broker message %s could not be read; moved to %s (its deliveries are queued "
            "again by the dispatcher)",
            os.path.basename(path),
            broken,
        )
        try:
            shutil.move(path, broken)
        except OSError:
            logger.exception("could not move %s aside", path)


class Transport(filesystem.Transport):
    """kombu's file-system transport with `Channel` above and a polling rhythm of its own.

    kombu sleeps `polling_interval` whenever it finds nothing to take, and that includes
    the time a worker holds as many messages as it may (prefetch 1 per process) while a
    task runs: at 0.1 s a backlog drained at ~45 messages/s. Here the sleep is BUSY_POLL
    while messages came in the last BUSY_FOR seconds and `polling_interval` after that, so
    an idle worker costs what it did and a busy one does not wait on its own sleep.
    """

    Channel = Channel
    driver_type = "portalfs"
    driver_name = "portalfs"

    BUSY_POLL = 0.005
    BUSY_FOR = 1.0
    _last_message = 0.0

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        started = monotonic()
        while True:
            try:
                self.cycle.get(self._deliver, timeout=timeout)
            except Empty:
                now = monotonic()
                busy = now - self._last_message < self.BUSY_FOR
                pause = self.BUSY_POLL if busy else (self.polling_interval or self.BUSY_POLL)
                if timeout is not None:
                    left = timeout - (now - started)
                    if left < 1e-3:  # (not <= 0: a float remainder would spin)
                        raise TimeoutError() from None  # socket.timeout, as kombu raises
                    pause = min(pause, left)
                sleep(pause)
            else:
                self._last_message = monotonic()
                return
