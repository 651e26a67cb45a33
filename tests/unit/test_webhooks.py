"""Unit tests of Standard Webhooks signing and what an answer means (integrations/webhooks.py)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from standardwebhooks.webhooks import Webhook

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
