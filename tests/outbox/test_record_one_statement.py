"""Recording a batch in one statement (outbox/finish.py) leaves exactly what the transaction
of several statements leaves: the same rows, attempts, next deliveries queued and partner
counters, on PostgreSQL with no transaction of the caller's around it."""

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from integrations.delivery import DeliveryResult
from integrations.models import Delivery, DeliveryAttempt, Partner
from integrations.outbox import queue, record
from integrations.outbox.health import latency_fold
from integrations.outbox.record import Finished
from integrations.webhooks import Outcome
from tests.conftest import incoming_body

IN = "/api/v1/engine/incoming"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip("the one-statement record is PostgreSQL's")


def _ingest(engine_api, ticket: str, message: str = "m") -> Delivery:
    body = incoming_body(ticketNumber=ticket, message=message)
    event_id = engine_api.post(IN, body).json()["eventId"]
    return Delivery.objects.get(event_id=event_id, partner__isnull=False)


def _answer(status: int, ms: int, outcome: Outcome | None = None) -> DeliveryResult:
    success = 200 <= status < 300
    return DeliveryResult(
        outcome=outcome or (Outcome.SUCCESS if success else Outcome.RETRY),
        status_code=status,
        request_headers={"webhook-id": "x"},
        response_headers={"content-type": "application/json"},
        response_body=b'{"status":"success"}' if success else b"oops",
        duration_ms=ms,
        error_class="" if success else "http_status",
        error_message="" if success else f"HTTP {status}",
        retry_after=None,
        gone=False,
    )


def _record(engine_api, monkeypatch, *, one_statement: bool, mixed: bool):
    """A batch of three tickets' deliveries (the first ticket with a second message waiting
    behind it), one of which lost its lease mid-attempt; recorded one way or the other.
    Returns the results, the rows after, and how many statements the record took."""
    first, behind = _ingest(engine_api, "a", "one"), _ingest(engine_api, "a", "two")
    other, lost = _ingest(engine_api, "b"), _ingest(engine_api, "c")
    Delivery.objects.filter(pk=behind.pk).update(dispatched_at=None)
    token, now = uuid.uuid4(), timezone.now()
    claimed = {
        d.pk: d
        for d in queue.deliveries_claim(
            delivery_ids=[first.pk, other.pk, lost.pk], token=token, now=now
        )
    }
    assert sorted(claimed) == sorted([first.pk, other.pk, lost.pk])
    Delivery.objects.filter(pk=lost.pk).update(lease_token=uuid.uuid4())  # another worker's now
    later = now + timedelta(seconds=30)
    succeeded, retrying = Delivery.Status.SUCCEEDED, Delivery.Status.RETRYING

    def done(pk, status, error, result, next_at=None) -> Finished:
        return Finished(claimed[pk], status, error, next_at, result, url="http://p/in")

    finished = [
        done(first.pk, succeeded, "", _answer(200, 12)),
        (
            done(other.pk, retrying, "HTTP 500", _answer(500, 7), next_at=later)
            if mixed
            else done(other.pk, succeeded, "", _answer(201, 30))
        ),
        done(lost.pk, succeeded, "", _answer(200, 5)),
    ]
    chosen = []
    real = record._in_one_statement

    def choose(rows):
        chosen.append(real(rows))
        return one_statement and chosen[-1]

    monkeypatch.setattr(record, "_in_one_statement", choose)
    with CaptureQueriesContext(connection) as queries:
        results = record.batch_record(token=token, finished=finished)
    assert chosen == [True]  # it could go in one statement (and did, or was kept from it)
    rows = {}
    for name, d in [("first", first), ("other", other), ("lost", lost), ("behind", behind)]:
        row = Delivery.objects.values(
            "status",
            "attempts",
            "last_status_code",
            "last_error",
            "next_attempt_at",
            "lease_token",
            "lease_expires_at",
        ).get(pk=d.pk)
        # (times and tokens as what they say: this run's differ from the other's)
        due = row.pop("next_attempt_at")
        row["due_in"] = None if due is None else round((due - now).total_seconds())
        row["leased"] = (
            row.pop("lease_token") is not None,
            row.pop("lease_expires_at") is not None,
        )
        rows[name] = row
    delivered = {
        d.pk: d.delivered_at is not None
        for d in Delivery.objects.filter(pk__in=[first.pk, other.pk])
    }
    queued = Delivery.objects.get(pk=behind.pk).dispatched_at is not None
    attempts = list(
        DeliveryAttempt.objects.order_by("delivery_id").values_list(
            "delivery_id",
            "number",
            "url",
            "response_status",
            "response_body",
            "duration_ms",
            "outcome",
            "error_message",
        )
    )
    ids = {first.pk: "first", other.pk: "other", lost.pk: "lost"}
    partner = Partner.objects.values(
        "success_count", "failure_count", "consecutive_failures", "latency_ms_avg"
    ).get()
    return {
        "results": {ids[pk]: str(result) for pk, result in results.items()},
        "rows": rows,
        "delivered": [delivered[first.pk], delivered[other.pk]],
        "queued": queued,
        "attempts": [(ids[a[0]], *a[1:]) for a in attempts],
        "partner": partner,
        "statements": len(queries),
    }


@pytest.mark.parametrize("mixed", [False, True], ids=["successes", "with-a-failure"])
def test_one_statement_records_what_the_transaction_records(
    engine_api, partner, monkeypatch, request, mixed
):
    one = _record(engine_api, monkeypatch, one_statement=True, mixed=mixed)
    # the same batch again, on fresh rows, recorded the long way
    Delivery.objects.all().delete()
    Partner.objects.update(
        success_count=0, failure_count=0, consecutive_failures=0, latency_ms_avg=None
    )
    request.node.queued_deliveries.clear()
    several = _record(engine_api, monkeypatch, one_statement=False, mixed=mixed)
    assert {k: v for k, v in one.items() if k != "statements"} == {
        k: v for k, v in several.items() if k != "statements"
    }
    # and what both recorded is right: the lost lease's attempt is kept, its row untouched
    assert one["results"] == {
        "first": "succeeded",
        "other": "retrying" if mixed else "succeeded",
        "lost": "lease_lost",
    }
    assert one["rows"]["first"]["status"] == "succeeded"
    assert one["rows"]["first"]["leased"] == (False, False)
    assert one["rows"]["lost"]["status"] == "delivering"
    assert one["rows"]["lost"]["leased"] == (True, True)
    assert one["rows"]["behind"]["status"] == "pending" and one["queued"]
    assert [a[0] for a in one["attempts"]] == ["first", "other", "lost"]
    assert one["delivered"] == [True, not mixed]
    counters = one["partner"]
    if mixed:
        assert one["rows"]["other"]["last_status_code"] == 500
        assert one["rows"]["other"]["due_in"] == 30
        assert (counters["success_count"], counters["failure_count"]) == (1, 1)
        assert counters["consecutive_failures"] == 1
    else:
        # only the two rows still the batch's count, in order
        assert (counters["success_count"], counters["failure_count"]) == (2, 0)
        assert counters["latency_ms_avg"] == pytest.approx(latency_fold(None, [12, 30]))
    # the one statement, plus the partner's counters when a row was lost (or one failed:
    # counted as before, in statements of their own)
    assert one["statements"] < several["statements"]


def test_a_batch_of_one_partners_successes_is_one_statement_with_its_counters(
    engine_api, partner, request
):
    first, behind = _ingest(engine_api, "a", "one"), _ingest(engine_api, "a", "two")
    Delivery.objects.filter(pk=behind.pk).update(dispatched_at=None)
    request.node.queued_deliveries.clear()
    token = uuid.uuid4()
    (claimed,) = queue.deliveries_claim(delivery_ids=[first.pk], token=token, now=timezone.now())
    finished = [
        Finished(claimed, Delivery.Status.SUCCEEDED, "", result=_answer(200, 40), url="http://p/in")
    ]
    with CaptureQueriesContext(connection) as queries:
        assert record.batch_record(token=token, finished=finished) == {first.pk: "succeeded"}
    assert len(queries) == 1, [q["sql"][:80] for q in queries]
    partner.refresh_from_db()
    assert (partner.success_count, partner.latency_ms_avg) == (1, 40.0)
    # the ticket's next message went at once (its queue message sent: no transaction to wait for)
    assert request.node.queued_deliveries == [behind.pk]


def test_a_delivery_going_dead_is_recorded_in_a_transaction_with_its_notice(engine_api, partner):
    delivery = _ingest(engine_api, "a")
    token = uuid.uuid4()
    (claimed,) = queue.deliveries_claim(delivery_ids=[delivery.pk], token=token, now=timezone.now())
    dead = Finished(
        claimed,
        Delivery.Status.DEAD,
        "HTTP 400",
        result=_answer(400, 3, Outcome.DEAD),
        url="http://p/in",
    )
    assert not record._in_one_statement([dead])
    assert record.batch_record(token=token, finished=[dead]) == {delivery.pk: "dead"}
    assert Delivery.objects.get(pk=delivery.pk).status == "dead"
