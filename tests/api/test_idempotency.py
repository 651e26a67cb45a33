"""Idempotency-Key (SPEC §3.5): replay, conflict, refusals forgotten, concurrent duplicates."""

import threading

import pytest
from django.db import connection
from rest_framework.test import APIClient

from integrations.models import Event, IdempotencyRecord
from tests.conftest import Caller, incoming_body

IN = "/api/v1/engine/incoming"


def test_idempotency_same_key_replays_first_answer(engine_api, partner):
    first = engine_api.post(IN, incoming_body(), HTTP_IDEMPOTENCY_KEY="k-1")
    again = engine_api.post(IN, incoming_body(), HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert Event.objects.count() == 1
    assert Event.objects.get().idempotency_key == "k-1"


def test_idempotency_same_key_other_body_is_409(engine_api, partner):
    engine_api.post(IN, incoming_body(), HTTP_IDEMPOTENCY_KEY="k-2")
    response = engine_api.post(IN, incoming_body(message="different"), HTTP_IDEMPOTENCY_KEY="k-2")
    assert response.status_code == 409 and response.json()["code"] == "idempotency_conflict"
    assert Event.objects.count() == 1


def test_idempotency_refusals_are_not_remembered(engine_api, partner):
    bad = engine_api.post(IN, incoming_body(message=""), HTTP_IDEMPOTENCY_KEY="k-3")
    assert bad.status_code == 400
    assert not IdempotencyRecord.objects.exists()
    good = engine_api.post(IN, incoming_body(), HTTP_IDEMPOTENCY_KEY="k-3")
    assert good.status_code == 202


def test_idempotency_invalid_request_writes_nothing(engine_api, partner):
    # given a request whose fields are invalid, sent with an Idempotency-Key
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        bad = engine_api.post(IN, incoming_body(channel="Tele Gram"), HTTP_IDEMPOTENCY_KEY="k-9")
    # then it is refused before anything is written: no idempotency record made and deleted
    assert bad.status_code == 400 and "channel" in bad.json()["errors"]
    table = IdempotencyRecord._meta.db_table
    assert [q["sql"] for q in queries.captured_queries if table in q["sql"]] == []


def test_idempotency_keys_are_per_holder(engine_api, tenant, partner):
    from integrations.models import ApiKey
    from integrations.services.accounts import api_key_create

    _, raw = api_key_create(kind=ApiKey.Kind.ENGINE, tenants=[tenant])
    second = Caller(APIClient(), raw)
    a = engine_api.post(IN, incoming_body(), HTTP_IDEMPOTENCY_KEY="shared")
    b = second.post(IN, incoming_body(), HTTP_IDEMPOTENCY_KEY="shared")
    assert a.json()["eventId"] != b.json()["eventId"]
    assert Event.objects.count() == 2


def test_idempotency_key_too_long_is_400(engine_api, partner):
    response = engine_api.post(IN, incoming_body(), HTTP_IDEMPOTENCY_KEY="k" * 256)
    assert response.status_code == 400 and "Idempotency-Key" in response.json()["errors"]


def test_idempotency_sent_ten_times_creates_one_event(engine_api, partner):
    ids = {
        engine_api.post(IN, incoming_body(), HTTP_IDEMPOTENCY_KEY="ten").json()["eventId"]
        for _ in range(10)
    }
    assert len(ids) == 1 and Event.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_idempotency_concurrent_duplicates_wait_and_share_result(engine_api, partner):
    if connection.vendor != "postgresql":
        pytest.skip("concurrent requests need a server database (make test uses PostgreSQL)")
    # given 8 threads posting the same key at once
    results: list = []
    barrier = threading.Barrier(8)

    def post():
        from django.db import connections

        barrier.wait()
        response = Caller(APIClient(), engine_api.key).post(
            IN, incoming_body(), HTTP_IDEMPOTENCY_KEY="race"
        )
        results.append((response.status_code, response.json()))
        connections.close_all()

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # then all get the same answer and one event exists
    assert len(results) == 8
    assert {status for status, _ in results} == {202}
    assert len({body["eventId"] for _, body in results}) == 1
    assert Event.objects.count() == 1
