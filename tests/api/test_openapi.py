"""The OpenAPI contract: it declares SPEC §3's rules, and the API conforms to it
(schemathesis against a live server, valid and invalid data)."""

import pytest
from django.urls import reverse
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from integrations import payloads


@pytest.fixture(scope="module")
def schema() -> dict:
    return SchemaGenerator().get_schema(request=None, public=True)


def _component(schema: dict, path: str, method: str = "post") -> dict:
    ref = schema["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    return _resolve(schema, ref)


def _resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    if "allOf" in node:
        return _resolve(schema, node["allOf"][0])
    return node


INCOMING_REQUIRED = {
    "ticketNumber",
    "channel",
    "accountId",
    "contactId",
    "messageType",
    "message",
    "mediaLink",
    "customerName",
    "createdDate",
    "owner",
}


def test_schema_incoming_declares_required_keys_enums_and_limits(schema):
    incoming = _component(schema, "/api/v1/engine/incoming")
    assert set(incoming["required"]) == INCOMING_REQUIRED
    props = incoming["properties"]
    assert props["ticketNumber"]["maxLength"] == 100
    assert props["message"]["maxLength"] == payloads.MAX_MESSAGE
    assert props["mediaLink"]["maxLength"] == payloads.MAX_MEDIA_LINK
    assert props["createdDate"]["pattern"] == payloads.CREATED_DATE_PATTERN
    assert set(_resolve(schema, props["messageType"])["enum"]) == {
        "text",
        "image",
        "video",
        "audio",
        "file",
        "location",
        "sticker",
    }
    assert {"groupId", "language"} <= set(props) - set(incoming["required"])


def test_schema_outgoing_and_command_declare_their_rules(schema):
    partner_out = _component(schema, "/api/v1/outgoing")
    assert "createdDate" not in partner_out["required"]
    assert set(_resolve(schema, partner_out["properties"]["messageType"])["enum"]) == set(
        payloads.MESSAGE_TYPES
    )
    command = _component(schema, "/api/v1/command")
    assert set(command["required"]) == {"ticketNumber", "channel", "owner", "event"}
    assert _resolve(schema, command["properties"]["event"])["enum"] == ["close"]


@pytest.mark.parametrize(
    ("path", "statuses"),
    [
        ("/api/v1/engine/incoming", {"202", "400", "401", "403", "409", "413", "415", "429"}),
        ("/api/v1/engine/outgoing", {"202", "400", "401", "403", "404", "409", "413", "415"}),
        ("/api/v1/outgoing", {"200", "400", "401", "403", "404", "409", "413", "415", "429"}),
        ("/api/v1/command", {"200", "400", "401", "403", "404", "409"}),
    ],
)
def test_schema_declares_error_statuses(schema, path, statuses):
    assert statuses <= set(schema["paths"][path]["post"]["responses"])


def test_schema_declares_bearer_auth_and_idempotency_header(schema):
    assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    params = schema["paths"]["/api/v1/outgoing"]["post"]["parameters"]
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in params)


@pytest.mark.django_db
def test_schema_and_docs_are_served_without_cdn():
    client = APIClient()
    assert client.get(reverse("schema")).status_code == 200
    docs = client.get(reverse("api-docs"))
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "swagger-ui" in html and "cdn." not in html and "unpkg" not in html
