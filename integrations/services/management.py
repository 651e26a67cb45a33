"""Management tokens and what a management-API caller may do (SPEC §8).

A token belongs to one tenant and acts in a role: `support` reads everything of its tenant
and may redeliver, recover and send test events; `admin` may also change configuration,
keys and secrets, and cancel. Tokens are random, shown once, stored as a prefix plus a
SHA-256 hash, revocable and may expire. Every change made with one is recorded in the same
history as a change made in the admin (who, when, what).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.utils import timezone

from integrations.errors import Forbidden, NotFound, PortalError, Unauthorized
from integrations.models import ManagementToken, Tenant, TenantMembership
from integrations.services.accounts import credential_lookup, credential_used, hash_credential

TOKEN_PREFIX = "mgt"
ADMIN, SUPPORT = TenantMembership.Role.ADMIN, TenantMembership.Role.SUPPORT
# The user the admin's history names for changes made with a token nobody created in the UI
# (`create_management_token`): inactive, without a password, never able to sign in.
API_USER = "management-api"


def management_token_create(
    *,
    tenant: Tenant,
    role: str,
    name: str = "",
    created_by: object | None = None,
    expires_at: datetime | None = None,
) -> tuple[ManagementToken, str]:
    """A new token and its raw value (never stored, never shown again). Raises PortalError
    for a role that is not admin or support, or an expiry in the past."""
    if role not in TenantMembership.Role.values:
        raise PortalError(
            f"The role must be one of {', '.join(TenantMembership.Role.values)}.",
            code="validation_error",
            errors={"role": [f"Not a role: {role!r}."]},
        )
    if expires_at is not None and expires_at <= timezone.now():
        raise PortalError(
            "The expiry must be in the future.",
            code="validation_error",
            errors={"expiresAt": ["Must be in the future."]},
        )
    prefix = f"{TOKEN_PREFIX}_{secrets.token_hex(6)}"
    raw = f"{prefix}.{secrets.token_urlsafe(32)}"
    token = ManagementToken.objects.create(
        tenant=tenant,
        role=role,
        name=name[:200],
        prefix=prefix,
        token_hash=hash_credential(raw),
        created_by=created_by if getattr(created_by, "pk", None) else None,
        expires_at=expires_at,
    )
    return token, raw


def management_token_revoke(*, token: ManagementToken) -> ManagementToken:
    """Revoke a token at once: its next call gets 401."""
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


@dataclass(frozen=True)
class Manager:
    """Who is calling the management API: a token, its tenant and its role."""

    token: ManagementToken
    tenant: Tenant

    @property
    def role(self) -> str:
        return self.token.role

    @property
    def is_admin(self) -> bool:
        return self.token.role == ADMIN

    def require_admin(self) -> None:
        """Raises Forbidden unless the token acts as admin."""
        if not self.is_admin:
            raise Forbidden(
                "This operation needs a management token with the admin role.",
                code="admin_role_required",
            )


def manager_authenticate(raw: str) -> Manager:
    """Resolve a management token. Raises Unauthorized (a partner or engine key, unknown,
    malformed, revoked or expired token) and Forbidden (its tenant is inactive)."""
    prefix, dot, _ = raw.partition(".")
    if not prefix.startswith(f"{TOKEN_PREFIX}_"):
        raise Unauthorized(
            "The management API takes management tokens (mgt_…), not partner or engine keys.",
            code="management_token_required",
        )
    tokens = ManagementToken.objects.select_related("tenant")
    token = credential_lookup(
        lambda prefix: tokens.filter(prefix=prefix).first(),
        raw,
        hash_field="token_hash",
        noun="management token",
        code="token",
    )
    if not token.tenant.is_active:
        raise Forbidden("This tenant is inactive.", code="tenant_inactive")
    credential_used(ManagementToken, token)
    return Manager(token=token, tenant=token.tenant)


def change_record(
    *, manager: Manager, obj: models.Model, message: str, action: int = CHANGE
) -> None:
    """Record a change made through the management API in the admin's history of `obj`:
    the token's creator (or the management-api user), now, and what changed."""
    user = manager.token.created_by
    if user is None:
        user, created = get_user_model().objects.get_or_create(
            username=API_USER, defaults={"is_active": False}
        )
        if created:  # (a person who took this name first keeps their password)
            user.set_unusable_password()
            user.save(update_fields=["password"])
    LogEntry.objects.create(
        user_id=user.pk,
        content_type=ContentType.objects.get_for_model(obj, for_concrete_model=False),
        object_id=str(obj.pk),
        object_repr=str(obj)[:200],
        action_flag=action,
        change_message=f"{message} (management API, token {manager.token.prefix})",
    )


def owned(queryset: models.QuerySet, manager: Manager, pk: object, what: str) -> models.Model:
    """The object `pk` of the caller's tenant from `queryset`; another tenant's (or none) is
    NotFound, so ids of other tenants reveal nothing."""
    try:
        return queryset.get(tenant=manager.tenant, pk=pk)
    except (queryset.model.DoesNotExist, ValueError, TypeError):
        raise NotFound(f"No {what} {pk}.", code=f"{what}_not_found") from None
