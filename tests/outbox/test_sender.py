"""The delivery service against a real loopback partner: claim, attempt, record, schedule,
order, leases, partner health (SPEC §5). Attempts are driven directly, without a worker."""

from datetime import timedelta

import pytest
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from integrations.models import Delivery, DeliveryAttempt, Partner, SigningSecret
from integrations.outbox import sender
from integrations.services.partners import signing_secret_rotate
from tests.conftest import command_body, incoming_body
from tests.support.outbox import claim, due_ids, send_one

IN = "/api/v1/engine/incoming"
OK = (200, b'{"status":"success"}', {})


@pytest.fixture
def sink(partner_server_factory):
    return partner_server_factory()


@pytest.fixture
def partner_at(partner):
    def point(server) -> Partner:
        partner.base_url = server.url
        partner.save()
        return partner

    return point


def _ingest(engine_api, **overrides) -> Delivery:
    event_id = engine_api.post(IN, incoming_body(**overrides)).json()["eventId"]
    return Delivery.objects.get(event_id=event_id, partner__isnull=False)


def test_attempt_success_is_signed_recorded_and_final(engine_api, partner_at, sink, partner):
    # given a partner that answers {"status":"success"}
    partner_at(sink)
    delivery = _ingest(engine_api)
    # when the delivery is attempted
    assert send_one(delivery_id=delivery.pk) == "succeeded"
    # then the partner got the normalized payload, signed with its secret
    received = sink.received[0]
    assert received.path == "/incoming" and received.json == incoming_body()
    secret = SigningSecret.objects.get(partner=partner).secret
    Webhook(secret).verify(received.body, received.headers)
    assert received.headers["webhook-id"] == str(delivery.event_id)
    # and the delivery, its attempt and the partner's health are stored
    delivery.refresh_from_db()
    assert delivery.status == "succeeded" and delivery.attempts == 1
    assert delivery.delivered_at is not None and delivery.last_status_code == 200
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    assert attempt.response_status == 200 and attempt.outcome == "success"
    assert attempt.url == f"{sink.url}/incoming"
    assert "success" in attempt.response_body
    partner.refresh_from_db()
    assert partner.success_count == 1 and partner.consecutive_failures == 0
    assert partner.latency_ms_avg is not None


@pytest.mark.parametrize("client", ["curl", "requests"])
def test_attempt_goes_out_with_the_configured_client(
    client, engine_api, partner_at, sink, monkeypatch, settings
):
    # given PORTAL_DELIVERY_CLIENT, and the transport watched
    settings.PORTAL_DELIVERY_CLIENT = client
    partner_at(sink)
    delivery = _ingest(engine_api)
    real, used = sender.send_webhook, []

    def watched(**kwargs):
        used.append(kwargs["client"])
        return real(**kwargs)

    monkeypatch.setattr(sender, "send_webhook", watched)
    # when the delivery is attempted
    assert send_one(delivery_id=delivery.pk) == "succeeded"
    # then it went out with that client, and the partner got it
    assert used == [client]
    assert len(sink.received) == 1
    assert DeliveryAttempt.objects.get(delivery=delivery).outcome == "success"


def test_attempt_503_schedules_retry_from_schedule(
    engine_api, partner_at, partner_server_factory, settings
):
    settings.PORTAL_RETRY_SCHEDULE = (0, 100, 200)
    partner_at(partner_server_factory(lambda r, n: (503, b"down", {})))
    delivery = _ingest(engine_api)
    before = timezone.now()
    assert send_one(delivery_id=delivery.pk) == "retrying"
    delivery.refresh_from_db()
    delay = (delivery.next_attempt_at - before).total_seconds()
    assert 80 - 1 <= delay <= 120 + 1  # 100 s ± 20 % jitter
    assert delivery.last_status_code == 503 and delivery.lease_token is None


def test_attempt_retry_after_longer_than_schedule_wins(
    engine_api, partner_at, partner_server_factory, settings
):
    settings.PORTAL_RETRY_SCHEDULE = (0, 5, 5)
    partner_at(partner_server_factory(lambda r, n: (429, b"", {"Retry-After": "600"})))
    delivery = _ingest(engine_api)
    send_one(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    delay = (delivery.next_attempt_at - timezone.now()).total_seconds()
    assert 590 <= delay <= 601


def test_attempt_retry_after_is_capped_at_ten_hours(
    engine_api, partner_at, partner_server_factory, settings
):
    settings.PORTAL_RETRY_SCHEDULE = (0, 5)
    partner_at(partner_server_factory(lambda r, n: (503, b"", {"Retry-After": "999999"})))
    delivery = _ingest(engine_api)
    send_one(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert (delivery.next_attempt_at - timezone.now()) <= timedelta(hours=10)


def test_attempt_2xx_with_error_status_is_retried(engine_api, partner_at, partner_server_factory):
    partner_at(partner_server_factory(lambda r, n: (200, b'{"status":"error"}', {})))
    delivery = _ingest(engine_api)
    assert send_one(delivery_id=delivery.pk) == "retrying"


def test_attempt_4xx_is_dead_at_once(engine_api, partner_at, partner_server_factory):
    partner_at(partner_server_factory(lambda r, n: (422, b'{"error":"bad"}', {})))
    delivery = _ingest(engine_api)
    assert send_one(delivery_id=delivery.pk) == "dead"
    assert DeliveryAttempt.objects.get().response_body == '{"error":"bad"}'


def test_attempt_410_is_dead_and_pauses_partner(
    engine_api, partner_at, partner_server_factory, partner
):
    partner_at(partner_server_factory(lambda r, n: (410, b"", {})))
    first = _ingest(engine_api)
    second = _ingest(engine_api, ticketNumber="other-ticket")
    assert send_one(delivery_id=first.pk) == "dead"
    partner.refresh_from_db()
    assert partner.state == "paused" and "410" in partner.state_reason
    # a paused partner's deliveries wait: not claimable, not due
    assert send_one(delivery_id=second.pk) == "not_claimed"
    assert second.pk not in due_ids(now=timezone.now() + timedelta(hours=1))
    second.refresh_from_db()
    assert second.status == "pending"


def test_attempt_schedule_used_up_is_dead(engine_api, partner_at, partner_server_factory, settings):
    settings.PORTAL_RETRY_SCHEDULE = (0, 0, 0)
    partner_at(partner_server_factory(lambda r, n: (500, b"", {})))
    delivery = _ingest(engine_api)
    outcomes = [send_one(delivery_id=delivery.pk) for _ in range(4)]
    assert outcomes == ["retrying", "retrying", "dead", "not_claimed"]
    assert DeliveryAttempt.objects.filter(delivery=delivery).count() == 3


def test_attempt_pauses_partner_failing_longer_than_pause_after(
    engine_api, partner_at, partner_server_factory, settings, partner
):
    settings.PORTAL_PARTNER_PAUSE_AFTER = 60
    partner_at(partner_server_factory(lambda r, n: (500, b"", {})))
    Partner.objects.filter(pk=partner.pk).update(
        failing_since=timezone.now() - timedelta(seconds=61)
    )
    delivery = _ingest(engine_api)
    send_one(delivery_id=delivery.pk)
    partner.refresh_from_db()
    assert partner.state == "paused" and "PORTAL_PARTNER_PAUSE_AFTER" in partner.state_reason


def test_claim_twice_only_one_wins(engine_api, partner_at, sink):
    partner_at(sink)
    delivery = _ingest(engine_api)
    now = timezone.now()
    import uuid

    assert claim(delivery_id=delivery.pk, token=uuid.uuid4(), now=now)
    assert not claim(delivery_id=delivery.pk, token=uuid.uuid4(), now=now)


def test_expired_lease_is_taken_again(engine_api, partner_at, sink):
    import uuid

    partner_at(sink)
    delivery = _ingest(engine_api)
    claim(delivery_id=delivery.pk, token=uuid.uuid4(), now=timezone.now())
    Delivery.objects.filter(pk=delivery.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert send_one(delivery_id=delivery.pk) == "succeeded"
    delivery.refresh_from_db()
    assert delivery.attempts == 2 and len(sink.received) == 1


def test_lost_worker_on_last_try_ends_dead_without_sending(engine_api, partner_at, sink, settings):
    import uuid

    settings.PORTAL_RETRY_SCHEDULE = (0,)
    partner_at(sink)
    delivery = _ingest(engine_api)
    claim(delivery_id=delivery.pk, token=uuid.uuid4(), now=timezone.now())
    Delivery.objects.filter(pk=delivery.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert send_one(delivery_id=delivery.pk) == "dead"
    assert sink.received == []


def test_order_later_delivery_waits_for_older_of_same_ticket(
    engine_api, partner_at, partner_server_factory
):
    partner_at(partner_server_factory(lambda r, n: (503, b"", {}) if n == 1 else OK))
    first = _ingest(engine_api, message="one")
    second = _ingest(engine_api, message="two")
    other_ticket = _ingest(engine_api, ticketNumber="another", message="three")
    # the first fails and will retry: the second of its ticket is held back
    assert send_one(delivery_id=first.pk) == "retrying"
    assert send_one(delivery_id=second.pk) == "not_claimed"
    # another ticket is not held back
    assert send_one(delivery_id=other_ticket.pk) == "succeeded"
    due = due_ids(now=timezone.now() + timedelta(hours=20))
    assert first.pk in due and second.pk not in due


def test_order_final_delivery_queues_next_of_ticket(
    engine_api, partner_at, sink, request, django_capture_on_commit_callbacks
):
    partner_at(sink)
    first = _ingest(engine_api, message="one")
    second = _ingest(engine_api, message="two")
    request.node.queued_deliveries.clear()
    with django_capture_on_commit_callbacks(execute=True):
        send_one(delivery_id=first.pk)
    assert request.node.queued_deliveries == [second.pk]


def test_dispatcher_skips_recently_queued_and_takes_stale(engine_api, partner_at, sink, settings):
    settings.PORTAL_REDISPATCH_AFTER = 60
    partner_at(sink)
    delivery = _ingest(engine_api)
    now = timezone.now()
    assert delivery.pk not in due_ids(now=now)  # queued on commit a moment ago
    assert delivery.pk in due_ids(now=now + timedelta(seconds=61))


def test_rotation_sends_both_signatures(engine_api, partner_at, sink, partner):
    partner_at(sink)
    old = SigningSecret.objects.get(partner=partner).secret
    new = signing_secret_rotate(partner=partner).secret
    send_one(delivery_id=_ingest(engine_api).pk)
    received = sink.received[0]
    assert len(received.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(received.body, received.headers)


def test_engine_relay_gets_bearer_and_tenant_signature(
    engine_api, partner_api, tenant, partner_server_factory
):
    engine = partner_server_factory()
    tenant.engine_base_url = engine.url
    tenant.engine_command_path = "/commands"
    tenant.engine_token = "engine-secret-token"
    tenant.save()
    engine_api.post(IN, incoming_body())
    event_id = partner_api.post("/api/v1/command", command_body()).json()["eventId"]
    relay = Delivery.objects.get(event_id=event_id)
    assert send_one(delivery_id=relay.pk) == "succeeded"
    received = engine.received[0]
    assert received.path == "/commands" and received.json == command_body()
    assert received.headers["Authorization"] == "Bearer engine-secret-token"
    Webhook(tenant.engine_signing_secret).verify(received.body, received.headers)
    stored = DeliveryAttempt.objects.get(delivery=relay).request_headers
    assert "engine-secret-token" not in str(stored)


def test_blocked_destination_is_dead_and_never_sent(engine_api, partner, settings):
    settings.PORTAL_OUTBOUND_ALLOWLIST = []
    partner.base_url = "http://169.254.169.254"
    partner.save()
    delivery = _ingest(engine_api)
    assert send_one(delivery_id=delivery.pk) == "dead"
    assert DeliveryAttempt.objects.get().error_class == "blocked_destination"


def test_first_schedule_entry_delays_the_first_attempt(engine_api, partner_at, sink, partner):
    partner.retry_schedule = "60,5"
    partner_at(sink)
    delivery = _ingest(engine_api)
    assert (delivery.next_attempt_at - timezone.now()).total_seconds() > 55
    assert send_one(delivery_id=delivery.pk) == "not_claimed"


def test_configuration_error_is_recorded_and_dead(engine_api, partner_at, sink, partner):
    # given a partner whose only signing secret has expired: nothing valid to sign with
    partner_at(sink)
    SigningSecret.objects.filter(partner=partner).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    delivery = _ingest(engine_api)
    assert send_one(delivery_id=delivery.pk) == "dead"
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    assert attempt.error_class == "configuration_error" and sink.received == []


def test_key_use_is_recorded(partner_api, partner):
    from integrations.models import ApiKey

    partner_api.get("/api/v1/contacts/x")
    assert ApiKey.objects.get(partner=partner).last_used_at is not None


@pytest.mark.parametrize("client", ["curl", "requests"])
def test_answer_with_nul_bytes_is_recorded_with_replacement_characters(
    client, engine_api, partner_at, partner_server_factory, settings
):
    # given a partner whose 2xx answer carries NUL bytes in its body
    # (PostgreSQL text and jsonb refuse NUL: recording the attempt used to fail, so the
    # delivery looked like a lost worker and was sent again and again until "dead")
    settings.PORTAL_DELIVERY_CLIENT = client
    body = b'{"status":"success"}\x00\x00'
    partner_at(partner_server_factory(lambda r, n: (200, body, {})))
    delivery = _ingest(engine_api)
    # when it is attempted
    assert send_one(delivery_id=delivery.pk) == "succeeded"
    # then the attempt is stored, U+FFFD in place of each NUL
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    assert attempt.response_body == '{"status":"success"}\ufffd\ufffd'


def test_answer_with_a_nul_byte_in_a_header_is_recorded_with_requests(
    engine_api, partner_at, partner_server_factory, settings
):
    # given the requests client (http.client accepts a NUL in a header value) and a partner
    # answering with one
    settings.PORTAL_DELIVERY_CLIENT = "requests"
    body = b'{"status":"success"}'
    partner_at(partner_server_factory(lambda r, n: (200, body, {"X-Junk": "a\x00b"})))
    delivery = _ingest(engine_api)
    # when it is attempted
    assert send_one(delivery_id=delivery.pk) == "succeeded"
    # then the header is stored, U+FFFD in place of the NUL
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    assert attempt.response_headers["X-Junk"] == "a\ufffdb"


def test_answer_with_a_nul_byte_in_a_header_is_a_protocol_error_with_curl(
    engine_api, partner_at, partner_server_factory, settings
):
    # given the curl client (libcurl refuses a NUL in a header) and a partner answering
    # with one
    settings.PORTAL_DELIVERY_CLIENT = "curl"
    body = b'{"status":"success"}'
    partner_at(partner_server_factory(lambda r, n: (200, body, {"X-Junk": "a\x00b"})))
    delivery = _ingest(engine_api)
    # when it is attempted
    assert send_one(delivery_id=delivery.pk) == "retrying"
    # then the broken answer is recorded as such, and retried
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    assert (attempt.outcome, attempt.error_class) == ("retry", "protocol_error")
    assert attempt.error_message.startswith("pycurl.error (8): ")


def test_url_credentials_are_not_stored_with_the_attempt(engine_api, partner, sink):
    # given a partner reached with Basic credentials written into its base URL
    partner.base_url = sink.url.replace("http://", "http://desk:pa55word@")
    partner.save()
    delivery = _ingest(engine_api)
    # when it is attempted
    assert send_one(delivery_id=delivery.pk) == "succeeded"
    # then the partner got the credentials, and the stored URL and headers do not keep them
    assert sink.received[0].headers["Authorization"].startswith("Basic ")
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    assert attempt.url == sink.url.replace("http://", "http://desk:***@") + "/incoming"
    assert "pa55word" not in str(attempt.request_headers)


def test_failing_partner_gets_one_attempt_in_flight_at_a_time(
    engine_api, partner_at, sink, partner, settings
):
    import uuid

    # given a failing partner with one attempt in flight (a live lease)
    partner_at(sink)
    busy = _ingest(engine_api, ticketNumber="one")
    waiting = _ingest(engine_api, ticketNumber="two")
    Partner.objects.filter(pk=partner.pk).update(consecutive_failures=3)
    assert claim(delivery_id=busy.pk, token=uuid.uuid4(), now=timezone.now())
    # when another of its deliveries, of another ticket, is due
    later = timezone.now() + timedelta(seconds=settings.PORTAL_REDISPATCH_AFTER + 1)
    # then it is neither claimed nor queued by the dispatcher
    assert send_one(delivery_id=waiting.pk) == "not_claimed"
    assert waiting.pk not in due_ids(now=later)
    # and it goes once the attempt in flight is over
    Delivery.objects.filter(pk=busy.pk).update(status="retrying", lease_expires_at=None)
    assert waiting.pk in due_ids(now=later)
    assert send_one(delivery_id=waiting.pk) == "succeeded"


def test_healthy_partner_is_not_limited_to_one_attempt_in_flight(engine_api, partner_at, sink):
    import uuid

    partner = partner_at(sink)
    Partner.objects.filter(pk=partner.pk).update(latency_ms_avg=20.0)  # answers quickly
    busy = _ingest(engine_api, ticketNumber="one")
    other = _ingest(engine_api, ticketNumber="two")
    assert claim(delivery_id=busy.pk, token=uuid.uuid4(), now=timezone.now())
    assert send_one(delivery_id=other.pk) == "succeeded"


def test_attempt_that_lost_its_lease_does_not_apply_its_outcome(
    engine_api, partner_at, sink, request, django_capture_on_commit_callbacks, settings
):
    import uuid

    settings.PORTAL_DELIVERY_PARALLEL = 1  # the fake below writes in the test's transaction

    # given an attempt whose lease another worker took over while it was sending
    partner_at(sink)
    first = _ingest(engine_api, message="one")
    second = _ingest(engine_api, message="two")
    original = sender.send_webhook

    def slow_send(**kwargs):
        result = original(**kwargs)
        Delivery.objects.filter(pk=first.pk).update(lease_token=uuid.uuid4())  # taken over
        return result

    sender.send_webhook = slow_send
    request.node.queued_deliveries.clear()
    try:
        with django_capture_on_commit_callbacks(execute=True):
            outcome = send_one(delivery_id=first.pk)
    finally:
        sender.send_webhook = original
    # then the attempt is recorded, but the delivery stays the other worker's
    assert outcome == "lease_lost"
    assert DeliveryAttempt.objects.filter(delivery=first).count() == 1
    first.refresh_from_db()
    assert first.status == "delivering" and second.pk not in request.node.queued_deliveries


def test_worker_lost_on_last_try_counts_as_failure_and_alerts(
    engine_api, partner_at, sink, settings, partner, django_capture_on_commit_callbacks
):
    import uuid

    from django.contrib.auth import get_user_model
    from django.core import mail

    from integrations.models import TenantMembership

    boss = get_user_model().objects.create_user("boss", email="boss@x.example", is_staff=True)
    TenantMembership.objects.create(user=boss, tenant=partner.tenant, role="admin")
    settings.PORTAL_RETRY_SCHEDULE = (0,)
    partner_at(sink)
    delivery = _ingest(engine_api)
    claim(delivery_id=delivery.pk, token=uuid.uuid4(), now=timezone.now())
    Delivery.objects.filter(pk=delivery.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert send_one(delivery_id=delivery.pk) == "dead"
    partner.refresh_from_db()
    assert partner.consecutive_failures == 1
    assert [m.to for m in mail.outbox if "failed" in m.subject] == [["boss@x.example"]]
