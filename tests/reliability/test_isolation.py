"""Tenant isolation: a tenant's partner key, engine key, admin and support staff try to read
and change another tenant's data through every API endpoint and admin URL.

Promise (SPEC §4, issue 6): a partner only ever sees its own tenant's data (and, within it,
only its own deliveries and the engine relay); an engine key acts only for its tenants; the
admin shows and changes only the user's tenants. An attempt "succeeds" when it answers 2xx
on the API, or shows the other tenant's data, or changes anything of the other tenant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from integrations.models import (
    ApiKey,
    Contact,
    Delivery,
    DeliveryAttempt,
    Event,
    IdempotencyRecord,
    Partner,
    SigningSecret,
    Tenant,
    TenantMembership,
    Ticket,
)
from integrations.services.accounts import api_key_create
from integrations.services.partners import partner_create
from tests.conftest import Caller, command_body, incoming_body, outgoing_body
from tests.factories import TenantFactory
from tests.reliability.conftest import sizes

IN, ENGINE_OUT, OUT, CMD = (
    "/api/v1/engine/incoming",
    "/api/v1/engine/outgoing",
    "/api/v1/outgoing",
    "/api/v1/command",
)
VICTIM_OWNER = "victim-owner-5f0e"


@dataclass
class Side:
    tenant: Tenant
    partner: Partner
    partner_api: Caller
    engine_api: Caller
    tickets: list[str] = field(default_factory=list)
    contacts: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)


def _side(owner: str, name: str, tickets: int) -> Side:
    tenant = TenantFactory(owner=owner, name=name)
    partner, key, _ = partner_create(
        tenant=tenant,
        name=f"{name}-desk",
        base_url="http://127.0.0.1:9",
        incoming_message_path="/in",
        send_message_path="/out",
    )
    _, engine_key = api_key_create(kind=ApiKey.Kind.ENGINE, tenants=[tenant])
    side = Side(tenant, partner, Caller(APIClient(), key), Caller(APIClient(), engine_key))
    for t in range(tickets):
        ticket, contact = f"{name}-ticket-{t}", f"{name}-contact-{t}"
        body = incoming_body(owner=owner, ticketNumber=ticket, contactId=contact)
        side.events.append(side.engine_api.post(IN, body).json()["eventId"])
        reply = outgoing_body(owner=owner, ticketNumber=ticket, message=f"{name} reply {t}")
        response = side.partner_api.post(OUT, reply, HTTP_IDEMPOTENCY_KEY=f"shared-key-{t}")
        side.events.append(response.json()["eventId"])
        side.tickets.append(ticket)
        side.contacts.append(contact)
    return side


def _victim_snapshot(victim: Tenant) -> str:
    """Everything of the victim tenant, serialized: any change by the attacker shows here."""
    rows = {
        "tenant": list(Tenant.objects.filter(pk=victim.pk).values()),
        "memberships": list(TenantMembership.objects.filter(tenant=victim).values()),
        "users": list(
            get_user_model()
            .objects.filter(memberships__tenant=victim)
            .values("id", "is_active", "is_staff", "password")
        ),
        "partners": list(Partner.objects.filter(tenant=victim).values()),
        "keys": list(
            ApiKey.objects.filter(partner__tenant=victim).values(
                "id", "revoked_at", "expires_at", "key_hash"
            )
        ),
        "secrets": list(SigningSecret.objects.filter(partner__tenant=victim).values()),
        "contacts": list(Contact.objects.filter(tenant=victim).values()),
        "tickets": list(Ticket.objects.filter(tenant=victim).values()),
        "events": list(Event.objects.filter(tenant=victim).values("id", "sequence")),
        "deliveries": list(Delivery.objects.filter(tenant=victim).values()),
        "attempts": list(DeliveryAttempt.objects.filter(delivery__tenant=victim).values()),
    }
    return json.dumps(rows, default=str, sort_keys=True)


@dataclass
class Tally:
    attempts: int = 0
    succeeded: list[str] = field(default_factory=list)
    by_channel: dict[str, int] = field(default_factory=dict)

    def count(self, channel: str, what: str, ok: bool) -> None:
        self.attempts += 1
        self.by_channel[channel] = self.by_channel.get(channel, 0) + 1
        if ok:
            self.succeeded.append(f"{channel}: {what}")


@pytest.mark.parametrize(
    "size", sizes(ci={"tickets": 5}, full={"tickets": 40}, scaled=("tickets",))
)
def test_isolation_cross_tenant_attempts_never_succeed(size, db, settings, figures):
    settings.PORTAL_PARTNER_RATE = "100000/second"
    # given two tenants with partners, keys, tickets, contacts, events, deliveries, attempts
    mine = _side("attacker-owner-77aa", "attacker", 2)
    victim = _side(VICTIM_OWNER, "victim", size.tickets)
    second = Partner.objects.create(
        tenant=mine.tenant,
        name="attacker-second",
        base_url="http://127.0.0.1:9",
        incoming_message_path="/i",
        send_message_path="/s",
    )
    _, second_key = api_key_create(kind=ApiKey.Kind.PARTNER, partner=second)
    second_api = Caller(APIClient(), second_key)
    victim_deliveries = list(Delivery.objects.filter(tenant=victim.tenant).order_by("id"))
    for n, delivery in enumerate(victim_deliveries):
        DeliveryAttempt.objects.create(
            delivery=delivery,
            number=1,
            url="http://127.0.0.1:9/in",
            response_status=500,
            outcome="retry",
        )
        status = "dead" if n % 2 else "pending"
        Delivery.objects.filter(pk=delivery.pk).update(status=status, attempts=1)
    victim_user = get_user_model().objects.create_user("victim-admin", is_staff=True)
    TenantMembership.objects.create(user=victim_user, tenant=victim.tenant, role="admin")
    staff = {}
    for role in ("admin", "support"):
        user = get_user_model().objects.create_user(f"attacker-{role}", is_staff=True)
        TenantMembership.objects.create(user=user, tenant=mine.tenant, role=role)
        client = Client()
        client.force_login(user)
        staff[role] = client
    secrets = [s.secret for s in SigningSecret.objects.filter(partner=victim.partner)]
    markers = [
        VICTIM_OWNER,
        victim.partner.name,
        *victim.tickets,
        *victim.contacts,
        *victim.events,
        *secrets,
        *ApiKey.objects.filter(partner=victim.partner).values_list("prefix", flat=True),
    ]
    before = _victim_snapshot(victim.tenant)
    tally = Tally()

    def leaks(content: bytes, asked: str) -> bool:
        """The answer shows the victim's data beyond what the request itself named (an
        error message may quote the ticket number it did not find)."""
        text = content.decode("utf-8", "replace")
        return any(marker in text for marker in markers if marker not in asked)

    def api(caller: Caller, method: str, path: str, body=None, **headers) -> None:
        response = caller.post(path, body, **headers) if method == "POST" else caller.get(path)
        asked = path + json.dumps(body)
        tally.count(
            "api",
            f"{method} {path} -> {response.status_code}",
            200 <= response.status_code < 300 or leaks(response.content, asked),
        )

    # when the attacker's partner key reads and writes the victim's tickets, contacts, events
    for ticket in victim.tickets:
        api(mine.partner_api, "GET", f"/api/v1/tickets/{ticket}/messages")
        for owner in (VICTIM_OWNER, mine.tenant.owner):
            api(mine.partner_api, "POST", OUT, outgoing_body(owner=owner, ticketNumber=ticket))
            api(mine.partner_api, "POST", CMD, command_body(owner=owner, ticketNumber=ticket))
            # and the attacker's engine key acts for the victim's owner
            api(mine.engine_api, "POST", IN, incoming_body(owner=VICTIM_OWNER, ticketNumber=ticket))
            api(
                mine.engine_api,
                "POST",
                ENGINE_OUT,
                outgoing_body(owner=VICTIM_OWNER, ticketNumber=ticket),
            )
    for contact in victim.contacts:
        api(mine.partner_api, "GET", f"/api/v1/contacts/{contact}")
    for event_id in victim.events:
        api(mine.partner_api, "GET", f"/api/v1/events/{event_id}")
        api(mine.engine_api, "GET", f"/api/v1/events/{event_id}")
    # and reuses the victim's Idempotency-Keys with the victim's exact bodies
    for t, ticket in enumerate(victim.tickets):
        reply = outgoing_body(owner=VICTIM_OWNER, ticketNumber=ticket, message=f"victim reply {t}")
        api(mine.partner_api, "POST", OUT, reply, HTTP_IDEMPOTENCY_KEY=f"shared-key-{t}")
    # and, within its own tenant, a second partner reads the first one's deliveries
    own_targets = {f"partner:{mine.partner.pk}"}
    for event_id in mine.events:
        response = second_api.get(f"/api/v1/events/{event_id}")
        shown = {d["target"] for d in response.json().get("deliveries", [])}
        tally.count(
            "api", f"second partner reads deliveries of {event_id}", bool(shown & own_targets)
        )

    # and the attacker's admin and support staff open, change and delete the victim's objects
    victim_objects = {
        Tenant: [victim.tenant.pk],
        TenantMembership: list(
            TenantMembership.objects.filter(tenant=victim.tenant).values_list("pk", flat=True)
        ),
        Partner: [victim.partner.pk],
        ApiKey: list(ApiKey.objects.filter(partner=victim.partner).values_list("pk", flat=True)),
        SigningSecret: secrets
        and list(SigningSecret.objects.filter(partner=victim.partner).values_list("pk", flat=True)),
        Contact: list(Contact.objects.filter(tenant=victim.tenant).values_list("pk", flat=True)),
        Ticket: list(Ticket.objects.filter(tenant=victim.tenant).values_list("pk", flat=True)),
        Event: [str(e) for e in victim.events],
        Delivery: [d.pk for d in victim_deliveries],
        DeliveryAttempt: list(
            DeliveryAttempt.objects.filter(delivery__tenant=victim.tenant).values_list(
                "pk", flat=True
            )
        ),
    }

    def admin(client: Client, role: str, method: str, url: str, data=None) -> None:
        response = client.post(url, data or {}) if method == "POST" else client.get(url)
        ok = response.status_code == 200 and leaks(response.content, url + json.dumps(data))
        tally.count(f"admin:{role}", f"{method} {url} -> {response.status_code}", ok)

    for role, client in staff.items():
        for model, pks in victim_objects.items():
            info = f"admin:integrations_{model._meta.model_name}"
            for pk in pks:
                for view in ("change", "delete", "history"):
                    admin(client, role, "GET", reverse(f"{info}_{view}", args=[pk]))
                admin(client, role, "POST", reverse(f"{info}_delete", args=[pk]), {"post": "yes"})
            # lists filtered or searched for the victim's objects show none of them
            changelist = reverse(f"{info}_changelist")
            admin(client, role, "GET", f"{changelist}?tenant__id__exact={victim.tenant.pk}")
            admin(client, role, "GET", f"{changelist}?partner__id__exact={victim.partner.pk}")
            for term in (VICTIM_OWNER, victim.tickets[0], victim.contacts[0], victim.events[0]):
                admin(client, role, "GET", f"{changelist}?q={term}")
        partner_change = reverse("admin:integrations_partner_change", args=[victim.partner.pk])
        admin(
            client,
            role,
            "POST",
            partner_change,
            {
                "name": "pwned",
                "base_url": "http://127.0.0.1:1",
                "incoming_message_path": "/x",
                "send_message_path": "/y",
                "timeout": 10,
                "connect_timeout": 3,
            },
        )
        tenant_change = reverse("admin:integrations_tenant_change", args=[victim.tenant.pk])
        admin(client, role, "POST", tenant_change, {"name": "pwned", "owner": VICTIM_OWNER})
        for pk in victim_objects[Ticket]:
            admin(client, role, "GET", reverse("admin:integrations_ticket_timeline", args=[pk]))
        for name in ("recover", "test_event"):
            url = reverse(f"admin:integrations_partner_{name}", args=[victim.partner.pk])
            admin(client, role, "GET", url)
            admin(
                client,
                role,
                "POST",
                url,
                {"since": "2000-01-01 00:00:00", "until": "2100-01-01 00:00:00"},
            )
        # admin actions with the victim's ids selected
        actions = (
            [
                (Partner, a, victim_objects[Partner])
                for a in ("disable_partners", "resume_partners", "rotate_secrets", "new_keys")
            ]
            + [(Delivery, a, victim_objects[Delivery]) for a in ("redeliver", "cancel")]
            + [
                (ApiKey, "revoke_keys", victim_objects[ApiKey]),
                (TenantMembership, "deactivate_users", victim_objects[TenantMembership]),
            ]
        )
        for model, action, pks in actions:
            url = reverse(f"admin:integrations_{model._meta.model_name}_changelist")
            admin(
                client,
                role,
                "POST",
                url,
                {
                    "action": action,
                    "_selected_action": [str(pk) for pk in pks],
                    "index": 0,
                    "confirmed": "yes",  # (past the confirmation page, to the action itself)
                },
            )
        # add forms that name the victim's tenant or partner
        admin(
            client,
            role,
            "POST",
            reverse("admin:integrations_apikey_add"),
            {"partner": victim.partner.pk, "name": "stolen"},
        )
        admin(
            client,
            role,
            "POST",
            reverse("admin:integrations_partner_add"),
            {
                "tenant": victim.tenant.pk,
                "name": "planted",
                "base_url": "http://127.0.0.1:2",
                "incoming_message_path": "/i",
                "send_message_path": "/s",
                "timeout": 10,
                "connect_timeout": 3,
            },
        )
        admin(
            client,
            role,
            "POST",
            reverse("admin:integrations_tenantmembership_add"),
            {"tenant": victim.tenant.pk, "username": f"mole-{role}", "role": "admin"},
        )

    # then no attempt succeeded and nothing of the victim changed
    changed = _victim_snapshot(victim.tenant) != before
    figures.record(
        size,
        "isolation",
        attempts=tally.attempts,
        succeeded=len(tally.succeeded),
        victim_data_changed=changed,
        by_channel=tally.by_channel,
    )
    print(f"isolation: {tally.attempts} cross-tenant attempts, {len(tally.succeeded)} succeeded")
    assert tally.attempts >= 300
    assert tally.succeeded == []
    assert not changed
    assert not Partner.objects.filter(name="planted").exists()
    assert not ApiKey.objects.filter(name="stolen").exists()
    # (the replayed Idempotency-Keys were refused, not answered from the victim's records)
    assert IdempotencyRecord.objects.filter(holder=f"partner:{mine.partner.pk}").count() == 2
