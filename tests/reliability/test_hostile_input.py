"""Hostile input over real sockets to a real server (gunicorn): hand-made malformed requests,
random byte-level mutations, and a schemathesis run (≥ 5,000 requests at full size).

Promise (SPEC §3.4): no request yields a server error for bad input, and every refusal is the
envelope {"status": "error", "code", "message", "errors"}.
"""

from __future__ import annotations

import gzip
import json
import random
import socket
import time
import zlib
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from integrations.models import Event
from tests.conftest import OWNER, command_body, incoming_body, outgoing_body
from tests.reliability.conftest import sizes

IN = "/api/v1/engine/incoming"
OUT = "/api/v1/outgoing"
CMD = "/api/v1/command"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def envelope(self) -> dict | None:
        """The parsed error envelope, or None when the body is not one."""
        try:
            doc = json.loads(self.body)
        except ValueError:
            return None
        if not isinstance(doc, dict) or set(doc) != {"status", "code", "message", "errors"}:
            return None
        ok = (
            doc["status"] == "error"
            and isinstance(doc["code"], str)
            and doc["code"]
            and isinstance(doc["message"], str)
            and doc["message"]
            and isinstance(doc["errors"], dict)
        )
        return doc if ok else None


def raw_request(
    base_url: str,
    method: str,
    path: str,
    headers: dict[str, str | bytes],
    body: bytes = b"",
    *,
    chunked: bool = False,
    timeout: float = 30,
) -> Answer:
    """One HTTP/1.1 request written byte for byte on a fresh socket (no client library in
    between to tidy it up); reads the answer until the server closes."""
    parts = urlsplit(base_url)
    lines = [
        f"{method} {path} HTTP/1.1".encode(),
        f"Host: {parts.netloc}".encode(),
        b"Connection: close",
    ]
    for name, value in headers.items():
        lines.append(
            name.encode() + b": " + (value if isinstance(value, bytes) else value.encode("latin-1"))
        )
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
        payload = (
            b"".join(
                b"%x\r\n%s\r\n" % (len(body[i : i + 1000]), body[i : i + 1000])
                for i in range(0, len(body), 1000)
            )
            + b"0\r\n\r\n"
        )
    else:
        lines.append(b"Content-Length: %d" % len(body))
        payload = body
    request = b"\r\n".join(lines) + b"\r\n\r\n" + payload
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early (413) and stopped reading: read that answer
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    head, _, content = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ")[1]) if status_line.startswith("HTTP/") else 0
    answer_headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        answer_headers[name.strip().lower()] = value.strip()
    return Answer(status, answer_headers, content)


def _json(body: dict) -> bytes:
    return json.dumps(body).encode()


def _valid_incoming(**overrides) -> bytes:
    return _json(incoming_body(ticketNumber="hostile-1", **overrides))


def _with(raw: bytes, text: str) -> bytes:
    """Insert raw JSON text `text` as an extra member of a valid body."""
    return raw[:-1] + b", " + text.encode("utf-8", "surrogatepass") + b"}"


JSON = {"Content-Type": "application/json"}

# name -> (method, path, key kind, extra headers, body, chunked, the answers we accept)
# An expected code of None accepts any refusal in the envelope (or a 2xx: a request that is
# odd but acceptable, e.g. an unknown key, is stored, not refused).
CASES: dict[str, tuple] = {
    "invalid utf-8": (
        IN,
        "engine",
        JSON,
        b'{"message": "\xff\xfe\xfd"}',
        False,
        {400: "invalid_json"},
    ),
    "overlong utf-8 nul": (
        IN,
        "engine",
        JSON,
        _valid_incoming()[:-1] + b', "x": "\xc0\x80"}',
        False,
        {400: "invalid_json"},
    ),
    "deep nesting arrays": (
        IN,
        "engine",
        JSON,
        b"[" * 100_000 + b"]" * 100_000,
        False,
        {400: "invalid_json"},
    ),
    "deep nesting objects": (
        IN,
        "engine",
        JSON,
        b'{"a":' * 40_000 + b"1" + b"}" * 40_000,
        False,
        {400: "invalid_json"},
    ),
    "nesting 33 levels in a valid body": (
        IN,
        "engine",
        JSON,
        _with(_valid_incoming(), '"x": ' + "[" * 33 + "]" * 33),
        False,
        {400: "invalid_json"},
    ),
    "huge integer": (
        IN,
        "engine",
        JSON,
        b'{"n": ' + b"9" * 100_000 + b"}",
        False,
        {400: "invalid_json"},
    ),
    "huge float overflow in unknown key": (
        IN,
        "engine",
        JSON,
        _with(_valid_incoming(), '"n": 1e999999'),
        False,
        {202: None},
    ),
    "huge float as message": (
        IN,
        "engine",
        JSON,
        _valid_incoming().replace(b'"Halo"', b"1e999999"),
        False,
        {400: "validation_error"},
    ),
    "NaN": (IN, "engine", JSON, _with(_valid_incoming(), '"n": NaN'), False, {400: "invalid_json"}),
    "huge message string": (
        IN,
        "engine",
        JSON,
        _valid_incoming(message="x" * 200_000),
        False,
        {400: "validation_error"},
    ),
    "huge unknown string over 256 KiB": (
        IN,
        "engine",
        JSON,
        _valid_incoming(notes="x" * 300_000),
        False,
        {413: "payload_too_large"},
    ),
    "10 MB body": (
        IN,
        "engine",
        JSON,
        b'{"a": "' + b"x" * (10 * 1024 * 1024) + b'"}',
        False,
        {413: "payload_too_large"},
    ),
    "text/plain": (
        IN,
        "engine",
        {"Content-Type": "text/plain"},
        _valid_incoming(),
        False,
        {415: "unsupported_media_type"},
    ),
    "form encoded": (
        IN,
        "engine",
        {"Content-Type": "application/x-www-form-urlencoded"},
        b"ticketNumber=1&owner=x",
        False,
        {415: "unsupported_media_type"},
    ),
    "multipart": (
        IN,
        "engine",
        {"Content-Type": "multipart/form-data; boundary=zz"},
        b"--zz\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--zz--\r\n",
        False,
        {415: "unsupported_media_type"},
    ),
    "xml": (
        IN,
        "engine",
        {"Content-Type": "application/xml"},
        b"<a/>",
        False,
        {415: "unsupported_media_type"},
    ),
    "no content type": (
        IN,
        "engine",
        {},
        _valid_incoming(),
        False,
        {415: "unsupported_media_type"},
    ),
    "json-ish subtype": (
        IN,
        "engine",
        {"Content-Type": "application/jsonx"},
        _valid_incoming(),
        False,
        {415: "unsupported_media_type"},
    ),
    "charset utf-16": (
        IN,
        "engine",
        {"Content-Type": "application/json; charset=utf-16"},
        json.dumps(incoming_body()).encode("utf-16"),
        False,
        {415: "unsupported_media_type"},
    ),
    "charset latin-1": (
        IN,
        "engine",
        {"Content-Type": "application/json; charset=latin-1"},
        _valid_incoming(),
        False,
        {415: "unsupported_media_type"},
    ),
    "gzip content-encoding": (
        IN,
        "engine",
        {**JSON, "Content-Encoding": "gzip"},
        gzip.compress(_valid_incoming()),
        False,
        {400: "invalid_json"},
    ),
    "gzip bomb": (
        IN,
        "engine",
        {**JSON, "Content-Encoding": "gzip"},
        gzip.compress(b"[" * (50 * 1024 * 1024)),
        False,
        {400: "invalid_json"},
    ),
    "deflate content-encoding": (
        IN,
        "engine",
        {**JSON, "Content-Encoding": "deflate"},
        zlib.compress(_valid_incoming()),
        False,
        {400: "invalid_json"},
    ),
    "duplicate keys": (
        IN,
        "engine",
        JSON,
        _with(_valid_incoming(), '"owner": "other"'),
        False,
        {400: "invalid_json"},
    ),
    "raw NUL byte in a string": (
        IN,
        "engine",
        JSON,
        _valid_incoming().replace(b'"Halo"', b'"Ha\x00lo"'),
        False,
        {400: "invalid_json"},
    ),
    "escaped NUL in message": (
        IN,
        "engine",
        JSON,
        _valid_incoming(message="Ha\u0000lo"),
        False,
        {400: "validation_error"},
    ),
    "escaped NUL in customerName": (
        IN,
        "engine",
        JSON,
        _valid_incoming(customerName="Far\u0000han"),
        False,
        {400: "validation_error"},
    ),
    "escaped NUL in ticketNumber": (
        IN,
        "engine",
        JSON,
        _json(incoming_body(ticketNumber="t\u00001")),
        False,
        {400: "validation_error"},
    ),
    "escaped NUL in owner": (
        IN,
        "engine",
        JSON,
        _valid_incoming(owner=OWNER + "\u0000"),
        False,
        {400: "validation_error"},
    ),
    "escaped NUL in unknown key": (
        IN,
        "engine",
        JSON,
        _valid_incoming(extra="a\u0000b"),
        False,
        {202: None},
    ),
    "lone surrogate in message": (
        IN,
        "engine",
        JSON,
        _valid_incoming().replace(b'"Halo"', b'"\\ud800"'),
        False,
        {400: "validation_error"},
    ),
    "lone low surrogate in customerName": (
        IN,
        "engine",
        JSON,
        _valid_incoming().replace(b'"Farhan Akbar"', b'"Far\\udfffhan"'),
        False,
        {400: "validation_error"},
    ),
    "lone surrogate in contactId": (
        IN,
        "engine",
        JSON,
        _valid_incoming().replace(b'"d61d77735f3fe08bcf6d6b96fa06ba9d"', b'"\\ud800"'),
        False,
        {400: "validation_error"},
    ),
    "lone surrogate as a key": (
        IN,
        "engine",
        JSON,
        _with(_valid_incoming(), '"\\ud800": 1'),
        False,
        {202: None},
    ),
    "surrogate pair (valid emoji)": (
        IN,
        "engine",
        JSON,
        _valid_incoming().replace(b'"Halo"', b'"\\ud83d\\ude00"'),
        False,
        {202: None},
    ),
    "utf-8 BOM": (
        IN,
        "engine",
        JSON,
        b"\xef\xbb\xbf" + _valid_incoming(),
        False,
        {400: "invalid_json"},
    ),
    "empty body": (IN, "engine", JSON, b"", False, {400: "invalid_json"}),
    "top-level array": (IN, "engine", JSON, b"[1,2]", False, {400: "invalid_body"}),
    "top-level null": (IN, "engine", JSON, b"null", False, {400: "invalid_body"}),
    "values of the wrong type": (
        IN,
        "engine",
        JSON,
        _json({k: 1 for k in incoming_body()}),
        False,
        {400: "validation_error"},
    ),
    "chunked without length": (
        IN,
        "engine",
        JSON,
        _valid_incoming(),
        True,
        {411: "length_required"},
    ),
    "chunked partner reply": (
        OUT,
        "partner",
        JSON,
        _json(outgoing_body()),
        True,
        {411: "length_required"},
    ),
    "idempotency key too long": (
        IN,
        "engine",
        {**JSON, "Idempotency-Key": "k" * 256},
        _valid_incoming(),
        False,
        {400: "validation_error"},
    ),
    "idempotency key latin-1 bytes": (
        IN,
        "engine",
        {**JSON, "Idempotency-Key": b"k\xe9\xff"},
        _valid_incoming(),
        False,
        {202: None},
    ),
    "partner: escaped NUL in command event": (
        CMD,
        "partner",
        JSON,
        _json(command_body(event="cl\u0000ose")),
        False,
        {400: "validation_error"},
    ),
    "partner: lone surrogate in reply": (
        OUT,
        "partner",
        JSON,
        _json(outgoing_body()).replace(b'"Halo, ada yang bisa dibantu?"', b'"\\udbff"'),
        False,
        {400: "validation_error"},
    ),
    "partner: reply 10 MB": (
        OUT,
        "partner",
        JSON,
        b"{" + b" " * (10 * 1024 * 1024) + b"}",
        False,
        {413: "payload_too_large"},
    ),
}

GET_CASES: dict[str, tuple[str, dict[int, str | None]]] = {
    "NUL in ticket number": ("/api/v1/tickets/a%00b/messages", {404: "ticket_not_found"}),
    "NUL in contact id": ("/api/v1/contacts/a%00b", {404: "contact_not_found"}),
    "NUL in event id": ("/api/v1/events/a%00b", {404: "event_not_found"}),
    "surrogate bytes in contact id": ("/api/v1/contacts/%ED%A0%80", {404: "contact_not_found"}),
    "invalid utf-8 in ticket number": (
        "/api/v1/tickets/%FF%FE/messages",
        {404: "ticket_not_found"},
    ),
    "3,000-character contact id": ("/api/v1/contacts/" + "c" * 3_000, {404: "contact_not_found"}),
    "traversal in contact id": ("/api/v1/contacts/..%2f..%2fadmin", {404: None}),
    "negative limit": (
        "/api/v1/tickets/hostile-1/messages?limit=-1",
        {400: "validation_error", 404: "ticket_not_found"},
    ),
    "huge after": (
        "/api/v1/tickets/hostile-1/messages?after=" + "9" * 40,
        {400: "validation_error", 404: "ticket_not_found"},
    ),
    "NUL in limit": (
        "/api/v1/tickets/hostile-1/messages?limit=%00",
        {400: "validation_error", 404: "ticket_not_found"},
    ),
    "unknown API path": ("/api/v1/nope%00", {404: "not_found"}),
}


def _headers(kind: str, keys: dict[str, str], extra: dict) -> dict:
    return {"Authorization": f"Bearer {keys[kind]}", **extra}


def _check(name: str, answer: Answer, expected: dict[int, str | None]) -> str | None:
    """A problem with one answer, or None when it is one we accept."""
    if answer.status >= 500 or answer.status == 0:
        return f"{name}: server error {answer.status} {answer.body[:200]!r}"
    if answer.status >= 400:
        envelope = answer.envelope()
        if envelope is None:
            return f"{name}: refusal {answer.status} not in the envelope: {answer.body[:200]!r}"
        code = envelope["code"]
    else:
        code = None
    if answer.status not in expected:
        return f"{name}: answered {answer.status} ({code}), expected one of {sorted(expected)}"
    if expected[answer.status] is not None and expected[answer.status] != code:
        return f"{name}: code {code!r}, expected {expected[answer.status]!r}"
    return None


@pytest.fixture
def keys(web, engine_api, partner_api, partner):
    # a ticket for the partner's calls
    engine_api.post(IN, incoming_body())
    return {"engine": engine_api.key, "partner": partner_api.key}


@pytest.mark.parametrize("size", sizes(ci={"rounds": 1}, full={"rounds": 3}))
def test_hostile_requests_get_no_server_error_and_every_refusal_is_the_envelope(
    size, web, keys, figures
):
    # given a real gunicorn on the test database, and the hand-made cases
    problems: list[str] = []
    statuses: dict[int, int] = {}
    started, log_start = time.monotonic(), web.log_size()
    # when each is sent over a raw socket (full size: several rounds)
    for _ in range(size.rounds):
        for name, (path, kind, extra, body, chunked, expected) in CASES.items():
            answer = raw_request(
                web.url, "POST", path, _headers(kind, keys, extra), body, chunked=chunked
            )
            statuses[answer.status] = statuses.get(answer.status, 0) + 1
            problems.append(_check(name, answer, expected))
        for name, (path, expected) in GET_CASES.items():
            answer = raw_request(web.url, "GET", path, _headers("partner", keys, {}))
            statuses[answer.status] = statuses.get(answer.status, 0) + 1
            problems.append(_check(name, answer, expected))
    # then no server error, every refusal in the envelope with the expected code
    problems = [p for p in problems if p]
    log = web.log_text(since=log_start)
    figures.record(
        size,
        "hostile_handmade",
        requests=sum(statuses.values()),
        statuses=dict(sorted(statuses.items())),
        problems=len(problems),
        seconds=round(time.monotonic() - started, 1),
    )
    assert not problems, "\n".join(problems)
    assert "Internal Server Error" not in log and "Traceback" not in log
    # and the accepted odd-but-valid bodies were stored as events
    assert any(b"1e999999" in bytes(e.raw_body) for e in Event.objects.all())


def _mutate(rng: random.Random, valid: bytes) -> bytes:
    """One random byte-level mutation of a valid body."""
    data = bytearray(valid)
    choice = rng.randrange(8)
    if choice == 0:  # flip bytes
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif choice == 1:  # truncate
        del data[rng.randrange(len(data)) :]
    elif choice == 2:  # insert hostile text at a random place
        insert = rng.choice(
            [
                b"\\u0000",
                b"\\ud800",
                b"\x00",
                b"\xff",
                b"\xed\xa0\x80",
                b"[" * 40,
                b"1e999",
                b'"',
                b"\\",
                b"\r\n",
            ]
        )
        at = rng.randrange(len(data))
        data[at:at] = insert
    elif choice == 3:  # replace a string value with a hostile one
        text = data.decode("utf-8", "replace")
        key = rng.choice(list(incoming_body()))
        value = rng.choice(
            [
                '"\\u0000"',
                '"\\udfff"',
                "null",
                "[]",
                "{}",
                "1e400",
                "-0",
                '"' + "x" * 5000 + '"',
                "true",
                '" "',
            ]
        )
        text = text.replace(f'"{key}": ', f'"{key}": {value}, "_{key}": ', 1)
        data = bytearray(text.encode("utf-8", "surrogatepass"))
    elif choice == 4:  # duplicate a key
        data = bytearray(_with(bytes(data), '"channel": "telegram"'))
    elif choice == 5:  # wrap in an array
        data = bytearray(b"[" + bytes(data) + b"]")
    elif choice == 6:  # swap two random bytes
        i, j = rng.randrange(len(data)), rng.randrange(len(data))
        data[i], data[j] = data[j], data[i]
    else:  # random garbage of random length
        data = bytearray(rng.randbytes(rng.randint(0, 2000)))
    return bytes(data)


@pytest.mark.parametrize(
    "size", sizes(ci={"requests": 60}, full={"requests": 3000}, scaled=("requests",))
)
def test_random_mutations_never_yield_a_server_error(size, web, keys, figures):
    # given valid engine and partner bodies
    rng = random.Random(8)
    bases = [
        (IN, "engine", _valid_incoming()),
        (OUT, "partner", _json(outgoing_body())),
        (CMD, "partner", _json(command_body(ticketNumber="none"))),
    ]
    problems: list[str] = []
    statuses: dict[int, int] = {}
    # when random mutations of them are posted over real sockets
    for i in range(size.requests):
        path, kind, valid = rng.choice(bases)
        body = _mutate(rng, valid)
        answer = raw_request(web.url, "POST", path, _headers(kind, keys, JSON), body)
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
        problem = _check(
            f"mutation {i} {body[:120]!r}",
            answer,
            {200: None, 202: None, 400: None, 403: None, 404: None, 409: None, 413: None},
        )
        if problem:
            problems.append(problem)
    # then nothing is a server error and every refusal is the envelope
    figures.record(
        size,
        "hostile_mutations",
        requests=size.requests,
        statuses=dict(sorted(statuses.items())),
        problems=len(problems),
    )
    assert not problems, "\n".join(problems[:20])


def _gunicorn_framing_refusal(response) -> bool:
    """gunicorn's own HTML 414 for a request line over 4094 bytes: the request never reached
    the application (docs/RELIABILITY.md, known limits)."""
    return response.status_code == 414 and b"Request Line is too large" in response.content


def _checks(server_refusals: list[str]) -> list:
    """The API's contract checks; a gunicorn framing refusal is counted, not judged."""

    def unless_server_refusal(check):
        def run(ctx, response, case):
            if _gunicorn_framing_refusal(response):
                server_refusals.append(case.operation.label)
                return None
            return check(ctx, response, case)

        run.__name__ = check.__name__
        return run

    return [
        unless_server_refusal(check)
        for check in (
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        )
    ]


@pytest.mark.parametrize(
    "size", sizes(ci={"examples": 4}, full={"examples": 420}, scaled=("examples",))
)
def test_schemathesis_against_gunicorn_finds_no_failures(size, web, keys, figures):
    # given the schema served by the real server
    schema = schemathesis.openapi.from_url(f"{web.url}/api/schema/?format=json")
    failures: list[str] = []
    server_refusals: list[str] = []
    checks = _checks(server_refusals)
    calls = 0
    started = time.monotonic()
    # when every operation is exercised with valid and invalid data
    for result in schema.get_all_operations():
        operation = result.ok()
        key = keys["engine"] if "/engine/" in operation.path else keys["partner"]
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis_settings(
                max_examples=size.examples,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate],
            )
            def exercise(case):
                nonlocal calls
                calls += 1
                case.call_and_validate(
                    base_url=web.url,
                    headers={"Authorization": f"Bearer {key}"},
                    checks=checks,
                )

            try:
                exercise()
            except (Exception, FailureGroup) as exc:  # collect every operation's failures
                failures.append(
                    f"{operation.method.upper()} {operation.path} [{mode}]: {str(exc)[:1500]}"
                )
    # then no failures, and the full run made at least 5,000 requests
    figures.record(
        size,
        "schemathesis",
        requests=calls,
        failures=len(failures),
        gunicorn_414_request_line_too_long=len(server_refusals),
        seconds=round(time.monotonic() - started, 1),
    )
    assert not failures, "\n\n".join(failures)
    if size.full:
        assert calls >= 5000
