"""Where and how a delivery goes (SPEC §5 and §6): URL, live signing secrets, bearer token,
timeouts, retry schedule, SSRF policy and HTTP client.

The one place that reads a partner's or a tenant's delivery settings: ingest asks it whether
the engine relay is configured and when a first attempt is due, the sender asks it where to
send, the "send test event" operation asks it too.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, TypeAlias

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from integrations.encryption import decrypt
from integrations.models import Delivery, Partner, SigningSecret, Tenant
from integrations.outbox.sendable import PartnerRow, Sendable, TenantRow
from integrations.outbox.sql import columns, db_value, sql_cursor
from integrations.ssrf import OutboundPolicy
from portal.env import parse_retry_schedule

logger = logging.getLogger(__name__)

# The engine relay's limits (SPEC §5 defaults; not adjustable per tenant).
RELAY_CONNECT_TIMEOUT = 3.0
RELAY_DEADLINE = 10.0
NO_RELAY = "No engine relay is configured."


@dataclass(frozen=True)
class Target:
    """Everything the transport needs to send one delivery."""

    url: str  # "" when nothing is configured (an engine relay with no engine)
    secrets: tuple[str, ...]
    bearer_token: str
    connect_timeout: float
    deadline: float


def join_url(base_url: str, path: str) -> str:
    """`base_url` + `path` with exactly one slash between them."""
    return base_url.rstrip("/") + "/" + path.lstrip("/")


# A partner or tenant as a model (the admin's test event) or as a batch read it (the sender).
AnyPartner: TypeAlias = Partner | PartnerRow
AnyTenant: TypeAlias = Tenant | TenantRow


class RelaySettings(Protocol):
    """What `relay_url` reads of a tenant: a Tenant, or what ingest or a batch read of one."""

    @property
    def engine_base_url(self) -> str: ...
    @property
    def engine_send_message_path(self) -> str: ...
    @property
    def engine_command_path(self) -> str: ...


def relay_url(tenant: RelaySettings, endpoint: str) -> str:
    """The engine's URL for this relay endpoint, or "" when no engine is configured.

    Each setting falls back to the portal-wide one (PORTAL_ENGINE_*).
    """
    base_url = tenant.engine_base_url or settings.PORTAL_ENGINE_BASE_URL
    if endpoint == Delivery.Endpoint.ENGINE_MESSAGE:
        path = tenant.engine_send_message_path or settings.PORTAL_ENGINE_SEND_MESSAGE_PATH
    else:
        path = tenant.engine_command_path or settings.PORTAL_ENGINE_COMMAND_PATH
    return join_url(base_url, path) if base_url and path else ""


def relay_token(tenant: AnyTenant) -> str:
    """The bearer token sent to the tenant's engine relay.

    The portal-wide PORTAL_ENGINE_TOKEN is a credential valid for every tenant: it is only
    ever sent to the portal-wide engine URL. A tenant that sets its own engine URL brings its
    own token, or none (else a tenant admin could collect the operator's token by pointing
    the relay at a server of their own)."""
    token = str(tenant.engine_token)
    if tenant.engine_base_url:
        return token
    return token or str(settings.PORTAL_ENGINE_TOKEN)


def relay_target(tenant: AnyTenant, endpoint: str) -> Target:
    """The tenant's engine relay for this endpoint, signed with its engine secret."""
    return Target(
        url=relay_url(tenant, endpoint),
        secrets=(tenant.engine_signing_secret,),
        bearer_token=relay_token(tenant),
        connect_timeout=RELAY_CONNECT_TIMEOUT,
        deadline=RELAY_DEADLINE,
    )


def operations_target(tenant: AnyTenant) -> Target:
    """The tenant's operations URL (SPEC §10), signed with its operations secret; the
    relay's limits. No URL (removed since): the notice is `not_configured`."""
    return Target(
        url=tenant.operations_url,
        secrets=(tenant.operations_signing_secret,),
        bearer_token="",
        connect_timeout=RELAY_CONNECT_TIMEOUT,
        deadline=RELAY_DEADLINE,
    )


@functools.cache
def _live_secrets_sql() -> str:
    c = columns(SigningSecret)
    return (
        f"SELECT {c['secret']} FROM {connection.ops.quote_name(SigningSecret._meta.db_table)}"  # noqa: S608
        f" WHERE {c['partner']} = %s AND ({c['expires_at']} IS NULL OR {c['expires_at']} > %s)"
        f" ORDER BY {c['created_at']} DESC, {c['id']} DESC"
    )


def live_secrets(partner: AnyPartner, now: datetime) -> tuple[str, ...]:
    """The partner's signing secrets that have not expired (two during a rotation), newest
    first. Read for every batch: one hand-written SELECT (the ORM's compiler cost more CPU
    than the query), decrypted as the field would (encryption.decrypt keeps what it opened)."""
    with sql_cursor() as cursor:
        cursor.execute(
            _live_secrets_sql(), [partner.pk, db_value(SigningSecret, "expires_at", now)]
        )
        return tuple(decrypt(secret) for (secret,) in cursor.fetchall())


def partner_target(partner: AnyPartner, endpoint: str, now: datetime) -> Target:
    """The partner's incoming-message or send-message path, with its live secrets."""
    path = (
        partner.incoming_message_path
        if endpoint == Delivery.Endpoint.INCOMING
        else partner.send_message_path
    )
    return Target(
        url=join_url(partner.base_url, path),
        secrets=(
            partner.secrets
            if isinstance(partner, PartnerRow) and partner.secrets is not None
            else live_secrets(partner, now)
        ),
        bearer_token="",
        connect_timeout=partner.connect_timeout,
        deadline=partner.timeout,
    )


def delivery_target(delivery: Sendable, now: datetime) -> Target:
    """Where this claimed delivery goes (its partner and tenant read with it)."""
    if delivery.target == Delivery.OPERATIONS_TARGET:
        return operations_target(delivery.tenant)
    if delivery.partner is None:
        return relay_target(delivery.tenant, delivery.endpoint)
    return partner_target(delivery.partner, delivery.endpoint, now)


def retry_schedule(override: str = "") -> tuple[int, ...]:
    """A partner's own schedule (`Partner.retry_schedule`) when set, else
    PORTAL_RETRY_SCHEDULE. Entry n is the delay before attempt n + 1, counted from 0."""
    if override.strip():
        try:
            return parse_retry_schedule(override, name="retry schedule")
        except ImproperlyConfigured:  # a bad override must not stop deliveries
            logger.warning("invalid retry schedule override %r: the default is used", override)
    return tuple(settings.PORTAL_RETRY_SCHEDULE)


def first_attempt_at(override: str, now: datetime) -> datetime:
    """When a new delivery is due: entry 0 of its schedule is the delay before attempt 1."""
    delay = retry_schedule(override)[0]
    return now + timedelta(seconds=delay) if delay else now


@functools.lru_cache(maxsize=8)
def _policy(entries: tuple[str, ...]) -> OutboundPolicy:
    return OutboundPolicy.from_setting(",".join(entries))


def outbound_policy() -> OutboundPolicy:
    """The SSRF policy of PORTAL_OUTBOUND_ALLOWLIST (cached per value)."""
    return _policy(tuple(settings.PORTAL_OUTBOUND_ALLOWLIST))


def delivery_client() -> str:
    """The HTTP client every outbound request is sent with (PORTAL_DELIVERY_CLIENT: "curl"
    or "requests"): the one place that reads it, for the sender and the test event."""
    client: str = settings.PORTAL_DELIVERY_CLIENT
    return client
