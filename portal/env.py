"""Environment-variable readers: the one way settings are read.

Every reader fails loudly (ImproperlyConfigured naming the variable) on a value it cannot
parse, so a typo in production stops the process at start instead of misbehaving later.
"""

from __future__ import annotations

import os
import re

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_str(name: str, default: str = "") -> str:
    """Return the variable's value stripped of surrounding blanks, or ``default``."""
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool = False) -> bool:
    """Return a boolean; accepts 1/0, true/false, yes/no, on/off (any case)."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default  # set but empty (as a copied .env.example leaves it): the default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean (use true or false).")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    """Return an integer, at least ``minimum`` when given."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a whole number.") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name}={value} must be at least {minimum}.")
    return value


def env_choice(name: str, choices: tuple[str, ...]) -> str:
    """Return one of ``choices`` (any case); unset or empty is the first."""
    value = env_str(name).lower()
    if not value:
        return choices[0]
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} must be one of {', '.join(choices)}.")
    return value


def env_list(name: str, default: str = "") -> list[str]:
    """Return a comma-separated list with blanks and empty items dropped."""
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


def env_url(name: str, default: str = "") -> str:
    """Return an http(s) URL without a trailing slash, or '' when unset."""
    value = env_str(name, default)
    if value and not re.match(r"^https?://[^/\s]+", value):
        raise ImproperlyConfigured(f"{name}={value!r} is not an http(s) URL.")
    return value.rstrip("/")


def parse_retry_schedule(value: str, *, name: str = "PORTAL_RETRY_SCHEDULE") -> tuple[int, ...]:
    """Parse 'comma-separated seconds' into a tuple; entry n is the delay before attempt n."""
    try:
        schedule = tuple(int(part.strip()) for part in value.split(","))
    except ValueError:
        raise ImproperlyConfigured(
            f"{name}={value!r} must be comma-separated whole seconds, e.g. '0,5,300'."
        ) from None
    if not schedule or any(delay < 0 for delay in schedule):
        raise ImproperlyConfigured(f"{name}={value!r} needs at least one delay, none negative.")
    return schedule


_RATE_RE = re.compile(r"^(\d+)/(second|sec|s|minute|min|m|hour|h|day|d)$")


def parse_rate(value: str, *, name: str = "PORTAL_PARTNER_RATE") -> str:
    """Check a DRF-style rate such as '50/second' and return it normalised."""
    value = value.strip().lower()
    match = _RATE_RE.match(value)
    if not match or int(match.group(1)) < 1:
        raise ImproperlyConfigured(f"{name}={value!r} must look like '50/second' or '600/minute'.")
    return value


_DURATION_RE = re.compile(r"^(\d+)\s*(s|m|h|d)?$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: str, *, name: str) -> int:
    """Parse '5d', '12h', '30m', '90s' or bare seconds into seconds."""
    match = _DURATION_RE.match(value.strip().lower())
    if not match:
        raise ImproperlyConfigured(f"{name}={value!r} must be a duration such as 5d, 12h or 90s.")
    return int(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_allowlist(value: str, *, name: str = "PORTAL_OUTBOUND_ALLOWLIST") -> list[str]:
    """Check comma-separated CIDRs and host names with the delivery transport's own parser
    (so what starts is exactly what deliveries accept); return the entries."""
    from integrations.ssrf import OutboundPolicy

    try:
        OutboundPolicy.from_setting(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: {exc}") from None
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_encryption_keys(
    value: str, *, secret_key: str, name: str = "PORTAL_ENCRYPTION_KEYS"
) -> tuple[str, ...]:
    """Comma-separated Fernet keys (url-safe base64 of 32 bytes), newest first: the first
    encrypts, every one decrypts (rotation). Empty: one key derived from SECRET_KEY, so a
    database dump alone still decrypts nothing."""
    import base64
    import binascii
    import hashlib

    keys = tuple(item.strip() for item in value.split(",") if item.strip())
    for key in keys:
        try:
            raw = base64.urlsafe_b64decode(key.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raw = b""
        if len(raw) != 32:
            raise ImproperlyConfigured(
                f"{name}: {key[:6]}… is not a Fernet key (url-safe base64 of 32 bytes); make "
                "one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'"
            )
    if keys:
        return keys
    derived = hashlib.sha256(b"integration-portal-encryption:" + secret_key.encode()).digest()
    return (base64.urlsafe_b64encode(derived).decode("ascii"),)
