"""Unit tests of the outbound webhook transport (integrations/delivery/).

No database and no network beyond loopback: tests/unit/conftest.py guards every connect and
fakes the resolver. Real HTTP goes to partner servers started here on 127.0.0.1. Every test
runs once per HTTP client (PORTAL_DELIVERY_CLIENT: curl and requests): both keep the same
guarantees.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from integrations import delivery
from integrations.delivery import curl_client, requests_client, send_webhook
from integrations.ssrf import OutboundPolicy
from integrations.webhooks import Outcome
from tests.unit.test_ssrf import BLOCKED_ADDRESSES

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
BODY = json.dumps({"eventId": "evt_1", "message": "héllo"}).encode()
STRICT = OutboundPolicy()
LOOPBACK = OutboundPolicy.from_setting("127.0.0.0/8,::1")
CLIENT = "curl"  # the client of the running test (set by the `client` fixture)


@pytest.fixture(autouse=True, params=sorted(delivery.CLIENTS))
def client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs with each HTTP client; `send` uses it."""
    monkeypatch.setattr(f"{__name__}.CLIENT", request.param)
    name: str = request.param
    return name


# --- partner servers on loopback -----------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int


@dataclass
class Partner:
    """A loopback HTTP server: `routes` maps a path to a handler function."""

    port: int
    received: list[Received] = field(default_factory=list)
    routes: dict[str, Callable[[BaseHTTPRequestHandler], None]] = field(default_factory=dict)
    events: dict[str, threading.Event] = field(default_factory=dict)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def respond(
    handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", **headers: str
) -> None:
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def make_handler(partner: Partner) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so pooling is observable

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            partner.received.append(
                Received(self.path, dict(self.headers), body, self.client_address[1])
            )
            route = partner.routes.get(self.path, ok_route)
            try:
                route(self)
            except OSError:  # the client gave up (deadline tests): expected
                self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def ok_route(handler: BaseHTTPRequestHandler) -> None:
    respond(handler, 200, b'{"status":"success"}', Content_Type="application/json")


def start_partner(
    wrap: Callable[[socket.socket], socket.socket] | None = None,
) -> tuple[Partner, Callable[[], None]]:
    """Start a loopback partner server; returns it and a function that stops it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    state = Partner(port=server.server_address[1])
    server.RequestHandlerClass = make_handler(state)
    if wrap is not None:
        server.socket = wrap(server.socket)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return state, stop


@pytest.fixture
def partner() -> Iterator[Partner]:
    state, stop = start_partner()
    yield state
    stop()


def send(url: str, policy: OutboundPolicy = LOOPBACK, **kwargs: object) -> delivery.DeliveryResult:
    return send_webhook(
        url=url, body=BODY, msg_id="evt_1", secrets=[SECRET], policy=policy, client=CLIENT, **kwargs
    )


# --- SSRF guard at connect time ------------------------------------------------------------


def _url_for(address: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:8080/hook"


@pytest.mark.parametrize("address", BLOCKED_ADDRESSES)
def test_send_webhook_refuses_literal_address_without_connecting(
    address: str, connect_attempts: list[object]
) -> None:
    # when
    result = send(_url_for(address), policy=STRICT)
    # then
    assert result.error_class == "blocked_destination"
    assert result.outcome == Outcome.DEAD
    assert connect_attempts == []


@pytest.mark.parametrize(
    ("host", "addresses"),
    [
        ("metadata.test", ["169.254.169.254"]),
        ("internal.test", ["10.1.2.3"]),
        ("ula.test", ["fd00::1"]),
        ("mapped.test", ["::ffff:127.0.0.1"]),
        ("nat64.test", ["64:ff9b::a00:1"]),
        ("localhost.test", ["127.0.0.1", "::1"]),
        ("mixed.test", ["93.184.216.34", "10.0.0.1"]),
    ],
)
def test_send_webhook_refuses_host_resolving_to_non_public(
    host: str,
    addresses: list[str],
    fake_dns: dict[str, list[str]],
    connect_attempts: list[object],
) -> None:
    # given
    fake_dns[host] = addresses
    # when
    result = send(f"https://{host}/hook", policy=STRICT)
    # then
    assert result.error_class == "blocked_destination"
    assert host in result.error_message
    assert connect_attempts == []


def test_send_webhook_connects_to_the_vetted_address_without_resolving_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given a public host, and a connect that records instead of leaving the machine
    lookups: list[str] = []
    monkeypatch.setattr(delivery, "resolve", lambda host, port: lookups.append(host) or ["8.8.4.4"])
    dialled: list[object] = []

    def refuse(sock: socket.socket, address: object) -> None:
        dialled.append(address)
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    # when
    result = send("http://public.test/hook", policy=STRICT)
    # then
    assert lookups == ["public.test"]
    assert dialled == [("8.8.4.4", 80)]
    assert (result.outcome, result.error_class) == (Outcome.RETRY, "connect_error")


@pytest.mark.parametrize(
    "url", ["not a url", "ftp://example.com/x", "http:///path", "http://example.com:99999/", ""]
)
def test_send_webhook_malformed_url_is_dead(url: str, connect_attempts: list[object]) -> None:
    # when
    result = send(url, policy=STRICT)
    # then
    assert (result.outcome, result.error_class) == (Outcome.DEAD, "invalid_url")
    assert connect_attempts == []


# --- allowlist -----------------------------------------------------------------------------


def test_send_webhook_loopback_refused_without_allowlist(partner: Partner) -> None:
    # when
    result = send(partner.url("/ok"), policy=STRICT)
    # then
    assert result.error_class == "blocked_destination"
    assert partner.received == []


def test_send_webhook_allowlisted_network_reaches_loopback(partner: Partner) -> None:
    # when
    result = send(partner.url("/ok"), policy=LOOPBACK)
    # then
    assert result.outcome == Outcome.SUCCESS
    assert [r.path for r in partner.received] == ["/ok"]


def test_send_webhook_allowlisted_host_name_reaches_loopback(
    partner: Partner, fake_dns: dict[str, list[str]]
) -> None:
    # given a host name allowlisted regardless of its (loopback) address
    fake_dns["partner.local"] = ["127.0.0.1"]
    policy = OutboundPolicy.from_setting("partner.local")
    # when
    result = send(partner.url("/ok", host="partner.local"), policy=policy)
    # then
    assert result.outcome == Outcome.SUCCESS
    assert partner.received[0].headers["Host"] == f"partner.local:{partner.port}"


# --- real HTTP on loopback -----------------------------------------------------------------


def test_send_webhook_success_is_signed_verifiably(partner: Partner) -> None:
    # when
    result = send(partner.url("/ok"))
    # then the partner can verify what it received
    received = partner.received[0]
    Webhook(SECRET).verify(received.body, received.headers)
    assert received.headers["webhook-id"] == "evt_1"
    assert received.headers["Content-Type"] == "application/json"
    assert result.outcome == Outcome.SUCCESS
    assert (result.status_code, result.response_body) == (200, b'{"status":"success"}')
    assert result.error_class == "" and result.duration_ms >= 0


def test_send_webhook_sends_bearer_and_redacts_it(partner: Partner) -> None:
    # when
    result = send(partner.url("/ok"), bearer_token="s3cret-token")
    # then
    assert partner.received[0].headers["Authorization"] == "Bearer s3cret-token"
    assert result.request_headers["Authorization"] == "Bearer ***"
    assert "s3cret-token" not in json.dumps(result.request_headers)
    assert result.request_headers["webhook-id"] == "evt_1"


def test_send_webhook_2xx_with_error_status_retries(partner: Partner) -> None:
    # given
    partner.routes["/soft-fail"] = lambda h: respond(h, 200, b'{"status":"error"}')
    # when
    result = send(partner.url("/soft-fail"))
    # then
    assert (result.outcome, result.status_code) == (Outcome.RETRY, 200)


def test_send_webhook_503_with_retry_after_retries(partner: Partner) -> None:
    # given
    partner.routes["/busy"] = lambda h: respond(h, 503, b"busy", Retry_After="120")
    # when
    result = send(partner.url("/busy"))
    # then
    assert (result.outcome, result.status_code, result.retry_after) == (Outcome.RETRY, 503, 120)


def test_send_webhook_does_not_follow_redirect(partner: Partner) -> None:
    # given
    partner.routes["/moved"] = lambda h: respond(h, 302, Location=partner.url("/target"))
    # when
    result = send(partner.url("/moved"))
    # then
    assert (result.outcome, result.status_code) == (Outcome.DEAD, 302)
    assert [r.path for r in partner.received] == ["/moved"]


def test_send_webhook_410_is_dead_and_gone(partner: Partner) -> None:
    # given
    partner.routes["/gone"] = lambda h: respond(h, 410)
    # when
    result = send(partner.url("/gone"))
    # then
    assert (result.outcome, result.gone) == (Outcome.DEAD, True)


def test_send_webhook_reuses_pooled_connection(partner: Partner) -> None:
    # when
    send(partner.url("/ok"))
    send(partner.url("/ok"))
    # then both requests came over the same TCP connection
    assert partner.received[0].client_port == partner.received[1].client_port


def test_send_webhook_slow_server_hits_deadline(partner: Partner) -> None:
    # given a partner that thinks for 3 s
    partner.routes["/slow"] = lambda h: (time.sleep(3), respond(h, 200))
    started = time.monotonic()
    # when
    result = send(partner.url("/slow"), deadline=1.0)
    # then
    assert (result.outcome, result.error_class) == (Outcome.RETRY, "deadline_exceeded")
    assert time.monotonic() - started < 2.0


def _drip(handler: BaseHTTPRequestHandler, data: bytes, pause: float) -> None:
    for byte in data:
        handler.wfile.write(bytes([byte]))
        time.sleep(pause)


def test_send_webhook_dripping_headers_hit_deadline(partner: Partner) -> None:
    # given a partner that sends its headers one byte every 0.1 s (each recv stays short)
    partner.routes["/drip"] = lambda h: _drip(h, b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 200, 0.1)
    started = time.monotonic()
    # when
    result = send(partner.url("/drip"), deadline=1.0)
    # then
    assert (result.outcome, result.error_class) == (Outcome.RETRY, "deadline_exceeded")
    assert time.monotonic() - started < 2.0


def test_send_webhook_dripping_body_hits_deadline(partner: Partner) -> None:
    # given quick headers, then a body one byte every 0.1 s
    def drip_body(h: BaseHTTPRequestHandler) -> None:
        h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n")
        _drip(h, b"x" * 200, 0.1)

    partner.routes["/drip-body"] = drip_body
    started = time.monotonic()
    # when
    result = send(partner.url("/drip-body"), deadline=1.0)
    # then
    assert (result.outcome, result.error_class) == (Outcome.RETRY, "deadline_exceeded")
    assert result.status_code == 200
    assert time.monotonic() - started < 2.0


def test_send_webhook_reads_at_most_max_body(partner: Partner) -> None:
    # given a partner announcing and streaming a 50 MB answer
    stopped = threading.Event()
    written: list[int] = []

    def huge(h: BaseHTTPRequestHandler) -> None:
        h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 52428800\r\n\r\n")
        try:
            for _ in range(800):
                h.wfile.write(b"x" * 65536)
                written.append(65536)
        finally:
            stopped.set()

    partner.routes["/huge"] = huge
    started = time.monotonic()
    # when
    result = send(partner.url("/huge"), max_body=65536)
    # then only max_body bytes were kept and the connection was dropped early
    assert time.monotonic() - started < 2.0
    assert (result.outcome, len(result.response_body)) == (Outcome.SUCCESS, 65536)
    assert stopped.wait(5)
    assert sum(written) < 52428800  # the client hung up instead of draining the rest


def test_send_webhook_connection_refused_retries() -> None:
    # given a loopback port nobody listens on
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # when
    result = send(f"http://127.0.0.1:{port}/hook")
    # then
    assert (result.outcome, result.error_class) == (Outcome.RETRY, "connect_error")
    assert result.status_code is None


def test_send_webhook_connection_reset_retries(partner: Partner) -> None:
    # given a partner that resets the connection instead of answering
    def reset(h: BaseHTTPRequestHandler) -> None:
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()
        h.close_connection = True

    partner.routes["/reset"] = reset
    # when
    result = send(partner.url("/reset"))
    # then
    assert (result.outcome, result.error_class) == (Outcome.RETRY, "connection_reset")


def test_send_webhook_garbage_instead_of_a_status_line_retries(partner: Partner) -> None:
    # given a partner that answers bytes that are not HTTP at all
    def garbage(h: BaseHTTPRequestHandler) -> None:
        h.wfile.write(b"\x00\x01\x02 not http\x00\r\n\r\n")
        h.wfile.flush()
        h.close_connection = True

    partner.routes["/garbage"] = garbage
    # when
    result = send(partner.url("/garbage"))
    # then it is a broken answer, tried again later (not a dead URL): libcurl calls it
    # HTTP/0.9, http.client a bad status line
    assert result.outcome == Outcome.RETRY and result.status_code is None
    assert result.error_class in ("protocol_error", "network_error") and result.error_message


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
def test_send_webhook_https_keeps_host_name_for_sni_and_certificate(
    tmp_path: Path, fake_dns: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a TLS partner whose certificate names partner.local, reached through 127.0.0.1
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=partner.local"
    command += " -addext subjectAltName=DNS:partner.local"
    subprocess.run(
        [*command.split(), "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    seen_sni: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: seen_sni.append(name)
    state, stop = start_partner(lambda s: context.wrap_socket(s, server_side=True))
    fake_dns["partner.local"] = ["127.0.0.1"]
    policy = OutboundPolicy.from_setting("127.0.0.0/8")
    if CLIENT == "curl":
        monkeypatch.setattr(curl_client, "CA_BUNDLE", str(cert))
    else:
        monkeypatch.setattr(requests_client._session_for(policy), "verify", str(cert))
    # when
    try:
        result = send(f"https://partner.local:{state.port}/ok", policy=policy)
    finally:
        stop()
    # then
    assert result.outcome == Outcome.SUCCESS, result.error_message
    assert seen_sni == ["partner.local"]


def test_send_webhook_rejects_an_unknown_client(partner: Partner) -> None:
    # when / then
    with pytest.raises(ValueError, match="unknown delivery client"):
        send_webhook(
            url=partner.url("/ok"),
            body=BODY,
            msg_id="e",
            secrets=[SECRET],
            policy=LOOPBACK,
            client="telnet",
        )
    assert partner.received == []


def test_send_webhook_dns_rebinding_never_reaches_the_new_address(
    partner: Partner, monkeypatch: pytest.MonkeyPatch, connect_attempts: list[object]
) -> None:
    # given a name that resolves to the (allowlisted) partner, then to a private address,
    # and a partner that closes every connection so the second request must connect anew
    answers = iter([["127.0.0.1"], ["10.0.0.5"]])
    lookups: list[str] = []
    monkeypatch.setattr(
        delivery, "resolve", lambda host, port: lookups.append(host) or next(answers)
    )
    partner.routes["/close"] = lambda h: respond(h, 200, b"{}", Connection="close")
    url = partner.url("/close", host="rebind.test")
    # when
    first, second = send(url), send(url)
    # then each connection resolved once, and only the vetted loopback address was dialled
    assert first.outcome == Outcome.SUCCESS, first.error_message
    assert (second.outcome, second.error_class) == (Outcome.DEAD, "blocked_destination")
    assert "10.0.0.5" in second.error_message
    assert lookups == ["rebind.test", "rebind.test"]
    assert connect_attempts == [("127.0.0.1", partner.port)]
    assert len(partner.received) == 1


def test_send_webhook_strict_policy_never_reuses_a_lenient_connection(partner: Partner) -> None:
    # given a kept-alive connection opened under a policy that allows loopback
    assert send(partner.url("/ok"), policy=LOOPBACK).outcome == Outcome.SUCCESS
    # when the same URL is sent under the strict policy
    result = send(partner.url("/ok"), policy=STRICT)
    # then the guard refuses it instead of reusing the open connection
    assert result.error_class == "blocked_destination"
    assert len(partner.received) == 1


@pytest.mark.parametrize("variable", ["http_proxy", "HTTP_PROXY", "ALL_PROXY", "all_proxy"])
def test_send_webhook_ignores_proxies_from_the_environment(
    variable: str,
    partner: Partner,
    fake_dns: dict[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    connect_attempts: list[object],
) -> None:
    # given a proxy in the environment, on a loopback port where nothing listens
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, f"http://127.0.0.1:{closed_port}")
    fake_dns["partner.test"] = ["127.0.0.1"]
    # when
    result = send(partner.url("/ok", host="partner.test"))
    # then the request went straight to the partner, in origin form (not through a proxy)
    assert result.outcome == Outcome.SUCCESS, result.error_message
    assert [r.path for r in partner.received] == ["/ok"]
    assert connect_attempts == [("127.0.0.1", partner.port)]


def test_send_webhook_ignores_netrc(
    partner: Partner,
    fake_dns: dict[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    # given a .netrc with credentials for the partner's host
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine partner.test login user password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(netrc))
    fake_dns["partner.test"] = ["127.0.0.1"]
    # when
    result = send(partner.url("/ok", host="partner.test"))
    # then no credentials were attached
    assert result.outcome == Outcome.SUCCESS
    assert "Authorization" not in partner.received[0].headers


def test_send_webhook_url_credentials_travel_as_basic_auth_and_are_redacted(
    partner: Partner,
) -> None:
    # when
    result = send(f"http://user:p%40ss@127.0.0.1:{partner.port}/ok")
    # then
    expected = "Basic " + base64.b64encode(b"user:p@ss").decode()
    assert partner.received[0].headers["Authorization"] == expected
    assert result.request_headers["Authorization"] == "Bearer ***"


def test_send_webhook_records_the_headers_sent(partner: Partner) -> None:
    # when
    result = send(partner.url("/ok"), bearer_token="t")
    # then what was recorded is what the partner got (Authorization redacted)
    received = partner.received[0].headers
    for name, value in result.request_headers.items():
        assert received[name] == ("Bearer t" if name == "Authorization" else value)
    assert result.request_headers["Content-Length"] == str(len(BODY))


def test_send_webhook_parses_response_headers(partner: Partner) -> None:
    # given an answer with a repeated header
    def twice(h: BaseHTTPRequestHandler) -> None:
        h.send_response(202)
        h.send_header("X-Seen", "a")
        h.send_header("X-Seen", "b")
        h.send_header("Content-Length", "0")
        h.end_headers()

    partner.routes["/twice"] = twice
    # when
    result = send(partner.url("/twice"))
    # then
    assert result.status_code == 202
    assert result.response_headers["X-Seen"] == "a, b"
    assert result.response_headers["Content-Length"] == "0"


def test_send_webhook_fresh_connection_after_fork(partner: Partner) -> None:
    # given a kept-alive connection in this process
    send(partner.url("/ok"))
    read_end, write_end = os.pipe()
    # when a forked child sends
    pid = os.fork()
    if pid == 0:  # the child: report its outcome, never return into pytest
        code = 1
        try:
            result = send(partner.url("/ok"))
            os.write(write_end, str(result.outcome).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    outcome = os.read(read_end, 100).decode()
    os.close(read_end)
    send(partner.url("/ok"))
    # then the child used a connection of its own, and the parent's still works
    assert status == 0 and outcome == Outcome.SUCCESS
    ports = [r.client_port for r in partner.received]
    assert len(ports) == 3
    assert ports[1] != ports[0]
    assert ports[2] == ports[0]


def test_send_webhook_threads_do_not_share_a_connection(partner: Partner) -> None:
    # given two requests in flight at once
    gate = threading.Barrier(2, timeout=5)
    partner.routes["/wait"] = lambda h: (gate.wait(), ok_route(h))
    results: list[delivery.DeliveryResult] = []
    threads = [
        threading.Thread(target=lambda: results.append(send(partner.url("/wait"))))
        for _ in range(2)
    ]
    # when
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    # then both were answered, over two connections
    assert [r.outcome for r in results] == [Outcome.SUCCESS, Outcome.SUCCESS]
    assert len({r.client_port for r in partner.received}) == 2


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="needs an IPv6 loopback")
def test_send_webhook_reaches_a_host_name_with_only_an_ipv6_address(
    fake_dns: dict[str, list[str]], connect_attempts: list[object]
) -> None:
    # given a partner on ::1 only, reached by a name that resolves to ::1 only
    class Server6(ThreadingHTTPServer):
        address_family = socket.AF_INET6

    server = Server6(("::1", 0), BaseHTTPRequestHandler)
    state = Partner(port=server.server_address[1])
    server.RequestHandlerClass = make_handler(state)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    fake_dns["six.test"] = ["::1"]
    # when
    try:
        result = send(f"http://six.test:{state.port}/ok")
    finally:
        server.shutdown()
        server.server_close()
    # then it went to ::1, the vetted address
    assert result.outcome == Outcome.SUCCESS, result.error_message
    assert [a[:2] for a in connect_attempts] == [("::1", state.port)]
    assert state.received[0].headers["Host"] == f"six.test:{state.port}"
