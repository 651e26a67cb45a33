"""Shared fixtures: tenants, partners and keys made through the services, API clients."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from rest_framework.test import APIClient

from integrations import tasks
from integrations.models import ApiKey
from integrations.outbox.queue import PUMP_TASK, SEND_BATCH_TASK
from integrations.services.accounts import api_key_create
from integrations.services.partners import partner_create
from tests.factories import TenantFactory
from tests.support.partner import PartnerServer

OWNER = "82ab0fd5cfd1e80d1ff97c0cfc9aa9e2"


def incoming_body(**overrides) -> dict:
    """The guide's example incoming event, with overrides."""
    body = {
        "ticketNumber": "294c9ea88f7e649f8c37ae895ebab247",
        "channel": "whatsapp",
        "accountId": "628128778222",
        "contactId": "d61d77735f3fe08bcf6d6b96fa06ba9d",
        "messageType": "text",
        "message": "Halo",
        "mediaLink": "",
        "customerName": "Farhan Akbar",
        "createdDate": "2021-04-28T15:39:37.945",
        "owner": OWNER,
        "groupId": "",
        "language": "",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


def outgoing_body(**overrides) -> dict:
    body = {
        "ticketNumber": "294c9ea88f7e649f8c37ae895ebab247",
        "channel": "whatsapp",
        "messageType": "text",
        "message": "Halo, ada yang bisa dibantu?",
        "mediaLink": "",
        "customerName": "Farhan Akbar",
        "owner": OWNER,
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


def command_body(**overrides) -> dict:
    body = {
        "ticketNumber": "294c9ea88f7e649f8c37ae895ebab247",
        "channel": "whatsapp",
        "owner": OWNER,
        "event": "close",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


@dataclass
class Caller:
    """An API client bound to one key."""

    client: APIClient
    key: str

    def post(self, path: str, body, **headers):
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return self.client.post(
            path,
            data=data,
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {self.key}",
            **headers,
        )

    def get(self, path: str, **params):
        return self.client.get(path, params, HTTP_AUTHORIZATION=f"Bearer {self.key}")


@pytest.fixture
def tenant(db):
    return TenantFactory(owner=OWNER, name="Demo")


@pytest.fixture
def other_tenant(db):
    return TenantFactory(owner="othertenant000000000000000000001", name="Other")


@pytest.fixture
def partner_with_key(tenant):
    partner, key, secret = partner_create(
        tenant=tenant,
        name="Desk",
        base_url="http://127.0.0.1:9",
        incoming_message_path="/incoming",
        send_message_path="/send",
    )
    return partner, key, secret


@pytest.fixture
def partner(partner_with_key):
    return partner_with_key[0]


@pytest.fixture
def partner_api(partner_with_key):
    return Caller(APIClient(), partner_with_key[1])


@pytest.fixture
def engine_api(tenant):
    _, raw = api_key_create(kind=ApiKey.Kind.ENGINE, tenants=[tenant])
    return Caller(APIClient(), raw)


@pytest.fixture
def other_partner_api(other_tenant):
    _, key, _ = partner_create(
        tenant=other_tenant,
        name="Rival",
        base_url="http://127.0.0.1:9",
        incoming_message_path="/in",
        send_message_path="/out",
    )
    return Caller(APIClient(), key)


@pytest.fixture(autouse=True)
def _no_broker(request, monkeypatch, settings):
    """Unit and API tests never talk to a broker: queueing delivery batches and pumps is
    recorded instead (request.node.queued_deliveries, .queued_pumps), other tasks run at once.

    End-to-end tests (marked e2e) use the real broker and workers.
    """
    if request.node.get_closest_marker("e2e"):
        return
    queued: list[int] = []
    pumps: list[str] = []

    def publish(task: str, *args) -> bool:
        # Delivery batches and pumps are recorded (tests drive the sender themselves); any
        # other task (the alerts) runs here and now, as a worker would run it.
        if task == SEND_BATCH_TASK:
            queued.extend(args[0])
        elif task == PUMP_TASK:
            pumps.append(args[0])
        else:
            getattr(tasks, task.rsplit(".", 1)[1])(*args)
        return True

    monkeypatch.setattr("integrations.outbox.queue.publish", publish)
    # and a pump the test runs ends as soon as nothing is left (no lingering on its bell),
    # unless the test turns lingering on
    settings.PORTAL_PUMP_LINGER_MS = 0
    request.node.queued_deliveries = queued
    request.node.queued_pumps = pumps


@pytest.fixture(autouse=True)
def _clear_cache():
    """Rate-limit counters live in the cache; every test starts with none."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def partner_server_factory():
    servers: list[PartnerServer] = []

    def make(respond=None) -> PartnerServer:
        server = PartnerServer(respond)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()
