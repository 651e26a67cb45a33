"""Input that is valid JSON or a valid URL but cannot be stored or sent on: NUL characters,
unpaired surrogates, chunked bodies. Each was a 500 (or a misleading 400) before; found by
tests/reliability/test_hostile_input.py."""

import json

import pytest

from integrations.models import Event
from tests.conftest import incoming_body, outgoing_body

IN = "/api/v1/engine/incoming"


@pytest.mark.parametrize(
    ("field", "raw_value"),
    [
        ("message", '"Ha\\u0000lo"'),
        ("customerName", '"Far\\u0000han"'),
        ("ticketNumber", '"t\\u00001"'),
        ("owner", '"82ab0fd5cfd1e80d1ff97c0cfc9aa9e2\\u0000"'),
        ("message", '"\\ud800"'),
        ("contactId", '"x\\udfffy"'),
    ],
)
def test_unstorable_field_value_is_400_naming_the_field(engine_api, partner, field, raw_value):
    # given a valid body whose field holds a NUL or an unpaired surrogate (valid JSON escapes)
    body = json.dumps(incoming_body(**{field: "PLACEHOLDER"})).replace('"PLACEHOLDER"', raw_value)
    # when it is posted
    response = engine_api.post(IN, body)
    # then it is refused in the envelope, naming the field, and nothing is stored
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "validation_error"
    assert field in response.json()["errors"]
    assert not Event.objects.exists()


def test_unstorable_value_in_partner_reply_is_400(engine_api, partner_api, partner):
    engine_api.post(IN, incoming_body())
    body = json.dumps(outgoing_body(message="PLACEHOLDER")).replace('"PLACEHOLDER"', '"a\\u0000"')
    response = partner_api.post("/api/v1/outgoing", body)
    assert response.status_code == 400 and "message" in response.json()["errors"]


def test_valid_surrogate_pair_and_unknown_nul_key_are_accepted(engine_api, partner):
    # a surrogate *pair* is an ordinary character; unknown keys only live in the raw body
    body = json.dumps(incoming_body(message="PLACEHOLDER", extra="a\u0000b")).replace(
        '"PLACEHOLDER"', '"\\ud83d\\ude00"'
    )
    response = engine_api.post(IN, body)
    assert response.status_code == 202
    assert Event.objects.get().payload["message"] == "\U0001f600"


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/api/v1/tickets/a%00b/messages", "ticket_not_found"),
        ("/api/v1/contacts/a%00b", "contact_not_found"),
    ],
)
def test_nul_in_path_is_404_not_500(partner_api, path, code):
    # when a lookup names something no row can hold
    response = partner_api.client.get(path, HTTP_AUTHORIZATION=f"Bearer {partner_api.key}")
    # then it is simply not found
    assert response.status_code == 404
    assert response.json()["code"] == code


def test_chunked_body_is_411_length_required(engine_api, partner):
    # given a body sent with Transfer-Encoding: chunked (WSGI passes Django no length)
    response = engine_api.client.post(
        IN,
        data=json.dumps(incoming_body()),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {engine_api.key}",
        HTTP_TRANSFER_ENCODING="chunked",
    )
    # then the answer says what is wrong instead of "not valid JSON"
    assert response.status_code == 411
    assert response.json()["code"] == "length_required"
    assert not Event.objects.exists()
