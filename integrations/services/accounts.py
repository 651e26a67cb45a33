"""Tenants, users, API keys and who is calling (partners: services/partners.py)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone

from integrations.errors import Conflict, Forbidden, NotFound, PortalError, Unauthorized
from integrations.models import (
    ApiKey,
    ManagementToken,
    Partner,
    SigningSecret,
    Tenant,
    TenantMembership,
)
from integrations.services import ingest_sql
from integrations.services.fields import (
    base_url_clean,
    collect_errors,
    endpoint_url_clean,
    optional,
    path_clean,
    required_text,
    text,
    time_zone_clean,
)
from integrations.services.ingest_sql import CallerKey, CallerPartner, CallerTenant, PartnerTarget
from integrations.webhooks import generate_secret

KEY_PREFIXES = {ApiKey.Kind.PARTNER: "prt", ApiKey.Kind.ENGINE: "eng"}


def hash_credential(raw: str) -> str:
    """What is stored of a bearer credential (API key, management token): its SHA-256."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


TENANT_SETTINGS = (
    "owner",
    "name",
    "is_active",
    "time_zone",
    "sticker_text",
    "retention_days",
    "engine_base_url",
    "engine_send_message_path",
    "engine_command_path",
    "engine_token",
    "operations_url",
)


def _retention(value: int) -> int:
    if not isinstance(value, int) or value < 0:
        raise ValueError("Must be a whole number of days (0 or more).")
    return value


_TENANT_CLEANERS: dict[str, Callable[[Any], Any]] = {
    "owner": required_text(255),
    "name": required_text(200),
    "is_active": bool,
    "time_zone": time_zone_clean,
    "sticker_text": required_text(100),
    "retention_days": _retention,
    "engine_base_url": optional(lambda url: base_url_clean(url, max_length=200)),
    # as earlier versions took them: the relay joins them with one slash either way
    "engine_send_message_path": lambda path: path_clean(path, leading_slash=False),
    "engine_command_path": lambda path: path_clean(path, leading_slash=False),
    "engine_token": text(500),
    "operations_url": optional(lambda url: endpoint_url_clean(url, max_length=500)),
}


def tenant_settings_clean(**values: Any) -> dict[str, Any]:
    """Check and normalise tenant settings (any of TENANT_SETTINGS); returns them cleaned.

    Raises PortalError (`validation_error`) with every problem keyed by field name.
    """
    return collect_errors(_TENANT_CLEANERS, values, "Some tenant settings are not valid.")


def tenant_create(*, owner: str, name: str, time_zone: str = "Asia/Jakarta", **more: Any) -> Tenant:
    """Create a tenant with a fresh engine signing secret (and an operations signing secret
    when it has an operations URL); `more` may set any other of TENANT_SETTINGS.

    Raises PortalError (invalid settings, by field), Conflict (owner taken).
    """
    cleaned = tenant_settings_clean(owner=owner, name=name, time_zone=time_zone, **more)
    try:
        with transaction.atomic():
            return Tenant.objects.create(
                **cleaned,
                engine_signing_secret=generate_secret(),
                operations_signing_secret=generate_secret()
                if cleaned.get("operations_url")
                else "",
            )
    except IntegrityError:
        raise Conflict(
            f"A tenant with owner {cleaned['owner']!r} exists already.",
            code="duplicate_owner",
            errors={"owner": ["A tenant with this ID exists already."]},
        ) from None


def tenant_update(*, tenant: Tenant, **changes: Any) -> Tenant:
    """Change a tenant's settings (any of TENANT_SETTINGS), checked as at creation. A tenant
    without an engine signing secret (made before secrets existed) gets one, and so does a
    tenant given an operations URL without an operations signing secret.

    Raises PortalError (invalid settings, by field), Conflict (owner taken).
    """
    for name, value in tenant_settings_clean(**changes).items():
        setattr(tenant, name, value)
    if not tenant.engine_signing_secret:
        tenant.engine_signing_secret = generate_secret()
    if tenant.operations_url and not tenant.operations_signing_secret:
        tenant.operations_signing_secret = generate_secret()
    try:
        with transaction.atomic():
            tenant.save()
    except IntegrityError:
        raise Conflict(
            f"A tenant with owner {tenant.owner!r} exists already.",
            code="duplicate_owner",
            errors={"owner": ["A tenant with this ID exists already."]},
        ) from None
    return tenant


def tenant_get(*, owner: str) -> Tenant:
    """Return the tenant by owner; raises NotFound."""
    try:
        return Tenant.objects.get(owner=owner)
    except Tenant.DoesNotExist:
        raise NotFound(f"No tenant with owner {owner!r}.", code="unknown_owner") from None


def api_key_create(
    *,
    kind: str,
    partner: Partner | None = None,
    tenants: list[Tenant] | None = None,
    name: str = "",
    expires_at: datetime | None = None,
    all_tenants: bool = False,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its raw value, which is never stored or shown again.

    An engine key acts for every tenant (later ones included) when `all_tenants` is set or
    when it names no tenants; that is recorded explicitly, so a key whose tenants are deleted
    acts for none, not for all. A partner key is its partner's only.
    """
    key = ApiKey(
        kind=kind,
        partner=partner,
        name=name,
        expires_at=expires_at,
        all_tenants=kind == ApiKey.Kind.ENGINE and (all_tenants or not tenants),
    )
    raw = _key_generate(key)
    key.save()
    if tenants:
        key.tenants.set(tenants)
    return key, raw


def _key_generate(key: ApiKey) -> str:
    """Give an unsaved key a fresh random value; returns the raw value (only the prefix and
    a SHA-256 hash are kept)."""
    prefix = f"{KEY_PREFIXES[key.kind]}_{secrets.token_hex(6)}"
    raw = f"{prefix}.{secrets.token_urlsafe(32)}"
    key.prefix, key.key_hash = prefix, hash_credential(raw)
    return raw


def api_key_revoke(*, key: ApiKey) -> ApiKey:
    """Revoke a key at once; later requests with it get 401."""
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
    return key


@dataclass(frozen=True)
class Principal:
    """Who is calling the API: a partner's key or an engine key (read by
    `principal_authenticate`). `checked` is False for an engine key taken from the
    process's cache: its row has not been read in this request yet, and must be before
    anything is done or answered for it (`tenant_targets_for_owner` reads it with the
    tenant; `principal_checked` on any other path)."""

    api_key: CallerKey
    partner: CallerPartner | None
    checked: bool = True

    @property
    def is_engine(self) -> bool:
        return self.partner is None

    @property
    def holder(self) -> str:
        """The idempotency scope: one partner (all its keys), or one engine key."""
        if self.partner is not None:
            return f"partner:{self.partner.pk}"
        return f"enginekey:{self.api_key.pk}"

    @functools.cached_property
    def tenant_ids(self) -> frozenset[int] | None:
        """Engine keys: the tenant ids it may act for, or None for every tenant (read when
        asked: accepting an event checks its one tenant in `tenant_for_owner`)."""
        if self.partner is not None or self.api_key.all_tenants:
            return None
        through = ApiKey.tenants.through.objects.filter(apikey_id=self.api_key.pk)
        return frozenset(through.values_list("tenant_id", flat=True))

    def tenant_targets_for_owner(
        self, owner: str, *, channel: str
    ) -> tuple[CallerTenant, list[PartnerTarget]]:
        """`tenant_for_owner` with the tenant's partners that get a copy of an event on
        `channel` (`ingest_sql.partner_targets`), read together; raises Forbidden."""
        if self.partner is not None:
            tenant = self.tenant_for_owner(owner)
            return tenant, ingest_sql.partner_targets(tenant_id=tenant.pk, channel=channel)
        if not self.checked:  # the key's row is read with the tenant: one round trip
            read = ingest_sql.key_tenant_targets(self.api_key, owner, channel=channel)
            if read is None:  # deleted since this process cached it
                raise Unauthorized("The API key is not valid.", code="invalid_key")
            state, found = read
            _credential_valid(state, noun="API key", code="key")
            credential_used(ApiKey, state)
            # read in this request now: an error answered later need not read it again
            object.__setattr__(self, "checked", True)
            if found is None:
                raise Forbidden("This key may not act for that owner.", code="owner_forbidden")
            return found
        named_by = None if self.api_key.all_tenants else self.api_key.pk
        found = ingest_sql.active_tenant_targets(owner, channel=channel, named_by_key=named_by)
        if found is None:
            raise Forbidden("This key may not act for that owner.", code="owner_forbidden")
        return found

    def tenant_for_owner(self, owner: str) -> CallerTenant:
        """The tenant named by `owner`, if this caller may act for it; raises Forbidden."""
        if self.partner is not None:
            if self.partner.tenant.owner != owner:
                raise Forbidden("This key may not act for that owner.", code="owner_forbidden")
            return self.partner.tenant
        named_by = None if self.api_key.all_tenants else self.api_key.pk
        tenant = ingest_sql.active_tenant(owner, named_by_key=named_by)
        if tenant is None:
            raise Forbidden("This key may not act for that owner.", code="owner_forbidden")
        return tenant


def credential_lookup(
    find: Callable[[str], Any], raw: str, *, hash_field: str, noun: str, code: str
) -> Any:
    """The row (API key, management token: a SHA-256 in `hash_field`, `revoked_at`,
    `expires_at`) that the bearer credential `raw` is; `find` returns the row with a given
    prefix, or None.

    Hashes are compared in constant time even when the prefix is unknown. Raises
    Unauthorized naming `noun`: `invalid_<code>` (unknown or malformed), `<code>_revoked`,
    `<code>_expired`.
    """
    prefix, dot, _ = raw.partition(".")
    row = find(prefix) if dot and len(prefix) <= 32 else None
    expected = getattr(row, hash_field) if row is not None else "0" * 64
    if not hmac.compare_digest(expected, hash_credential(raw)) or row is None:
        raise Unauthorized(f"The {noun} is not valid.", code=f"invalid_{code}")
    _credential_valid(row, noun=noun, code=code)
    return row


def _credential_valid(row: Any, *, noun: str, code: str) -> None:
    """Raise Unauthorized when the credential `row` (`revoked_at`, `expires_at`) is revoked
    or expired."""
    if row.revoked_at is not None:
        raise Unauthorized(f"The {noun} has been revoked.", code=f"{code}_revoked")
    if row.expires_at is not None and row.expires_at <= timezone.now():
        raise Unauthorized(f"The {noun} has expired.", code=f"{code}_expired")


def credential_used(model: type[ApiKey | ManagementToken], row: Any) -> None:
    """Note that a credential (`row`: a `model` row or what was read of one: `pk`,
    `last_used_at`) let a call in. Only one that is let in counts as used (a revoked key's
    "last used" must not move when a refused call arrives); at most one write a minute:
    enough to spot unused ones, cheap on hot paths."""
    now = timezone.now()
    if row.last_used_at is None or row.last_used_at < now - timedelta(seconds=60):
        model.objects.filter(pk=row.pk).update(last_used_at=now)


# Engine keys this process has let in: the raw key's SHA-256 -> the key as read then. Only
# for a caller whose next statement reads the key's row again (`Principal.checked`), so a
# revoked, expired or deleted key is still refused by the very next request.
_ENGINE_KEYS: dict[str, CallerKey] = {}
_ENGINE_KEYS_MAX = 1000


def principal_authenticate(raw: str, *, check_later: bool = False) -> Principal:
    """Resolve a bearer key to its principal: one SELECT of the key, its partner and the
    partner's tenant (ingest_sql.key_lookup).

    With `check_later`, an engine key this process has let in before is taken from its
    cache without a SELECT, as an unchecked principal: the caller must read the key's row
    before it does or answers anything else (`Principal.tenant_targets_for_owner` does it
    in the same SELECT as the tenant; `principal_checked` does it alone).

    Raises Unauthorized (unknown, malformed, revoked or expired key) and Forbidden (the
    partner is disabled by an admin, or its tenant is inactive).
    """
    digest = hash_credential(raw)
    if check_later and (cached := _ENGINE_KEYS.get(digest)) is not None:
        return Principal(api_key=cached, partner=None, checked=False)
    key: CallerKey = credential_lookup(
        ingest_sql.key_lookup, raw, hash_field="key_hash", noun="API key", code="key"
    )
    partner = key.partner
    if key.kind == ApiKey.Kind.PARTNER and partner is None:  # its partner was just deleted
        raise Unauthorized("The API key is not valid.", code="invalid_key")
    if partner is not None:
        if partner.state == Partner.State.DISABLED:
            raise Forbidden("This partner is disabled by an admin.", code="partner_disabled")
        if not partner.tenant.is_active:
            raise Forbidden("This tenant is inactive.", code="tenant_inactive")
    credential_used(ApiKey, key)
    if key.kind == ApiKey.Kind.ENGINE:
        if len(_ENGINE_KEYS) >= _ENGINE_KEYS_MAX:
            _ENGINE_KEYS.clear()
        _ENGINE_KEYS[digest] = key
    return Principal(api_key=key, partner=partner)


def principal_checked(principal: Principal) -> Principal:
    """The principal, its key's row read again when it came unchecked from the process's
    cache (`principal_authenticate(check_later=True)`); raises Unauthorized when the key
    was revoked, has expired or is gone."""
    if principal.checked:
        return principal
    row = ingest_sql.key_lookup(principal.api_key.prefix)
    if row is None or not hmac.compare_digest(row.key_hash, principal.api_key.key_hash):
        raise Unauthorized("The API key is not valid.", code="invalid_key")
    _credential_valid(row, noun="API key", code="key")
    credential_used(ApiKey, row)
    return Principal(api_key=row, partner=None)


def user_create(*, tenant: Tenant, username: str, role: str, email: str = "") -> tuple[object, str]:
    """Create a staff user with a generated password and a role in the tenant.

    Returns (user, password); raises PortalError (bad role) and Conflict (username taken).
    """
    if role not in TenantMembership.Role.values:
        raise PortalError(
            f"role must be one of {', '.join(TenantMembership.Role.values)}.", code="invalid_role"
        )
    username = username.strip()
    if not username:
        raise PortalError("username is required.", code="invalid_arguments")
    user_model = get_user_model()
    password = secrets.token_urlsafe(12)
    try:
        with transaction.atomic():
            user = user_model.objects.create_user(
                username=username, email=email, password=password, is_staff=True
            )
            TenantMembership.objects.create(user=user, tenant=tenant, role=role)
    except IntegrityError:
        raise Conflict(
            f"A user named {username!r} exists already.", code="duplicate_username"
        ) from None
    return user, password


def operations_secret_rotate(*, tenant: Tenant) -> str:
    """Give the tenant a new operations signing secret (SPEC §10) and return it: the next
    notices are signed with it alone, so the receiver must take the new one at once."""
    tenant.operations_signing_secret = generate_secret()
    tenant.save(update_fields=["operations_signing_secret", "updated_at"])
    return str(tenant.operations_signing_secret)


def secrets_reencrypt() -> dict[str, int]:
    """Re-encrypt every stored secret (signing secrets, engine tokens, engine and operations
    signing secrets) with the current key, the first of PORTAL_ENCRYPTION_KEYS; returns how many
    rows were rewritten. Run after putting a new key first, before dropping the old one.
    Raises ImproperlyConfigured if a value opens with none of the keys."""
    counts = {"signingSecrets": 0, "tenants": 0}
    with transaction.atomic():
        for secret in SigningSecret.objects.select_for_update().order_by("pk"):
            secret.save(update_fields=["secret"])
            counts["signingSecrets"] += 1
        for tenant in Tenant.objects.select_for_update().order_by("pk"):
            tenant.save(
                update_fields=["engine_token", "engine_signing_secret", "operations_signing_secret"]
            )
            counts["tenants"] += 1
    return counts
