"""Secrets at rest (issue #17): signing secrets and engine tokens are stored encrypted with
PORTAL_ENCRYPTION_KEYS; rotation re-encrypts with a new key."""

import json
from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connection

from integrations import encryption
from integrations.models import SigningSecret, Tenant
from portal.env import parse_encryption_keys


def _raw(table: str, column: str, pk: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {table} WHERE id = %s", [pk])  # noqa: S608
        return cursor.fetchone()[0]


def test_a_database_dump_holds_no_secret(partner_with_key, tenant):
    partner, _, secret = partner_with_key
    Tenant.objects.filter(pk=tenant.pk).update(engine_token="engine-token-123")
    stored = SigningSecret.objects.get(partner=partner)
    raw_secret = _raw(SigningSecret._meta.db_table, "secret", stored.pk)
    raw_token = _raw(Tenant._meta.db_table, "engine_token", tenant.pk)
    raw_engine_secret = _raw(Tenant._meta.db_table, "engine_signing_secret", tenant.pk)
    # the columns hold ciphertext only
    for raw, plain in (
        (raw_secret, secret),
        (raw_token, "engine-token-123"),
        (raw_engine_secret, Tenant.objects.get(pk=tenant.pk).engine_signing_secret),
    ):
        assert raw.startswith(encryption.PREFIX) and plain not in raw
    # and the portal reads plain text
    assert stored.secret == secret and secret.startswith("whsec_")
    assert Tenant.objects.get(pk=tenant.pk).engine_token == "engine-token-123"


def test_keys_rotate_without_losing_a_secret(partner_with_key, settings):
    partner, _, secret = partner_with_key
    old, new = settings.PORTAL_ENCRYPTION_KEYS[0], Fernet.generate_key().decode()
    # given a new key put first: values written with the old one still read
    settings.PORTAL_ENCRYPTION_KEYS = (new, old)
    assert SigningSecret.objects.get(partner=partner).secret == secret
    # when the rotation runs
    out = StringIO()
    call_command("encryption_rotate", stdout=out)
    assert json.loads(out.getvalue())["signingSecrets"] >= 1
    # then the old key can go
    settings.PORTAL_ENCRYPTION_KEYS = (new,)
    assert SigningSecret.objects.get(partner=partner).secret == secret
    # and with only the old key nothing opens, and the error says what to check
    settings.PORTAL_ENCRYPTION_KEYS = (old,)
    with pytest.raises(ImproperlyConfigured, match="PORTAL_ENCRYPTION_KEYS"):
        SigningSecret.objects.get(partner=partner)


def test_plain_text_from_before_encryption_is_read_as_it_is():
    assert encryption.decrypt("whsec_legacy") == "whsec_legacy"
    assert encryption.encrypt("") == "" and encryption.decrypt("") == ""


def test_encryption_keys_setting_is_checked_or_derived():
    key = Fernet.generate_key().decode()
    assert parse_encryption_keys(f" {key} , {key}", secret_key="x") == (key, key)
    derived = parse_encryption_keys("", secret_key="s3cret")
    assert len(derived) == 1 and derived != parse_encryption_keys("", secret_key="other")
    Fernet(derived[0].encode())  # a valid key
    with pytest.raises(ImproperlyConfigured, match="not a Fernet key"):
        parse_encryption_keys("too-short", secret_key="x")
