"""Where and how a delivery goes (integrations/outbox/targets.py)."""

from datetime import timedelta

from django.utils import timezone

from integrations.models import Delivery, SigningSecret
from integrations.outbox.targets import (
    first_attempt_at,
    partner_target,
    relay_target,
    retry_schedule,
)


def test_portal_engine_token_goes_only_to_the_portal_engine_url(tenant, settings):
    settings.PORTAL_ENGINE_BASE_URL = "https://engine.operator.example"
    settings.PORTAL_ENGINE_SEND_MESSAGE_PATH = "/send"
    settings.PORTAL_ENGINE_TOKEN = "operator-secret"
    # a tenant on the portal-wide engine sends the portal-wide token
    target = relay_target(tenant, Delivery.Endpoint.ENGINE_MESSAGE)
    assert target.url == "https://engine.operator.example/send"
    assert target.bearer_token == "operator-secret"
    # a tenant that points the relay at its own server never gets it
    tenant.engine_base_url = "https://collector.example"
    target = relay_target(tenant, Delivery.Endpoint.ENGINE_MESSAGE)
    assert target.url == "https://collector.example/send" and target.bearer_token == ""
    tenant.engine_token = "tenant-own"
    assert relay_target(tenant, Delivery.Endpoint.ENGINE_MESSAGE).bearer_token == "tenant-own"


def test_partner_target_signs_with_live_secrets_only(partner):
    now = timezone.now()
    SigningSecret.objects.filter(partner=partner).update(expires_at=now - timedelta(seconds=1))
    live = SigningSecret.objects.create(partner=partner, secret="whsec_bGl2ZQ==")
    target = partner_target(partner, Delivery.Endpoint.SEND, now)
    assert target.secrets == (live.secret,)
    assert target.url == "http://127.0.0.1:9/send"
    assert (target.connect_timeout, target.deadline) == (3.0, 10.0)


def test_retry_schedule_override_and_first_attempt(settings):
    settings.PORTAL_RETRY_SCHEDULE = (0, 5)
    now = timezone.now()
    assert retry_schedule("") == (0, 5)
    assert retry_schedule("7, 8") == (7, 8)
    assert retry_schedule("not, numbers") == (0, 5)  # a bad override never stops deliveries
    assert first_attempt_at("", now) == now
    assert first_attempt_at("30,60", now) == now + timedelta(seconds=30)
