"""The signature-verification receiver in docs/API.md works against our real signatures.

The snippet is taken from the document itself (the first ```python block after the heading
that contains "Verify"), executed, and fed requests signed by `integrations.delivery`, so the
partner guide cannot drift from what the portal sends.
"""

from __future__ import annotations

import re
import threading
import uuid
from http.server import HTTPServer
from pathlib import Path

import pytest

from integrations.delivery import send_webhook
from integrations.payloads import canonical_json
from integrations.ssrf import OutboundPolicy
from integrations.webhooks import Outcome, generate_secret, sign_headers

API_MD = Path(__file__).resolve().parents[1] / "docs" / "API.md"
BODY = canonical_json(
    {
        "ticketNumber": "294c9ea88f7e649f8c37ae895ebab247",
        "channel": "whatsapp",
        "accountId": "628128778222",
        "contactId": "d61d77735f3fe08bcf6d6b96fa06ba9d",
        "messageType": "text",
        "message": "Halo, apa kabar? ☺",
        "mediaLink": "",
        "customerName": "Farhan Akbar",
        "createdDate": "2021-04-28T15:39:37.945",
        "owner": "82ab0fd5cfd1e80d1ff97c0cfc9aa9e2",
        "groupId": "",
        "language": "",
    }
)


def verify_snippet() -> str:
    """The first ```python block after the first heading containing "Verify"."""
    text = API_MD.read_text(encoding="utf-8")
    heading = re.search(r"^#+ .*Verify.*$", text, re.M)
    assert heading, "docs/API.md has no heading containing 'Verify'"
    block = re.compile(r"^```python\n(.*?)^```", re.M | re.S).search(text, heading.end())
    assert block, "no ```python block after the 'Verify' heading of docs/API.md"
    return block.group(1)


@pytest.fixture
def secret(monkeypatch) -> str:
    value = generate_secret()
    monkeypatch.setenv("PORTAL_SIGNING_SECRET", value)
    return value


@pytest.fixture
def receiver(secret) -> dict:
    """The snippet's module namespace, with `process` recording what it was given."""
    namespace: dict = {"__name__": "docs_api_verify_snippet"}
    exec(compile(verify_snippet(), str(API_MD), "exec"), namespace)  # noqa: S102
    processed: list[dict] = []
    namespace["process"] = processed.append
    namespace["processed"] = processed
    return namespace


def test_docs_snippet_accepts_a_real_signature(receiver, secret):
    # given a body signed the way the portal signs deliveries
    headers = sign_headers(msg_id=str(uuid.uuid4()), body=BODY, secrets=[secret])
    # when the documented receiver handles it
    status, answer = receiver["handle"](BODY, headers)
    # then it is accepted, answered as the portal expects, and processed
    assert (status, answer) == (200, {"status": "success"})
    assert receiver["processed"][0]["message"] == "Halo, apa kabar? ☺"


def test_docs_snippet_rejects_a_tampered_body(receiver, secret):
    # given a signed body changed after signing
    headers = sign_headers(msg_id=str(uuid.uuid4()), body=BODY, secrets=[secret])
    tampered = BODY.replace(b"Halo", b"Hola")
    # when the receiver handles it
    status, _ = receiver["handle"](tampered, headers)
    # then it is refused and nothing is processed
    assert status == 401
    assert receiver["processed"] == []


def test_docs_snippet_rejects_another_secret(receiver):
    # given a body signed with a secret the receiver does not hold
    headers = sign_headers(msg_id=str(uuid.uuid4()), body=BODY, secrets=[generate_secret()])
    # when / then
    assert receiver["handle"](BODY, headers)[0] == 401
    assert receiver["processed"] == []


def test_docs_snippet_accepts_either_signature_during_rotation(receiver, secret):
    # given two signatures, the receiver's secret being the older one
    headers = sign_headers(msg_id=str(uuid.uuid4()), body=BODY, secrets=[generate_secret(), secret])
    # when / then
    assert receiver["handle"](BODY, headers)[0] == 200


def test_docs_snippet_processes_a_repeated_webhook_id_once(receiver, secret):
    # given the same event delivered twice (a retry), each attempt signed afresh
    msg_id = str(uuid.uuid4())
    first = sign_headers(msg_id=msg_id, body=BODY, secrets=[secret])
    second = sign_headers(msg_id=msg_id, body=BODY, secrets=[secret])
    # when both reach the receiver
    answers = [receiver["handle"](BODY, first), receiver["handle"](BODY, second)]
    # then both are acknowledged but the message is processed once
    assert [status for status, _ in answers] == [200, 200]
    assert len(receiver["processed"]) == 1


def test_docs_receiver_over_http_with_the_portal_transport(receiver, secret):
    # given the documented HTTP receiver listening on loopback
    server = HTTPServer(("127.0.0.1", 0), receiver["Receiver"])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/hooks/incoming"
    policy = OutboundPolicy.from_setting("127.0.0.0/8")
    try:
        # when the portal's transport delivers to it with the right and with a wrong secret
        good = send_webhook(
            url=url, body=BODY, msg_id=str(uuid.uuid4()), secrets=[secret], policy=policy
        )
        bad = send_webhook(
            url=url, body=BODY, msg_id=str(uuid.uuid4()), secrets=[generate_secret()], policy=policy
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    # then the first succeeds and the second is refused (dead at once, as API.md says)
    assert (good.outcome, good.status_code) == (Outcome.SUCCESS, 200)
    assert (bad.outcome, bad.status_code) == (Outcome.DEAD, 401)
    assert len(receiver["processed"]) == 1
