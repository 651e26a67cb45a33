"""A fast loopback webhook receiver for the benchmarks, run in its own process.

    python bench/sink.py --port 8123

Every POST (any path not starting with `/_`) is answered `200 {"status":"success"}` (what the
integration guide's webhook answers), and its receipt time (`time.time()`, taken once the
body is read) is recorded under its `webhook-id` header. HTTP/1.1 keep-alive, one asyncio
loop, no framework: it should never be the slowest part of a benchmark.

Control endpoints (GET unless noted):
  /_stats     {"count", "unique", "duplicates", "without_id", "first", "last"}
  /_receipts  {"receipts": {webhook-id: first receipt time}, ...stats}
  /_reset     (POST) forget everything

Binds 127.0.0.1 only. Stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time

ANSWER = b'{"status":"success"}'
MAX_HEADER = 64 * 1024
MAX_BODY = 1024 * 1024


class Sink:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.duplicates = 0
        self.without_id = 0
        self.first: float | None = None
        self.last: float | None = None
        self.receipts: dict[str, float] = {}

    def record(self, webhook_id: str | None, now: float) -> None:
        self.count += 1
        if self.first is None:
            self.first = now
        self.last = now
        if webhook_id is None:
            self.without_id += 1
        elif webhook_id in self.receipts:
            self.duplicates += 1
        else:
            self.receipts[webhook_id] = now

    def stats(self) -> dict:
        return {
            "count": self.count,
            "unique": len(self.receipts),
            "duplicates": self.duplicates,
            "without_id": self.without_id,
            "first": self.first,
            "last": self.last,
        }

    def control(self, method: bytes, target: bytes) -> bytes:
        path = target.split(b"?", 1)[0]
        if path == b"/_reset" and method == b"POST":
            self.reset()
            return b'{"status":"success"}'
        if path == b"/_receipts":
            return json.dumps({**self.stats(), "receipts": self.receipts}).encode()
        return json.dumps(self.stats()).encode()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                method, target, _version = lines[0].split(b" ", 2)
                length = 0
                webhook_id = None
                close = _version.strip() == b"HTTP/1.0"
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"webhook-id":
                        webhook_id = value.strip().decode("ascii", "replace")
                    elif name == b"connection":
                        close = value.strip().lower() == b"close"
                if length > MAX_BODY:
                    break
                if length:
                    await reader.readexactly(length)
                if target.startswith(b"/_"):
                    body = self.control(method, target)
                else:
                    self.record(webhook_id, time.time())
                    body = ANSWER
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n%s\r\n%s"
                    % (len(body), b"Connection: close\r\n" if close else b"", body)
                )
                if len(body) > 65536:
                    await writer.drain()
                if close:
                    break
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            ValueError,
        ):
            pass
        finally:
            writer.close()


async def serve(port: int) -> None:
    sink = Sink()
    server = await asyncio.start_server(
        sink.handle, "127.0.0.1", port, limit=MAX_HEADER, backlog=1024
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
