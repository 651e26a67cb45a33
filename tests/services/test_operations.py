"""Manual operations, partner states, alerts and retention (SPEC §5, issue 5)."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.utils import timezone

from integrations.errors import Conflict
from integrations.models import Delivery, DeliveryAttempt, Event, Partner, TenantMembership
from integrations.services import operations as ops
from tests.conftest import incoming_body
from tests.support.outbox import due_ids, send_one

IN = "/api/v1/engine/incoming"
OK = (200, b'{"status":"success"}', {})


@pytest.fixture
def admin_mailbox(tenant):
    user = get_user_model().objects.create_user("boss", email="boss@tenant.example", is_staff=True)
    TenantMembership.objects.create(user=user, tenant=tenant, role="admin")
    return user


def _point(partner, server):
    partner.base_url = server.url
    partner.save()


def _ingest(engine_api, **overrides) -> Delivery:
    event_id = engine_api.post(IN, incoming_body(**overrides)).json()["eventId"]
    return Delivery.objects.get(event_id=event_id, partner__isnull=False)


def _drain(limit: int = 50) -> list[str]:
    """Attempt every due delivery, oldest first, as a worker would, until none is due."""
    outcomes = []
    for _ in range(limit):
        due = due_ids(now=timezone.now() + timedelta(hours=30))
        due = [d for d in due if Delivery.objects.get(pk=d).status in ("pending", "retrying")]
        if not due:
            break
        outcomes.append(send_one(delivery_id=due[0]))
    return outcomes


def test_410_pauses_partner_mails_admins_and_holds_later_deliveries(
    engine_api, partner, partner_server_factory, admin_mailbox, django_capture_on_commit_callbacks
):
    # given a partner that answers 410 once, then works
    server = partner_server_factory(lambda r, n: (410, b"", {}) if n == 1 else OK)
    _point(partner, server)
    first = _ingest(engine_api, message="one")
    # when the first delivery gets 410 (the alert task is queued on commit)
    with django_capture_on_commit_callbacks(execute=True):
        assert send_one(delivery_id=first.pk) == "dead"
    # then the partner is paused and the tenant's admins get one mail
    partner.refresh_from_db()
    assert partner.state == "paused"
    subjects = [m.subject for m in mail.outbox]
    assert any("paused" in s for s in subjects)
    assert all(m.to == ["boss@tenant.example"] for m in mail.outbox)
    # and later deliveries wait, never dropped
    later = [_ingest(engine_api, message=f"later-{i}") for i in range(3)]
    assert _drain() == []
    assert {d.status for d in Delivery.objects.filter(pk__in=[d.pk for d in later])} == {"pending"}
    # when an admin resumes it, the held ones go out in order
    ops.partner_resume(partner=partner)
    assert _drain() == ["succeeded"] * 3
    assert [r.json["message"] for r in server.received[1:]] == ["later-0", "later-1", "later-2"]


def test_pause_alert_reaches_the_admins_when_the_broker_is_down(
    engine_api,
    partner,
    partner_server_factory,
    admin_mailbox,
    monkeypatch,
    django_capture_on_commit_callbacks,
):
    # given a broker that refuses every message
    monkeypatch.setattr("integrations.outbox.queue.publish", lambda task, *args: False)
    _point(partner, partner_server_factory(lambda r, n: (410, b"", {})))
    delivery = _ingest(engine_api)
    # when the partner answers 410 and is paused
    with django_capture_on_commit_callbacks(execute=True):
        assert send_one(delivery_id=delivery.pk) == "dead"
    # then the admins are mailed all the same (the alert ran in the worker itself)
    partner.refresh_from_db()
    assert partner.state == "paused"
    assert [m.to for m in mail.outbox if "paused" in m.subject] == [["boss@tenant.example"]]


def test_dead_alert_is_sent_at_most_once_an_hour(
    engine_api, partner, partner_server_factory, admin_mailbox, django_capture_on_commit_callbacks
):
    _point(partner, partner_server_factory(lambda r, n: (400, b"", {})))
    for i in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            send_one(delivery_id=_ingest(engine_api, ticketNumber=f"T{i}").pk)
    dead_mails = [m for m in mail.outbox if "failed" in m.subject]
    assert len(dead_mails) == 1 and "3 dead" not in dead_mails[0].body
    Partner.objects.filter(pk=partner.pk).update(
        dead_alert_sent_at=timezone.now() - timedelta(hours=2)
    )
    with django_capture_on_commit_callbacks(execute=True):
        send_one(delivery_id=_ingest(engine_api, ticketNumber="T9").pk)
    assert len([m for m in mail.outbox if "failed" in m.subject]) == 2


def test_disabled_partner_gets_nothing_and_its_waiting_deliveries_hold(
    engine_api, partner, partner_server_factory
):
    server = partner_server_factory()
    _point(partner, server)
    waiting = _ingest(engine_api)
    ops.partner_disable(partner=partner)
    engine_api.post(IN, incoming_body(message="after disable"))
    assert Delivery.objects.count() == 1  # no row for events after the disable
    assert send_one(delivery_id=waiting.pk) == "not_claimed"
    assert server.received == []


def test_recover_restores_dead_deliveries_in_original_order(
    engine_api, partner, partner_server_factory, settings
):
    # given a partner that was down: three messages of one ticket went dead
    settings.PORTAL_RETRY_SCHEDULE = (0,)
    state = {"down": True}
    server = partner_server_factory(lambda r, n: (500, b"", {}) if state["down"] else OK)
    _point(partner, server)
    start = timezone.now()
    deliveries = [_ingest(engine_api, message=f"m{i}") for i in range(3)]
    assert _drain() == ["dead"] * 3
    # when it is back and an admin recovers the window
    state["down"] = False
    restored = ops.deliveries_recover(
        partner=partner,
        since=start - timedelta(seconds=1),
        until=timezone.now() + timedelta(seconds=1),
    )
    # then all three go out again, in their original order, under the same webhook-id
    assert restored == 3
    assert _drain() == ["succeeded"] * 3
    ok = [r for r in server.received if r.status == 200]
    assert [r.json["message"] for r in ok] == ["m0", "m1", "m2"]
    assert [r.headers["webhook-id"] for r in ok] == [str(d.event_id) for d in deliveries]
    assert DeliveryAttempt.objects.count() == 6


def test_redeliver_sends_a_succeeded_delivery_again(engine_api, partner, partner_server_factory):
    server = partner_server_factory()
    _point(partner, server)
    delivery = _ingest(engine_api)
    send_one(delivery_id=delivery.pk)
    ops.delivery_redeliver(delivery=delivery)
    assert send_one(delivery_id=delivery.pk) == "succeeded"
    assert len(server.received) == 2
    assert server.received[0].headers["webhook-id"] == server.received[1].headers["webhook-id"]


def test_redeliver_refuses_an_unfinished_delivery(engine_api, partner):
    with pytest.raises(Conflict):
        ops.delivery_redeliver(delivery=_ingest(engine_api))


def test_cancel_stops_one_and_lets_the_next_go(engine_api, partner, partner_server_factory):
    server = partner_server_factory(lambda r, n: (503, b"", {}) if n == 1 else OK)
    _point(partner, server)
    first = _ingest(engine_api, message="stuck")
    second = _ingest(engine_api, message="next")
    send_one(delivery_id=first.pk)
    assert send_one(delivery_id=second.pk) == "not_claimed"
    ops.delivery_cancel(delivery=first)
    assert Delivery.objects.get(pk=first.pk).status == "cancelled"
    assert send_one(delivery_id=second.pk) == "succeeded"
    with pytest.raises(Conflict):
        ops.delivery_cancel(delivery=first)


def test_send_test_event_returns_the_partner_answer(partner, partner_server_factory):
    server = partner_server_factory(lambda r, n: (200, b'{"status":"success","id":7}', {}))
    _point(partner, server)
    result = ops.partner_send_test_event(partner=partner)
    assert result.status_code == 200 and result.outcome == "success"
    assert '"id":7' in result.response_excerpt and result.latency_ms >= 0
    assert server.received[0].path == "/incoming"
    assert server.received[0].json["owner"] == partner.tenant.owner
    assert not Event.objects.exists()


def test_prune_removes_only_old_events_whose_deliveries_are_final(engine_api, partner, tenant):
    old_final = _ingest(engine_api, ticketNumber="A")
    old_open = _ingest(engine_api, ticketNumber="B")
    recent = _ingest(engine_api, ticketNumber="C")
    Delivery.objects.filter(pk__in=[old_final.pk, recent.pk]).update(status="succeeded")
    long_ago = timezone.now() - timedelta(days=tenant.retention_days + 1)
    Event.objects.filter(pk__in=[old_final.event_id, old_open.event_id]).update(
        received_at=long_ago
    )
    assert ops.events_prune(batch=1) == 1
    assert set(Event.objects.values_list("ticket_number", flat=True)) == {"B", "C"}
    assert not Delivery.objects.filter(pk=old_final.pk).exists()


def test_pause_after_a_short_failing_period(engine_api, partner, partner_server_factory, settings):
    import time

    # given PORTAL_PARTNER_PAUSE_AFTER of one second and a partner that always fails
    settings.PORTAL_PARTNER_PAUSE_AFTER = 1
    _point(partner, partner_server_factory(lambda r, n: (500, b"", {})))
    send_one(delivery_id=_ingest(engine_api, ticketNumber="P1").pk)
    partner.refresh_from_db()
    assert partner.state == "active" and partner.consecutive_failures == 1
    # when it is still failing after that period
    time.sleep(1.2)
    send_one(delivery_id=_ingest(engine_api, ticketNumber="P2").pk)
    # then it is paused
    partner.refresh_from_db()
    assert partner.state == "paused" and partner.consecutive_failures == 2
