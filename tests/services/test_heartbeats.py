"""Readiness from heartbeats and delivery lag (SPEC §10): what /readyz reports, and which
waiting deliveries count as falling behind. The real scheduler and worker writing their
heartbeats: tests/e2e/test_readiness_e2e.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from integrations.models import Delivery, Partner, WorkerHeartbeat
from integrations.services.heartbeats import heartbeat_every, heartbeat_record, readiness_problems
from tests.conftest import incoming_body

IN = "/api/v1/engine/incoming"


def _beat(marker: str, seconds_ago: float) -> None:
    heartbeat_record(marker, now=timezone.now() - timedelta(seconds=seconds_ago))


def _ingest(engine_api, **overrides) -> Delivery:
    event_id = engine_api.post(IN, incoming_body(**overrides)).json()["eventId"]
    return Delivery.objects.get(event_id=event_id, partner__isnull=False)


@pytest.mark.django_db
def test_nothing_reported_yet_is_not_ready():
    assert readiness_problems(now=timezone.now()) == [
        "scheduler (celery beat) has never reported",
        "no worker has ever reported",
    ]


@pytest.mark.django_db
def test_fresh_heartbeats_are_ready_and_one_live_worker_is_enough():
    _beat("scheduler", 5)
    _beat("worker:a@host", 3600)  # an old worker that is gone
    _beat("worker:b@host", 1)
    assert readiness_problems(now=timezone.now()) == []


@pytest.mark.django_db
def test_a_silent_scheduler_or_workers_are_named_with_their_silence(settings):
    settings.PORTAL_READY_HEARTBEAT_AGE = 60
    _beat("scheduler", 90)
    _beat("worker:a@host", 61)
    assert readiness_problems(now=timezone.now()) == [
        "scheduler (celery beat) silent for 90 s (limit 60 s)",
        "every worker silent for 61 s (limit 60 s)",
    ]


@pytest.mark.django_db
def test_deliveries_falling_behind_are_not_ready(engine_api, partner, settings):
    settings.PORTAL_READY_MAX_LAG = 300
    _beat("scheduler", 1)
    _beat("worker:a@host", 1)
    delivery = _ingest(engine_api)
    now = timezone.now()
    # due 200 s ago: still within the limit
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=now - timedelta(seconds=200))
    assert readiness_problems(now=now) == []
    # due 400 s ago and nothing held it back: the workers are behind
    Delivery.objects.filter(pk=delivery.pk).update(next_attempt_at=now - timedelta(seconds=400))
    assert readiness_problems(now=now) == ["oldest due delivery waiting 400 s (limit 300 s)"]


@pytest.mark.django_db
def test_deliveries_held_back_on_purpose_do_not_count(engine_api, partner, settings):
    settings.PORTAL_READY_MAX_LAG = 300
    _beat("scheduler", 1)
    _beat("worker:a@host", 1)
    now = timezone.now()
    long_ago = now - timedelta(hours=2)
    # a retrying first message (not due yet) holds back its ticket's second one
    first, second = _ingest(engine_api, message="one"), _ingest(engine_api, message="two")
    Delivery.objects.filter(pk=first.pk).update(
        status=Delivery.Status.RETRYING, next_attempt_at=now + timedelta(minutes=5)
    )
    Delivery.objects.filter(pk=second.pk).update(next_attempt_at=long_ago)
    assert readiness_problems(now=now) == []
    # a paused partner's deliveries wait until it is resumed
    third = _ingest(engine_api, ticketNumber="other")
    Delivery.objects.filter(pk=third.pk).update(next_attempt_at=long_ago)
    Partner.objects.filter(pk=partner.pk).update(state=Partner.State.PAUSED)
    assert readiness_problems(now=now) == []


@pytest.mark.django_db
def test_readyz_answers_503_with_the_reasons():
    _beat("scheduler", 3600)
    _beat("worker:a@host", 1)
    response = Client().get("/readyz")
    assert response.status_code == 503
    assert response.json()["problems"] == ["scheduler (celery beat) silent for 3600 s (limit 60 s)"]


def test_a_heartbeat_comes_six_times_within_the_limit(settings):
    settings.PORTAL_READY_HEARTBEAT_AGE = 60
    assert heartbeat_every() == 10
    settings.PORTAL_READY_HEARTBEAT_AGE = 3
    assert heartbeat_every() == 0.5


@pytest.mark.django_db
def test_heartbeat_record_updates_one_row_per_marker():
    heartbeat_record("worker:a@host")
    heartbeat_record("worker:a@host")
    assert WorkerHeartbeat.objects.filter(marker="worker:a@host").count() == 1
