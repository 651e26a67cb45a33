"""An engine key this process has let in is not read alone again (accounts._ENGINE_KEYS): its
row is read with the event's tenant, in one SELECT, so a revoked, expired or deleted key, or
one whose tenants changed, is still refused by the very next request (issue #16)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from integrations.models import ApiKey, Event
from integrations.services.accounts import api_key_create, api_key_revoke
from tests.conftest import Caller, incoming_body

URL = "/api/v1/engine/incoming"


@pytest.fixture
def known_key(tenant, partner):
    """An engine key naming the tenant, let in once already (so this process has it)."""
    key, raw = api_key_create(kind=ApiKey.Kind.ENGINE, tenants=[tenant])
    caller = Caller(APIClient(), raw)
    assert caller.post(URL, incoming_body(ticketNumber="first")).status_code == 202
    return key, caller


def _refused(response, status: int, code: str) -> None:
    assert (response.status_code, response.json()["code"]) == (status, code), response.content


def _stored() -> int:
    return Event.objects.count()


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ("revoke", "key_revoked"),
        ("expire", "key_expired"),
        ("delete", "invalid_key"),
    ],
)
def test_a_known_key_that_was_revoked_expired_or_deleted_is_refused_at_once(
    known_key, change, code
):
    key, caller = known_key
    before = _stored()
    if change == "revoke":
        api_key_revoke(key=key)
    elif change == "expire":
        ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    else:
        key.delete()
    response = caller.post(URL, incoming_body(ticketNumber="second"))
    _refused(response, 401, code)
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert _stored() == before  # nothing accepted


def test_a_known_key_whose_tenants_changed_is_held_to_the_new_ones(known_key, tenant):
    key, caller = known_key
    key.tenants.clear()
    _refused(caller.post(URL, incoming_body(ticketNumber="second")), 403, "owner_forbidden")
    ApiKey.objects.filter(pk=key.pk).update(all_tenants=True)
    assert caller.post(URL, incoming_body(ticketNumber="third")).status_code == 202


def test_a_revoked_known_key_gets_its_401_before_a_bad_bodys_400(known_key):
    key, caller = known_key
    _refused(caller.post(URL, incoming_body(createdDate="yesterday")), 400, "validation_error")
    api_key_revoke(key=key)
    _refused(caller.post(URL, incoming_body(createdDate="yesterday")), 401, "key_revoked")
    _refused(caller.post(URL, b"{not json"), 401, "key_revoked")


def test_a_revoked_known_key_gets_no_idempotent_replay(known_key):
    key, caller = known_key
    body = incoming_body(ticketNumber="replayed")
    first = caller.post(URL, body, HTTP_IDEMPOTENCY_KEY="once")
    assert first.status_code == 202
    assert caller.post(URL, body, HTTP_IDEMPOTENCY_KEY="once")["Idempotent-Replayed"] == "true"
    api_key_revoke(key=key)
    _refused(caller.post(URL, body, HTTP_IDEMPOTENCY_KEY="once"), 401, "key_revoked")


def test_a_known_key_still_counts_as_used(known_key):
    key, caller = known_key
    long_ago = timezone.now() - timedelta(days=3)
    ApiKey.objects.filter(pk=key.pk).update(last_used_at=long_ago)
    assert caller.post(URL, incoming_body(ticketNumber="second")).status_code == 202
    assert ApiKey.objects.get(pk=key.pk).last_used_at > long_ago


def test_another_key_with_the_same_row_id_is_not_taken_for_the_known_one(known_key, tenant):
    # the process knows the key by its secret's hash, and reads its row by id and hash
    key, caller = known_key
    ApiKey.objects.filter(pk=key.pk).update(key_hash="0" * 64)
    _refused(caller.post(URL, incoming_body(ticketNumber="second")), 401, "invalid_key")


def test_a_revoked_known_key_gets_its_401_on_any_method(known_key):
    # only the POST reads the key with its tenant: every other method reads it first
    key, caller = known_key
    api_key_revoke(key=key)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {caller.key}"}
    for method in ("options", "get", "put"):
        response = getattr(caller.client, method)(URL, **auth)
        _refused(response, 401, "key_revoked")
