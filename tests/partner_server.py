"""A real HTTP partner on loopback for delivery tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0  # what the server answered

    @property
    def json(self) -> dict:
        return json.loads(self.body)


class PartnerServer:
    """A loopback HTTP partner; `respond(received, n)` picks (status, body, headers) for the
    n-th request (1-based) on a path."""

    def __init__(self, respond: Callable[[Received, int], tuple[int, bytes, dict]] | None = None):
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.respond = respond or (lambda r, n: (200, b'{"status":"success"}', {}))
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as separate writes; with Nagle on, the body waited for
            # the client's delayed ACK (~40 ms a request).
            disable_nagle_algorithm = True

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                item = Received(self.path, dict(self.headers.items()), self.rfile.read(length))
                with server.lock:
                    server.received.append(item)
                    count = len(server.received)
                status, body, headers = server.respond(item, count)
                item.status = status
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
