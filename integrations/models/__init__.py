"""The data model of SPEC §2: tenants, partners, keys, tickets, contacts, events, deliveries.

The database is the source of truth. An accepted event is one transaction: its Event row, the
ticket and contact upserts and one Delivery row per target. Celery only wakes deliveries up;
their schedule (`next_attempt_at`) and ownership (`lease_token`) live here.

Split by what a row is: configuration (`accounts`: tenants, memberships, partners, signing
secrets, API keys) and what happened (`log`: contacts, tickets, events, deliveries, attempts,
idempotency records, worker heartbeats).
"""

from integrations.models.accounts import (
    ApiKey,
    ManagementToken,
    Partner,
    PartnerPortalLink,
    SigningSecret,
    Tenant,
    TenantMembership,
)
from integrations.models.log import (
    Contact,
    Delivery,
    DeliveryAttempt,
    Event,
    IdempotencyRecord,
    Ticket,
    WorkerHeartbeat,
)

__all__ = [
    "ApiKey",
    "Contact",
    "Delivery",
    "DeliveryAttempt",
    "Event",
    "IdempotencyRecord",
    "ManagementToken",
    "Partner",
    "PartnerPortalLink",
    "SigningSecret",
    "Tenant",
    "TenantMembership",
    "Ticket",
    "WorkerHeartbeat",
]
