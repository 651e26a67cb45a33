"""The embedded default's broker: kombu's file-system transport, made safe to read while
it is written (issue #17).

kombu's own `_put` creates the message file under its final name and then writes it, and
its `_get` renames and reads any file with that name: under load a worker read a file that
was created but not yet written, and exited on the JSONDecodeError, taking `make run` down.
Here a message is written under a name `_get` never picks (`.part`) and renamed into place
in one step (os.replace), so a reader sees a whole message or none; a file that still
cannot be decoded is moved aside with a log line instead of stopping the worker (the
database holds the truth: the dispatcher queues its deliveries again).

Used as `portalfs://` (registered in portal/celery.py); the options are the file-system
transport's (data_folder_in, data_folder_out, processed_folder, control_folder).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from queue import Empty
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
        name = f"{filesystem.monotonic() * 1000:.0f}_{uuid.uuid4()}.{queue}.msg"
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

    def _get(self, queue: str) -> Any:
        """The oldest whole message of `queue`; a file that cannot be decoded is set aside."""
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
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
    Channel = Channel
    driver_type = "portalfs"
    driver_name = "portalfs"
