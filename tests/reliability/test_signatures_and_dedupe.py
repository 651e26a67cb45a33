"""Signatures and dedupe: every delivery verifies with the `standardwebhooks` library (with
each live secret during a rotation, and on the engine relay), and one Idempotency-Key sent
ten times (at once, over a real server) makes one event.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
import requests
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from integrations.models import Delivery, Event, SigningSecret
from integrations.services.partners import signing_secret_rotate
from tests.conftest import command_body, incoming_body, outgoing_body
from tests.reliability.conftest import sizes
from tests.support.outbox import send_one
from tests.support.partner import ok

IN, ENGINE_OUT, OUT, CMD = (
    "/api/v1/engine/incoming",
    "/api/v1/engine/outgoing",
    "/api/v1/outgoing",
    "/api/v1/command",
)


@pytest.mark.parametrize(
    "size", sizes(ci={"tickets": 8}, full={"tickets": 400}, scaled=("tickets",))
)
def test_signatures_every_delivery_verifies_with_standardwebhooks(
    size, engine_api, partner_api, partner, tenant, fault_server, figures, settings
):
    settings.PORTAL_PARTNER_RATE = "100000/second"  # the partner posts hundreds at once
    # given a partner in the middle of a secret rotation and an engine relay, both on loopback
    for path in ("/incoming", "/send", "/engine/messages", "/engine/commands"):
        fault_server.routes[path] = ok()
    partner.base_url = fault_server.url
    partner.save()
    signing_secret_rotate(partner=partner)
    tenant.engine_base_url = f"{fault_server.url}/engine"
    tenant.engine_send_message_path = "/messages"
    tenant.engine_command_path = "/commands"
    tenant.engine_token = "relay-token-xyz"
    tenant.save()
    # when every kind of event is accepted and delivered
    for t in range(size.tickets):
        ticket = f"sig-{t}"
        engine_api.post(IN, incoming_body(ticketNumber=ticket, message=f"héllo {t} ✓"))
        engine_api.post(ENGINE_OUT, outgoing_body(ticketNumber=ticket, message="bot: halo"))
        partner_api.post(OUT, outgoing_body(ticketNumber=ticket, message=f"reply {t}"))
        partner_api.post(CMD, command_body(ticketNumber=ticket))
    for delivery_id in Delivery.objects.order_by("id").values_list("id", flat=True):
        send_one(delivery_id=delivery_id)
    # then every request verifies, with each live partner secret or the engine's secret
    partner_secrets = list(
        SigningSecret.objects.filter(partner=partner).values_list("secret", flat=True)
    )
    assert len(partner_secrets) == 2
    verified = failed = 0
    for receipt in fault_server.receipts:
        secrets = (
            [tenant.engine_signing_secret]
            if receipt.path.startswith("/engine")
            else partner_secrets
        )
        for secret in secrets:
            try:
                Webhook(secret).verify(receipt.body, receipt.headers)
                verified += 1
            except WebhookVerificationError:
                failed += 1
        assert receipt.webhook_id and Event.objects.filter(pk=receipt.webhook_id).exists()
    paths = Counter(r.path for r in fault_server.receipts)
    figures.record(
        size,
        "signatures",
        requests=len(fault_server.receipts),
        verifications=verified,
        failed=failed,
        by_path=dict(paths),
    )
    assert failed == 0
    assert paths == {
        "/incoming": size.tickets,
        "/send": size.tickets,
        "/engine/messages": size.tickets,
        "/engine/commands": size.tickets,
    }
    assert set(Delivery.objects.values_list("status", flat=True)) == {"succeeded"}
    # and a changed byte does not verify (the check can fail)
    receipt = fault_server.receipts[0]
    with pytest.raises(WebhookVerificationError):
        Webhook(partner_secrets[0]).verify(receipt.body.replace(b"sig-", b"siG-"), receipt.headers)


@pytest.mark.parametrize("size", sizes(ci={"keys": 2}, full={"keys": 50}, scaled=("keys",)))
def test_dedupe_one_idempotency_key_sent_ten_times_at_once_is_one_event(
    size, web, engine_api, partner_api, tenant, figures
):
    # given a ticket, and bodies each sent with its own Idempotency-Key
    engine_api.post(IN, incoming_body())
    results: dict[str, list[tuple[int, str, str]]] = {}
    for k in range(size.keys):
        key = f"reply-{k}"
        body = outgoing_body(message=f"once {k}")
        answers: list[tuple[int, str, str]] = []
        barrier = threading.Barrier(10)

        def send(key=key, body=body, answers=answers, barrier=barrier):
            barrier.wait(10)
            response = requests.post(
                f"{web.url}{OUT}",
                json=body,
                timeout=60,
                headers={"Authorization": f"Bearer {partner_api.key}", "Idempotency-Key": key},
            )
            answers.append(
                (
                    response.status_code,
                    response.json().get("eventId", ""),
                    response.headers.get("Idempotent-Replayed", ""),
                )
            )

        # when the same request with the same key is sent 10 times at once (real server)
        threads = [threading.Thread(target=send) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        results[key] = answers
    # then each key made exactly one event, and all ten answers carry its id
    events = Counter(
        Event.objects.filter(tenant=tenant, kind="outgoing").values_list(
            "idempotency_key", flat=True
        )
    )
    replayed = sum(1 for answers in results.values() for *_, r in answers if r == "true")
    figures.record(
        size,
        "idempotency",
        keys=size.keys,
        requests=10 * size.keys,
        events=sum(events.values()),
        replayed=replayed,
    )
    for key, answers in results.items():
        assert len(answers) == 10
        assert {status for status, *_ in answers} == {200}
        assert len({event_id for _, event_id, _ in answers}) == 1
        assert sum(1 for *_, r in answers if r == "true") == 9
        assert events[key] == 1
