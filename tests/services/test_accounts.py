"""API key authentication (services/accounts.principal_authenticate): what counts as use."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from integrations.errors import Forbidden, Unauthorized
from integrations.models import ApiKey, Partner
from integrations.services.accounts import principal_authenticate


def _key(partner) -> ApiKey:
    return ApiKey.objects.get(partner=partner)


def test_an_accepted_call_counts_as_use(partner_with_key):
    partner, raw, _ = partner_with_key
    assert _key(partner).last_used_at is None
    assert principal_authenticate(raw).partner.pk == partner.pk
    assert _key(partner).last_used_at is not None


@pytest.mark.parametrize(
    ("refusal", "error"),
    [
        ({"revoked_at": timezone.now()}, Unauthorized),
        ({"expires_at": timezone.now() - timedelta(seconds=1)}, Unauthorized),
        ("disabled", Forbidden),
    ],
    ids=["revoked", "expired", "partner-disabled"],
)
def test_a_refused_call_does_not_count_as_use(partner_with_key, refusal, error):
    # given a key last used long ago, now refused
    partner, raw, _ = partner_with_key
    long_ago = timezone.now() - timedelta(days=3)
    ApiKey.objects.filter(partner=partner).update(last_used_at=long_ago)
    if refusal == "disabled":
        Partner.objects.filter(pk=partner.pk).update(state=Partner.State.DISABLED)
    else:
        ApiKey.objects.filter(partner=partner).update(**refusal)
    # when a call arrives with it, it is refused and its "last used" stays
    with pytest.raises(error):
        principal_authenticate(raw)
    assert _key(partner).last_used_at == long_ago
