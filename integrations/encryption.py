"""Secrets at rest (signing secrets, engine tokens): encrypted with Fernet, keys from
PORTAL_ENCRYPTION_KEYS, so a database dump alone signs nothing and calls no engine.

The first key encrypts, every listed key decrypts: to rotate, put a new key first, run
`manage.py encryption_rotate` (re-encrypts every value with it), then drop the old key.
A value without the prefix is read as it is (rows from before encryption; the migration
that introduced it encrypts them).
"""

from __future__ import annotations

import functools
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models

PREFIX = "enc1:"


@functools.lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key.encode("ascii")) for key in keys])


def _keys() -> MultiFernet:
    return _fernet(tuple(settings.PORTAL_ENCRYPTION_KEYS))


def encrypt(value: str) -> str:
    """The stored form of `value` ("" stays "", so "not set" stays visible)."""
    if not value:
        return value
    return PREFIX + _keys().encrypt(value.encode("utf-8")).decode("ascii")


def decrypt(stored: str) -> str:
    """The value of a stored form. Raises ImproperlyConfigured when no configured key opens
    it (PORTAL_ENCRYPTION_KEYS lost the key it was encrypted with)."""
    if not stored or not stored.startswith(PREFIX):
        return stored
    return _decrypt(tuple(settings.PORTAL_ENCRYPTION_KEYS), stored)


# Every load of a tenant decrypts its three secrets and every batch its partner's signing
# secrets: the same few values, again and again (about 40 µs each). A stored form always
# opens to the same value under the same keys, so the answers are kept per (keys, stored
# form): nothing can go stale, and a key taken out of PORTAL_ENCRYPTION_KEYS is a new entry.
@functools.lru_cache(maxsize=4096)
def _decrypt(keys: tuple[str, ...], stored: str) -> str:
    try:
        return _fernet(keys).decrypt(stored[len(PREFIX) :].encode("ascii")).decode("utf-8")
    except InvalidToken:
        raise ImproperlyConfigured(
            "A stored secret cannot be decrypted with PORTAL_ENCRYPTION_KEYS: was the key it "
            "was encrypted with removed, or SECRET_KEY changed while no key was set?"
        ) from None


class EncryptedTextField(models.TextField):
    """Text stored encrypted (see the module); reads and writes plain text in Python.
    Never filter on it: every encryption of a value is different."""

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        return decrypt(value) if isinstance(value, str) else value

    def get_prep_value(self, value: Any) -> Any:
        value = super().get_prep_value(value)
        return encrypt(value) if isinstance(value, str) else value
