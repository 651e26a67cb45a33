"""A partner's health counters (integrations/outbox/health.py)."""

import pytest
from django.utils import timezone

from integrations.models import Partner
from integrations.outbox.health import latency_fold, partner_successes


def test_latency_average_of_many_zero_ms_attempts_does_not_underflow(partner):
    # given an average already decayed towards the smallest float (thousands of 0 ms tries),
    # which PostgreSQL refused to multiply further ("value out of range: underflow")
    Partner.objects.filter(pk=partner.pk).update(latency_ms_avg=1e-300)
    # when more 0 ms successes are counted, in batches as a worker does
    for _ in range(200):
        partner_successes(partner.pk, [0] * 20, timezone.now())
    # then the counters still move and the average settles at 0
    partner.refresh_from_db()
    assert partner.success_count == 4000 and partner.latency_ms_avg == 0.0


def test_latency_average_is_folded_exactly_per_batch(partner):
    partner_successes(partner.pk, [100], timezone.now())
    partner_successes(partner.pk, [10, 20, 30], timezone.now())
    partner.refresh_from_db()
    assert partner.latency_ms_avg == pytest.approx(latency_fold(None, [100, 10, 20, 30]))
