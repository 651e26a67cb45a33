"""E-mail alerts to a tenant's admins about its partners (SPEC §5 partner state)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.core.mail import send_mail
from django.db.models import Q

from integrations.models import Partner, TenantMembership

logger = logging.getLogger(__name__)

DEAD_ALERT_INTERVAL = timedelta(hours=1)


def tenant_admin_emails(*, tenant_id: int) -> list[str]:
    """E-mail addresses of the tenant's active admins."""
    return sorted(
        TenantMembership.objects.filter(
            tenant_id=tenant_id, role=TenantMembership.Role.ADMIN, user__is_active=True
        )
        .exclude(user__email="")
        .values_list("user__email", flat=True)
    )


def _send(partner: Partner, subject: str, body: str) -> bool:
    recipients = tenant_admin_emails(tenant_id=partner.tenant_id)
    if not recipients:
        logger.warning(
            "no admin e-mail for tenant %s: alert not sent: %s", partner.tenant.owner, subject
        )
        return False
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients)
    except Exception:  # an unreachable mail server must not break deliveries
        logger.exception("could not send alert %r", subject)
        return False
    return True


def partner_paused_alert(*, partner_id: int) -> bool:
    """Mail the tenant's admins that a partner was paused and why. Returns True when sent."""
    partner = Partner.objects.select_related("tenant").get(pk=partner_id)
    subject = f"[Integration Portal] Partner {partner.name} paused"
    body = (
        f"The partner {partner.name} of tenant {partner.tenant.name} ({partner.tenant.owner}) "
        f"was paused automatically.\n\nReason: {partner.state_reason}\n"
        f"Last error: {partner.last_error or '-'}\n\n"
        "Its deliveries are kept and wait. Resume the partner in the admin once its endpoint "
        "works again; the waiting deliveries are then sent in order.\n"
    )
    return _send(partner, subject, body)


def deliveries_dead_alert(*, partner_id: int, now: datetime) -> bool:
    """Mail the tenant's admins that deliveries went dead, at most once an hour per partner.

    The hourly slot is taken with a conditional UPDATE, so concurrent workers send one mail.
    """
    taken = (
        Partner.objects.filter(pk=partner_id)
        .filter(
            Q(dead_alert_sent_at__isnull=True)
            | Q(dead_alert_sent_at__lte=now - DEAD_ALERT_INTERVAL)
        )
        .update(dead_alert_sent_at=now)
    )
    if not taken:
        return False
    partner = Partner.objects.select_related("tenant").get(pk=partner_id)
    dead = partner.deliveries.filter(status="dead").count()
    subject = f"[Integration Portal] Deliveries to {partner.name} failed"
    body = (
        f"Deliveries to the partner {partner.name} of tenant {partner.tenant.name} "
        f"({partner.tenant.owner}) have failed for good ({dead} dead in all).\n\n"
        f"Last error: {partner.last_error or '-'}\n\n"
        "Dead deliveries can be recovered in the admin (by partner and time window).\n"
    )
    return _send(partner, subject, body)
