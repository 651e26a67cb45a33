"""Rules for the settings tenant admins type (URLs, paths, channels, time zones), written
once for every face: admin forms, management commands, the management API.

Each cleaner returns the normalised value or raises ValueError with a sentence for the
field; `collect_errors` runs several and raises one PortalError keyed by field name.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator

from integrations.errors import PortalError
from integrations.outbox.targets import outbound_policy
from integrations.payloads import CHANNEL_PATTERN, MAX_CHANNEL, UNSTORABLE_RE

_CHANNEL_RE = re.compile(CHANNEL_PATTERN)


def base_url_clean(url: str, *, max_length: int = 2048) -> str:
    """An absolute http(s) URL (the scheme is never guessed), without a trailing slash.
    Raises ValueError with the problem."""
    url = url.strip()
    if len(url) > max_length:
        raise ValueError(f"At most {max_length} characters.")
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        raise ValueError(
            "Not an absolute http(s) URL: it must start with http:// or https://, such as "
            "https://desk.example.com."
        ) from None
    return url.rstrip("/")


def outbound_url_check(url: str) -> str:
    """Refuse a URL whose host is an address the outbound policy blocks (SSRF: private,
    loopback, link-local, metadata... unless PORTAL_OUTBOUND_ALLOWLIST allows it), or
    `localhost`; a host name is checked again at every connection, once resolved. Returns
    the URL; raises ValueError naming the rule."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost" and not host.endswith(".localhost"):
            return url
        address = ipaddress.ip_address("127.0.0.1")
    reason = outbound_policy().block_reason(host, address)
    if reason:
        raise ValueError(
            f"The portal may not send to {host}: {reason} (PORTAL_OUTBOUND_ALLOWLIST can allow it)."
        )
    return url


def endpoint_url_clean(url: str, *, max_length: int = 2048) -> str:
    """An absolute http(s) URL that is posted to as it is (a trailing slash kept: a
    receiver that redirects the other form would answer 3xx, which is final).
    Raises ValueError."""
    base_url_clean(url, max_length=max_length)
    return outbound_url_check(url.strip())


def storable_text(value: str) -> str:
    """`value` unless it holds what no database column takes (NUL, an unpaired surrogate):
    then ValueError."""
    if UNSTORABLE_RE.search(value):
        raise ValueError("May not contain NUL characters or unpaired surrogates.")
    return value


def path_clean(path: str, *, leading_slash: bool = True) -> str:
    """A URL path: no white space, at most 500 characters, starting with '/' unless
    `leading_slash` is False. Raises ValueError."""
    path = path.strip()
    if (
        any(ch.isspace() for ch in path)
        or len(path) > 500
        or (leading_slash and not path.startswith("/"))
    ):
        must = "Must start with '/', contain" if leading_slash else "Must contain"
        raise ValueError(f"{must} no spaces and have at most 500 characters.")
    return storable_text(path)


def required_text(limit: int) -> Callable[[str], str]:
    """A cleaner: stripped, not empty, at most `limit` characters."""

    def clean(value: str) -> str:
        value = value.strip()
        if not value or len(value) > limit:
            raise ValueError(f"Required, at most {limit} characters.")
        return storable_text(value)

    return clean


def text(limit: int) -> Callable[[str], str]:
    """A cleaner: kept as typed, at most `limit` characters."""

    def clean(value: str) -> str:
        if len(value) > limit:
            raise ValueError(f"At most {limit} characters.")
        return storable_text(value)

    return clean


def optional(clean: Callable[[str], str]) -> Callable[[str], str]:
    """A cleaner that lets "" (or blanks) through as "" and checks anything else."""
    return lambda value: clean(value) if value.strip() else ""


def channels_clean(channels: list[str] | str) -> list[str]:
    """Channel names (a list, or text separated by commas), lower-cased, sorted, each one a
    channel name as events carry it (SPEC §3.1); empty means every channel. Raises
    ValueError naming the names refused."""
    if isinstance(channels, str):
        channels = channels.split(",")
    names = sorted({c.strip().lower() for c in channels if c.strip()})
    bad = [n for n in names if len(n) > MAX_CHANNEL or not _CHANNEL_RE.match(n)]
    if bad:
        raise ValueError(
            f"Not a channel name: {', '.join(repr(n) for n in bad)}. Use lower-case names "
            "such as whatsapp or telegram (letters, digits, '.', '_' or '-', no spaces)."
        )
    return names


def time_zone_clean(name: str) -> str:
    """An IANA time zone name such as Asia/Jakarta. Raises ValueError."""
    name = name.strip()
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"Unknown time zone {name!r}; use a name such as Asia/Jakarta.") from None
    return name


def collect_errors(
    cleaners: Mapping[str, Callable[[Any], Any]], values: Mapping[str, Any], message: str
) -> dict[str, Any]:
    """Clean each value with its field's cleaner; returns the cleaned values, or raises
    PortalError (`validation_error`, `message`) with every problem keyed by field name.
    A value no cleaner knows is a programming error (TypeError)."""
    unknown = set(values) - set(cleaners)
    if unknown:
        raise TypeError(f"no such settings: {sorted(unknown)}")
    cleaned, errors = {}, {}
    for name, value in values.items():
        try:
            cleaned[name] = cleaners[name](value)
        except ValueError as exc:
            errors[name] = [str(exc)]
    if errors:
        details = "; ".join(f"{name}: {' '.join(problems)}" for name, problems in errors.items())
        raise PortalError(f"{message} {details}", code="validation_error", errors=errors)
    return cleaned
