"""Unit tests of the outbound webhook transport (integrations/delivery.py).

No database and no network beyond loopback: every test runs with a connect guard that fails
on any non-loopback connect, and with a fake resolver so no DNS query leaves the machine.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from integrations import deadlines, delivery
from integrations.delivery import send_webhook
from integrations.ssrf import OutboundPolicy, address_block_reason
from integrations.webhooks import (
    Outcome,
    classify,
    generate_secret,
    parse_retry_after,
    sign_headers,
)

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"o" * 32).decode()
BODY = json.dumps({"eventId": "evt_1", "message": "héllo"}).encode()
STRICT = OutboundPolicy()
LOOPBACK = OutboundPolicy.from_setting("127.0.0.0/8,::1")


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def connect_attempts(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record every outbound connect; fail the test on any non-loopback target."""
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def guarded_connect(sock: socket.socket, address: object) -> None:
        attempts.append(address)
        if isinstance(address, tuple):
            target = ipaddress.ip_address(str(address[0]).split("%")[0])
            if target not in ipaddress.ip_network("127.0.0.0/8") and str(target) != "::1":
                pytest.fail(f"test traffic must stay on loopback, tried {address}")
        real_connect(sock, address)

    def no_create_connection(*args: object, **kwargs: object) -> None:
        pytest.fail("socket.create_connection must not be used by the guarded transport")

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "create_connection", no_create_connection)
    return attempts


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Host name -> addresses the transport will see; unknown names fail to resolve."""
    records: dict[str, list[str]] = {}

    def resolve(host: str, port: int) -> list[str]:
        if host not in records:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return records[host]

    monkeypatch.setattr(delivery, "resolve", resolve)
    return records


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
        url=url, body=BODY, msg_id="evt_1", secrets=[SECRET], policy=policy, **kwargs
    )


# --- signatures ----------------------------------------------------------------------------


def test_sign_headers_verifies_with_standardwebhooks() -> None:
    # given / when
    headers = sign_headers(msg_id="evt_1", body=BODY, secrets=[SECRET])
    # then
    assert Webhook(SECRET).verify(BODY, headers) == json.loads(BODY)


def test_sign_headers_with_two_secrets_each_secret_verifies_alone() -> None:
    # given a rotation in progress
    headers = sign_headers(msg_id="evt_1", body=BODY, secrets=[SECRET, OLD_SECRET])
    # when / then
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET, OLD_SECRET):
        Webhook(secret).verify(BODY, headers)


def test_sign_headers_webhook_id_is_msg_id() -> None:
    # given / when
    headers = sign_headers(msg_id="evt_42", body=BODY, secrets=[SECRET])
    # then
    assert headers["webhook-id"] == "evt_42"


def test_sign_headers_converts_aware_timestamp_to_unix_seconds() -> None:
    # given a timestamp in a non-UTC zone
    moment = datetime(2030, 1, 2, 5, 0, tzinfo=timezone(timedelta(hours=2)))
    # when
    headers = sign_headers(msg_id="evt_1", body=BODY, secrets=[SECRET], timestamp=moment)
    # then the header and the signature use the same instant
    assert headers["webhook-timestamp"] == str(int(moment.timestamp()))
    expected = Webhook(SECRET).sign("evt_1", moment.astimezone(UTC), BODY.decode())
    assert headers["webhook-signature"] == expected


@pytest.mark.parametrize("secrets", [[], ["not-a-whsec"], SECRET, ["whsec_"]])
def test_sign_headers_without_usable_secret_raises(secrets: list[str] | str) -> None:
    # when / then
    with pytest.raises(ValueError):
        sign_headers(msg_id="evt_1", body=BODY, secrets=secrets)


def test_generate_secret_is_a_fresh_32_byte_whsec() -> None:
    # when
    first, second = generate_secret(), generate_secret()
    # then
    assert first.startswith("whsec_") and first != second
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32
    Webhook(first).verify(BODY, sign_headers(msg_id="e", body=BODY, secrets=[first]))


# --- SSRF ----------------------------------------------------------------------------------

# Whitespace-separated so the tables stay tables.
BLOCKED_ADDRESSES = """
    127.0.0.1 127.255.255.254 10.0.0.1 10.255.255.255 172.16.0.1 172.31.255.254 192.168.1.1
    169.254.169.254 169.254.0.1 100.64.0.1 100.127.255.254 224.0.0.1 239.255.255.250
    240.0.0.1 255.255.255.255 0.0.0.0 0.1.2.3 192.0.0.8 192.0.2.1 198.18.0.1 198.19.255.254
    198.51.100.7 203.0.113.9 192.88.99.1
    ::1 :: ::ffff:127.0.0.1 ::ffff:10.0.0.1 ::ffff:169.254.169.254 ::127.0.0.1 ::ffff:0:7f00:1
    64:ff9b::a9fe:a9fe 64:ff9b::7f00:1 64:ff9b:1:a9fe:a9:fe00:: 64:ff9b:1::a9fe:a9fe
    2002:7f00:1:: 2002:a9fe:a9fe:: 2002:a00:1:: fe80::1 fc00::1 fd12:3456::1 fec0::1 ff02::1
    ff05::2 2001:db8::1 2001:0:4136:e378:8000:63bf:3fff:fdd2 2001:2::1 100::1 3fff::1
""".split()
PUBLIC_ADDRESSES = """
    8.8.8.8 1.1.1.1 93.184.216.34 172.32.0.1 100.128.0.1 192.169.0.1 2606:4700:4700::1111
    2a00:1450:4001::1 ::ffff:8.8.8.8 64:ff9b::808:808 2002:808:808::
""".split()


def _url_for(address: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:8080/hook"


@pytest.mark.parametrize("address", BLOCKED_ADDRESSES)
def test_address_block_reason_refuses_non_public(address: str) -> None:
    # when
    reason = address_block_reason(ipaddress.ip_address(address))
    # then
    assert reason is not None


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "cgnat"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("fc00::1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("2002:a9fe:a9fe::", "link-local"),
        ("2001:db8::1", "reserved"),
    ],
)
def test_address_block_reason_names_the_range(address: str, reason: str) -> None:
    # when / then
    assert address_block_reason(ipaddress.ip_address(address)).startswith(reason)


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_address_block_reason_allows_public(address: str) -> None:
    # when / then
    assert address_block_reason(ipaddress.ip_address(address)) is None


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


def test_outbound_policy_from_setting_parses_networks_and_hosts() -> None:
    # when
    policy = OutboundPolicy.from_setting(" 127.0.0.0/8, ::1 ,Partner.Local.,, ")
    # then
    assert policy.allowlist_networks == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert policy.allowlist_hosts == frozenset({"partner.local"})


@pytest.mark.parametrize(
    "entry", ["10.0.0.1/8", "10.0.0.0/33", "999.1.1.1", "http://x", "*.example.com", "a b", "-x.io"]
)
def test_outbound_policy_from_setting_rejects_bad_entry(entry: str) -> None:
    # when / then
    with pytest.raises(ValueError, match="allowlist entry"):
        OutboundPolicy.from_setting(f"127.0.0.0/8,{entry}")


def test_outbound_policy_from_setting_empty_allows_nothing_special() -> None:
    # when
    policy = OutboundPolicy.from_setting("")
    # then
    assert policy == STRICT
    assert policy.block_reason("x", ipaddress.ip_address("127.0.0.1")) == "loopback"


def test_outbound_policy_block_reason_allows_mapped_form_of_allowlisted_network() -> None:
    # when / then
    assert LOOPBACK.block_reason("x", ipaddress.ip_address("::ffff:127.0.0.1")) is None


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


# --- outcome table (SPEC §5) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, b"", Outcome.SUCCESS),
        (201, b"", Outcome.SUCCESS),
        (204, b"", Outcome.SUCCESS),
        (200, b'{"status":"success"}', Outcome.SUCCESS),
        (200, b'{"status":"error"}', Outcome.RETRY),
        (200, b"<html>thanks</html>", Outcome.SUCCESS),
        (200, b'[{"status":"error"}]', Outcome.SUCCESS),
        (200, b'{"received":true}', Outcome.SUCCESS),
        (301, b"", Outcome.DEAD),
        (302, b"", Outcome.DEAD),
        (400, b"", Outcome.DEAD),
        (401, b"", Outcome.DEAD),
        (404, b"", Outcome.DEAD),
        (408, b"", Outcome.RETRY),
        (409, b"", Outcome.DEAD),
        (410, b"", Outcome.DEAD),
        (422, b"", Outcome.DEAD),
        (429, b"", Outcome.RETRY),
        (500, b"", Outcome.RETRY),
        (502, b"", Outcome.RETRY),
        (503, b"", Outcome.RETRY),
        (None, b"", Outcome.RETRY),
    ],
)
def test_classify_follows_spec_outcome_table(
    status: int | None, body: bytes, expected: Outcome
) -> None:
    # when / then
    assert classify(status, body, "application/json") == expected


def test_classify_reads_json_status_even_when_labelled_text() -> None:
    # when / then
    assert classify(200, b' {"status":"error"}', "text/plain") == Outcome.RETRY


# --- parse_retry_after ---------------------------------------------------------------------

NOW = datetime(2030, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("Wed, 01 May 2030 12:02:00 GMT", 120.0),
        ("Wed, 01 May 2030 11:00:00 GMT", 0.0),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after_reads_seconds_and_dates(
    value: str | None, expected: float | None
) -> None:
    # when / then
    assert parse_retry_after(value, now=NOW) == expected


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
    monkeypatch.setattr(delivery._session_for(policy), "verify", str(cert))
    # when
    try:
        result = send(f"https://partner.local:{state.port}/ok", policy=policy)
    finally:
        stop()
    # then
    assert result.outcome == Outcome.SUCCESS, result.error_message
    assert seen_sni == ["partner.local"]


def test_session_for_is_shared_and_rebuilt_after_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    # given
    first = delivery._session_for(LOOPBACK)
    assert delivery._session_for(LOOPBACK) is first
    # when the process id changes (we are a forked child)
    monkeypatch.setattr(os, "getpid", lambda: -1)
    # then the parent's pooled sockets are not reused
    assert delivery._session_for(LOOPBACK) is not first
