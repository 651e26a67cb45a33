"""The partner portal's rules (SPEC §9): single-use sign-in links, and what a signed-in
partner may change of itself (its paths, its signing secret, its API key). Reads and the
redeliveries are the same services the admin and the management API use.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from integrations.errors import Forbidden, NotFound
from integrations.models import ApiKey, Partner, PartnerPortalLink
from integrations.services.accounts import api_key_create, hash_credential
from integrations.services.partners import partner_update

SIGN_IN_PATH = "/partner/sign-in/"
# How long a partner's other keys keep working after it rolls its key.
KEY_ROLL_OVERLAP = timedelta(hours=24)


def portal_link_create(*, partner: Partner, created_by: object | None = None) -> tuple[str, object]:
    """A new sign-in link for the partner; returns (its path, its expiry). The token in the
    path is shown once: only its hash is kept."""
    raw = secrets.token_urlsafe(32)
    expires_at = timezone.now() + timedelta(seconds=settings.PORTAL_PARTNER_LINK_TTL)
    PartnerPortalLink.objects.create(
        partner=partner,
        token_hash=hash_credential(raw),
        created_by=created_by if getattr(created_by, "pk", None) else None,
        expires_at=expires_at,
    )
    return f"{SIGN_IN_PATH}{raw}/", expires_at


def portal_link_partner(raw: str) -> Partner:
    """The partner a link is for, without using it up (the page that asks to sign in).
    Raises NotFound (unknown, used or expired) and Forbidden (partner disabled, tenant
    inactive)."""
    link = _usable(PartnerPortalLink.objects.select_related("partner__tenant"), raw)
    return _allowed(link.partner)


def portal_link_redeem(raw: str) -> Partner:
    """Use the link up and return its partner: a second use, or one after its expiry, is
    refused. Raises as `portal_link_partner`."""
    with transaction.atomic():
        link = _usable(
            PartnerPortalLink.objects.select_for_update().select_related("partner__tenant"), raw
        )
        partner = _allowed(link.partner)
        link.used_at = timezone.now()
        link.save(update_fields=["used_at"])
    return partner


def _usable(links, raw: str) -> PartnerPortalLink:
    link = links.filter(token_hash=hash_credential(raw)).first()
    if link is None or link.used_at is not None or link.expires_at <= timezone.now():
        raise NotFound(
            "This sign-in link is not valid: it was used already or has expired. Ask for a "
            "new one.",
            code="link_invalid",
        )
    return link


def _allowed(partner: Partner) -> Partner:
    if partner.state == Partner.State.DISABLED or not partner.tenant.is_active:
        raise Forbidden("This partner may not sign in.", code="partner_disabled")
    return partner


def partner_paths_change(
    *, partner: Partner, incoming_message_path: str, send_message_path: str
) -> Partner:
    """A partner changing its own paths: checked as in the admin (PortalError by field)."""
    return partner_update(
        partner=partner,
        incoming_message_path=incoming_message_path,
        send_message_path=send_message_path,
    )


def partner_key_roll(*, partner: Partner) -> str:
    """A new API key for the partner (returned once); its other keys keep working for
    KEY_ROLL_OVERLAP, time to switch over, then fail."""
    now = timezone.now()
    until = now + KEY_ROLL_OVERLAP
    with transaction.atomic():
        live = ApiKey.objects.filter(partner=partner, revoked_at__isnull=True)
        live.filter(expires_at__isnull=True).update(expires_at=until)
        live.filter(expires_at__gt=until).update(expires_at=until)
        _, raw = api_key_create(
            kind=ApiKey.Kind.PARTNER, partner=partner, name="rolled in the portal"
        )
    return raw
