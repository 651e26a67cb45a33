"""A claimed delivery as the sender uses it: plain rows read with the claim, not models.

The claim (outbox/queue.py) reads what sending and recording need in the statement that
takes the rows on PostgreSQL (its UPDATE's RETURNING joined to the event, the tenant and the
partner), or in one SELECT after it on SQLite (no data-modifying WITH there). Loading the
claimed rows again through the ORM (select_related of event, partner and tenant) was 43 % of
a pump's thread: building the query and four model instances per row cost more than sending
(py-spy, docs/PERFORMANCE.md). The rows are plain frozen dataclasses: what a batch reads of a
partner or tenant is what it was at the claim, as the loaded models were.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from integrations.encryption import EncryptedTextField, decrypt
from integrations.models import Delivery, Event, Partner, SigningSecret, Tenant
from integrations.outbox.sql import columns


@dataclass(frozen=True, slots=True)
class PartnerRow:
    """What the sender reads of a partner: where and how to send, its retry schedule, and
    the health figures that decide how carefully (see outbox/sender.py)."""

    pk: int
    base_url: str
    incoming_message_path: str
    send_message_path: str
    connect_timeout: float
    timeout: float
    retry_schedule: str
    consecutive_failures: int
    latency_ms_avg: float | None
    # its live signing secrets, newest first, decrypted, read with the claim on PostgreSQL
    # (None: not read with it; targets.live_secrets reads them)
    secrets: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class TenantRow:
    """What the sender reads of a tenant: its ID for the logs, its engine relay and its
    operations URL (secrets decrypted, as the model's fields would be)."""

    pk: int
    owner: str
    engine_base_url: str
    engine_send_message_path: str
    engine_command_path: str
    engine_token: str
    engine_signing_secret: str
    operations_url: str
    operations_signing_secret: str


@dataclass(frozen=True, slots=True)
class Sendable:
    """One claimed delivery, under its batch's lease: `attempts` counts the try the claim
    took."""

    pk: int
    event_id: uuid.UUID
    ticket_id: int
    target: str
    endpoint: str
    attempts: int
    retry_base: int
    payload: dict[str, Any]
    request_id: str
    trace_context: str
    tenant: TenantRow
    partner: PartnerRow | None

    @property
    def tenant_id(self) -> int:
        return self.tenant.pk

    @property
    def partner_id(self) -> int | None:
        return self.partner.pk if self.partner is not None else None


# The delivery columns a claim's UPDATE returns (RETURNING, unqualified) and `sendable_sql`
# reads of its source, in `sendables` order.
DELIVERY_FIELDS: tuple[str, ...] = (
    "id",
    "event",
    "ticket",
    "target",
    "endpoint",
    "attempts",
    "retry_base",
)
DELIVERY_FIELDS += ("tenant", "partner")
_EVENT_FIELDS = ("payload", "request_id", "trace_context")
_TENANT_FIELDS = tuple(f.name for f in TenantRow.__dataclass_fields__.values())
_PARTNER_FIELDS = tuple(f.name for f in PartnerRow.__dataclass_fields__.values())[:-1]
# the tenant's encrypted columns (encryption.EncryptedTextField), by their place in a TenantRow
_TENANT_SECRETS = tuple(
    i
    for i, name in enumerate(_TENANT_FIELDS)
    if name != "pk" and isinstance(Tenant._meta.get_field(name), EncryptedTextField)
)


@functools.cache
def delivery_returning() -> str:
    """The RETURNING list of a claim's UPDATE: DELIVERY_FIELDS' columns."""
    c = columns(Delivery)
    return ", ".join(c[name] for name in DELIVERY_FIELDS)


@functools.cache
def sendable_sql(source: str, alias: str = "s", extra: str = "", secrets: bool = False) -> str:
    """SELECT of the sendable rows of `source` (a table or a WITH query giving
    DELIVERY_FIELDS' columns, as `alias`), each joined to its event, tenant and partner,
    with `secrets` (PostgreSQL) the partner's live signing secrets too (one parameter: the
    time they must be live at), and `extra` columns after them; WHERE and ORDER BY are the
    caller's. `sendables` turns its rows into Sendables."""
    d, e, t, p = columns(Delivery), columns(Event), columns(Tenant), columns(Partner)
    picked = [f"{alias}.{d[name]}" for name in DELIVERY_FIELDS[:7]]
    picked += [f"e.{e[name]}" for name in _EVENT_FIELDS]
    picked += [f"t.{t['id' if name == 'pk' else name]}" for name in _TENANT_FIELDS]
    picked += [f"p.{p['id' if name == 'pk' else name]}" for name in _PARTNER_FIELDS]
    if secrets:
        # targets.live_secrets' SELECT, as an array per row (a batch's rows share a partner)
        ss = columns(SigningSecret)
        picked.append(
            f"ARRAY(SELECT x.{ss['secret']} FROM {SigningSecret._meta.db_table} x"  # noqa: S608
            f" WHERE x.{ss['partner']} = p.{p['id']}"
            f" AND (x.{ss['expires_at']} IS NULL OR x.{ss['expires_at']} > %s)"
            f" ORDER BY x.{ss['created_at']} DESC, x.{ss['id']} DESC)"
        )
    picked += [extra] if extra else []
    return (
        f"SELECT {', '.join(picked)} FROM {source} {alias}"  # noqa: S608
        f" JOIN {Event._meta.db_table} e ON e.{e['id']} = {alias}.{d['event']}"
        f" JOIN {Tenant._meta.db_table} t ON t.{t['id']} = {alias}.{d['tenant']}"
        f" LEFT JOIN {Partner._meta.db_table} p ON p.{p['id']} = {alias}.{d['partner']}"
    )


def sendables(rows: Sequence[Sequence[Any]], secrets: bool = False) -> list[Sendable]:
    """Sendables of `sendable_sql` rows, selected with `secrets` or not (a batch's rows
    share their tenant and partner rows)."""
    tenants: dict[int, TenantRow] = {}
    partners: dict[int, PartnerRow] = {}
    result = []
    n_delivery, n_event, n_tenant = 7, len(_EVENT_FIELDS), len(_TENANT_FIELDS)
    for row in rows:
        at = n_delivery + n_event
        tenant_id = row[at]
        tenant = tenants.get(tenant_id)
        if tenant is None:
            values = list(row[at : at + n_tenant])
            for i in _TENANT_SECRETS:
                values[i] = decrypt(values[i])
            tenant = tenants[tenant_id] = TenantRow(*values)
        at += n_tenant
        partner_id = row[at]
        partner = None if partner_id is None else partners.get(partner_id)
        if partner_id is not None and partner is None:
            values = list(row[at : at + len(_PARTNER_FIELDS)])
            live = row[at + len(_PARTNER_FIELDS)] if secrets else None
            values.append(None if live is None else tuple(decrypt(value) for value in live))
            partner = partners[partner_id] = PartnerRow(*values)
        event_id, payload = row[1], row[n_delivery]
        result.append(
            Sendable(
                pk=row[0],
                event_id=event_id if isinstance(event_id, uuid.UUID) else uuid.UUID(event_id),
                ticket_id=row[2],
                target=row[3],
                endpoint=row[4],
                attempts=row[5],
                retry_base=row[6],
                # jsonb comes as text (Django's loader, for JSONField), SQLite's JSON too
                payload=json.loads(payload) if isinstance(payload, str | bytes) else payload,
                request_id=row[n_delivery + 1],
                trace_context=row[n_delivery + 2],
                tenant=tenant,
                partner=partner,
            )
        )
    return result
