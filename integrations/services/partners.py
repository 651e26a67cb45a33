"""Partners: the one set of rules for their settings, creation, changes and signing secrets.

Every face (admin forms, management commands, and next the management API and the partner
portal) calls these; none re-implements them. Errors are PortalError with `errors` keyed by
the model's field names, so a form can show each problem beside its field.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.utils import timezone

from integrations.delivery import REDACTED
from integrations.errors import Conflict
from integrations.models import ApiKey, Partner, SigningSecret, Tenant
from integrations.services.accounts import api_key_create
from integrations.services.fields import (
    base_url_clean,
    channels_clean,
    collect_errors,
    outbound_url_check,
    path_clean,
    required_text,
)
from integrations.webhooks import generate_secret
from portal.env import parse_rate, parse_retry_schedule

# What an admin may set on a partner (state and health belong to the operations).
SETTINGS = (
    "name",
    "base_url",
    "incoming_message_path",
    "send_message_path",
    "channels",
    "connect_timeout",
    "timeout",
    "retry_schedule",
    "rate_limit",
)


def _timeout_clean(value: Any, *, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError("Must be a number of seconds.") from None
    if not low <= number <= high:
        raise ValueError(f"Must be from {low:g} to {high:g} seconds.")
    return number


def _schedule_clean(value: str) -> str:
    value = value.strip()
    if value:
        try:
            parse_retry_schedule(value, name="retry schedule")
        except ImproperlyConfigured as exc:
            raise ValueError(str(exc)) from None
    return value


def _rate_clean(value: str) -> str:
    value = value.strip()
    if value:
        try:
            return parse_rate(value, name="rate limit")
        except ImproperlyConfigured as exc:
            raise ValueError(str(exc)) from None
    return value


_CLEANERS = {
    "name": required_text(200),
    "base_url": lambda url: outbound_url_check(base_url_clean(url)),
    "incoming_message_path": path_clean,
    "send_message_path": path_clean,
    "channels": channels_clean,
    "connect_timeout": lambda v: _timeout_clean(v, low=0.5, high=30),
    # At most 60 s: the delivery lease (PORTAL_DELIVERY_LEASE_SECONDS) must outlast it.
    "timeout": lambda v: _timeout_clean(v, low=0.5, high=60),
    "retry_schedule": _schedule_clean,
    "rate_limit": _rate_clean,
}


def partner_settings_clean(**values: Any) -> dict[str, Any]:
    """Check and normalise partner settings (any of SETTINGS); returns them cleaned.

    Raises PortalError (`validation_error`) with every problem keyed by field name.
    """
    return collect_errors(_CLEANERS, values, "Some partner settings are not valid.")


def partner_create(
    *,
    tenant: Tenant,
    name: str,
    base_url: str,
    incoming_message_path: str,
    send_message_path: str,
    channels: list[str] | str | None = None,
    **delivery: Any,
) -> tuple[Partner, str, str]:
    """Create a partner with one API key and one signing secret. `delivery` may set
    connect_timeout, timeout, retry_schedule and rate_limit.

    Returns (partner, raw API key, signing secret); both are shown once.
    Raises PortalError (invalid settings, by field) and Conflict (name taken in the tenant).
    """
    cleaned = partner_settings_clean(
        name=name,
        base_url=base_url,
        incoming_message_path=incoming_message_path,
        send_message_path=send_message_path,
        channels=channels or [],
        **delivery,
    )
    try:
        with transaction.atomic():
            partner = Partner.objects.create(tenant=tenant, **cleaned)
            _, raw_key = api_key_create(kind=ApiKey.Kind.PARTNER, partner=partner, name="initial")
            secret = SigningSecret.objects.create(partner=partner, secret=generate_secret())
    except IntegrityError:
        raise _name_taken(tenant, cleaned["name"]) from None
    return partner, raw_key, secret.secret


def partner_update(*, partner: Partner, **changes: Any) -> Partner:
    """Change a partner's settings (any of SETTINGS), checked as at creation.

    Raises PortalError (invalid settings, by field) and Conflict (name taken in the tenant).
    """
    if "base_url" in changes:
        changes["base_url"] = keep_stored_password(changes["base_url"], partner.base_url)
    cleaned = partner_settings_clean(**changes)
    for name, value in cleaned.items():
        setattr(partner, name, value)
    try:
        with transaction.atomic():
            partner.save()
    except IntegrityError:
        raise _name_taken(partner.tenant, partner.name) from None
    return partner


def keep_stored_password(submitted: str, stored: str) -> str:
    """A URL shown with its password redacted (redact_url) and sent back unchanged keeps the
    stored password; any other URL is taken as it is. Credentials are never shown again once
    saved, so an edit of other settings must not erase them."""
    new, old = urlsplit(submitted.strip()), urlsplit(stored)
    if new.password != REDACTED or old.password is None:
        return submitted
    if (new.scheme, new.username, new.hostname, new.port) != (
        old.scheme,
        old.username,
        old.hostname,
        old.port,
    ):
        return submitted  # another place: the redacted text is no password for it
    netloc = f"{new.username or ''}:{old.password}@{new.netloc.rsplit('@', 1)[1]}"
    return urlunsplit(new._replace(netloc=netloc))


def partner_name_check(*, tenant: Tenant, name: str, partner: Partner | None = None) -> None:
    """Raises Conflict (with `errors` on `name`) when another partner of the tenant has
    this name (a form whose tenant is read-only cannot check it itself)."""
    others = Partner.objects.filter(tenant=tenant, name=name.strip())
    if partner is not None:
        others = others.exclude(pk=partner.pk)
    if others.exists():
        raise _name_taken(tenant, name.strip())


def _name_taken(tenant: Tenant, name: str) -> Conflict:
    return Conflict(
        f"Tenant {tenant.owner!r} already has a partner named {name!r}.",
        code="duplicate_name",
        errors={"name": ["This tenant already has a partner with this name."]},
    )


def signing_secret_rotate(*, partner: Partner, overlap_hours: int = 24) -> SigningSecret:
    """Add a new signing secret; the current ones expire after `overlap_hours`.

    While both are live every delivery carries both signatures.
    """
    expires = timezone.now() + timedelta(hours=overlap_hours)
    with transaction.atomic():
        SigningSecret.objects.filter(partner=partner, expires_at__isnull=True).update(
            expires_at=expires
        )
        return SigningSecret.objects.create(partner=partner, secret=generate_secret())
