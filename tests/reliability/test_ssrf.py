"""SSRF through the whole delivery path: a partner (or the engine relay) pointed at a private,
loopback, link-local, metadata, reserved or otherwise non-public address is never connected
to; the delivery is stored `dead` with `blocked_destination`.

Nothing leaves the machine: the resolver is patched (numeric forms only go through the real
getaddrinfo with AI_NUMERICHOST, which never queries DNS) and every connect is recorded and
refused by a socket guard, so the tests also prove that a blocked target is never dialled.
"""

from __future__ import annotations

import ipaddress
import os
import random
import socket

import pytest

from integrations import delivery as transport
from integrations.models import Delivery, DeliveryAttempt
from integrations.services.operations import partner_send_test_event
from tests.conftest import incoming_body, outgoing_body
from tests.reliability.conftest import sizes
from tests.support.outbox import send_one
from tests.unit.test_ssrf import BLOCKED_ADDRESSES

IN = "/api/v1/engine/incoming"
OUT = "/api/v1/outgoing"

# host name -> what the patched DNS answers
FAKE_DNS = {
    "metadata.partner.test": ["169.254.169.254"],
    "internal.partner.test": ["10.1.2.3"],
    "router.partner.test": ["192.168.0.1"],
    "cgnat.partner.test": ["100.64.3.4"],
    "ula.partner.test": ["fd00::1"],
    "linklocal6.partner.test": ["fe80::1"],
    "mapped.partner.test": ["::ffff:127.0.0.1"],
    "nat64.partner.test": ["64:ff9b::a00:1"],
    "sixtofour.partner.test": ["2002:a9fe:a9fe::"],
    "localhost.partner.test": ["127.0.0.1", "::1"],
    "mixed.partner.test": ["93.184.216.34", "10.0.0.1"],
    "mixed6.partner.test": ["2606:4700:4700::1111", "fc00::2"],
}
# URL forms whose host is a number in disguise (decimal, hex, octal, short) or has userinfo
DISGUISED = [
    "http://2130706433/hook",  # 127.0.0.1 as one decimal number
    "http://0x7f000001/hook",
    "http://0177.0.0.1/hook",
    "http://127.1/hook",
    "http://0/hook",  # 0.0.0.0
    "http://017700000001/hook",
    "http://partner.example@127.0.0.1/hook",
    "http://[::ffff:a9fe:a9fe]/hook",
    "http://[0:0:0:0:0:ffff:127.0.0.1]:8080/hook",
    "https://169.254.169.254/latest/meta-data/",
]


def _url(address: str) -> str:
    return f"http://[{address}]:8080/hook" if ":" in address else f"http://{address}:8080/hook"


def _random_blocked(rng: random.Random, count: int) -> list[str]:
    """Random addresses from every refused range, in v4, v6 and embedded-v4 forms."""
    ranges = [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "0.0.0.0/8",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "198.18.0.0/15",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
        "2001:db8::/32",
    ]
    found = []
    for _ in range(count):
        network = ipaddress.ip_network(rng.choice(ranges))
        ip = network[rng.randrange(network.num_addresses)]
        form = rng.randrange(3) if ip.version == 4 else 0
        if form == 1:
            ip = ipaddress.IPv6Address(f"::ffff:{ip}")
        elif form == 2:
            ip = ipaddress.IPv6Address(f"64:ff9b::{ip}")
        found.append(_url(str(ip)))
    return found


@pytest.fixture
def dialled(monkeypatch) -> list:
    """Every connect from this process is recorded and refused (nothing is sent anywhere),
    except the test's own Redis (the cache behind the rate limit)."""
    calls: list = []
    real_connect = socket.socket.connect
    redis_port = int(os.environ.get("TEST_REDIS_PORT") or 0)

    def refuse(sock, address):
        if isinstance(address, tuple) and address[:2] == ("127.0.0.1", redis_port):
            return real_connect(sock, address)
        calls.append(address)
        raise ConnectionRefusedError(111, "SSRF test: no connect allowed")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return calls


@pytest.fixture
def fake_dns(monkeypatch) -> list[str]:
    """The patched resolver; returns the list of names looked up."""
    lookups: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        lookups.append(host)
        if host in FAKE_DNS:
            return FAKE_DNS[host]
        # numeric forms only: AI_NUMERICHOST never sends a DNS query
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
        return [info[4][0] for info in infos]

    monkeypatch.setattr(transport, "resolve", resolve)
    return lookups


@pytest.fixture
def strict(settings):
    settings.PORTAL_OUTBOUND_ALLOWLIST = []  # production: nothing private is allowed


@pytest.fixture
def zero_schedule(settings):
    settings.PORTAL_RETRY_SCHEDULE = (0, 0, 0)


def _deliver_to(engine_api, partner, url: str, n: int) -> Delivery:
    partner.base_url = url
    partner.save(update_fields=["base_url"])
    response = engine_api.post(IN, incoming_body(ticketNumber=f"ssrf-{n}"))
    assert response.status_code == 202
    delivery = Delivery.objects.get(event_id=response.json()["eventId"], partner=partner)
    send_one(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    return delivery


@pytest.mark.parametrize(
    "size", sizes(ci={"random": 40}, full={"random": 2000}, scaled=("random",))
)
def test_ssrf_every_non_public_target_is_blocked_and_never_dialled(
    size, engine_api, partner, strict, fake_dns, dialled, figures
):
    # given targets: every blocked address form, host names resolving to them, disguised
    # numeric hosts, and random addresses from every refused range
    targets = (
        [_url(a) for a in BLOCKED_ADDRESSES]
        + [f"https://{host}/hook" for host in FAKE_DNS]
        + DISGUISED
        + _random_blocked(random.Random(35), size.random)
    )
    # when a delivery to each is attempted through the delivery service
    outcomes = [(url, _deliver_to(engine_api, partner, url, n)) for n, url in enumerate(targets)]
    # then each is dead, refused as a blocked destination after one attempt
    wrong = [
        (url, d.status, d.last_error)
        for url, d in outcomes
        if d.status != "dead" or "refused to connect" not in d.last_error
    ]
    attempts = DeliveryAttempt.objects.filter(delivery__partner=partner)
    figures.record(
        size,
        "ssrf",
        targets=len(targets),
        blocked=len(targets) - len(wrong),
        connects=len(dialled),
        error_classes=sorted(set(attempts.values_list("error_class", flat=True))),
    )
    assert wrong == []
    assert set(attempts.values_list("error_class", flat=True)) == {"blocked_destination"}
    assert attempts.count() == len(targets)
    # and no socket was ever connected, not even to loopback
    assert dialled == []
    assert len(targets) >= 35


@pytest.mark.parametrize("size", sizes(ci={}, full={}))
def test_ssrf_dns_rebinding_connects_only_to_the_address_it_checked(
    size, engine_api, partner, strict, monkeypatch, dialled, zero_schedule
):
    # given a name that resolves to a public address first, then to a private one
    answers = iter([["93.184.216.34"], ["10.0.0.5"], ["10.0.0.5"], ["10.0.0.5"]])
    lookups: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        lookups.append(host)
        return next(answers)

    monkeypatch.setattr(transport, "resolve", rebinding)
    # when the delivery is attempted (the public address is "dialled" into the guard, which
    # refuses it), then retried
    first = _deliver_to(engine_api, partner, "http://rebind.partner.test:8080/hook", 0)
    send_one(delivery_id=first.pk)  # the retry is due at once (schedule 0,0,0)
    first.refresh_from_db()
    # then each attempt resolved once and connected only to what it had checked: the public
    # address on the first try, nothing on the second (the private answer was refused)
    assert dialled == [("93.184.216.34", 8080)]
    attempts = list(DeliveryAttempt.objects.filter(delivery=first).order_by("number"))
    assert [a.error_class for a in attempts] == ["connect_error", "blocked_destination"]
    assert first.status == "dead" and "10.0.0.5" in first.last_error
    assert len(lookups) == 2


@pytest.mark.parametrize("size", sizes(ci={}, full={}))
def test_ssrf_engine_relay_and_test_event_are_guarded_too(
    size, engine_api, partner_api, partner, tenant, strict, fake_dns, dialled, zero_schedule
):
    # given an engine relay and a partner pointed at the cloud metadata address
    tenant.engine_base_url = "http://169.254.169.254"
    tenant.engine_send_message_path = "/latest/meta-data/"
    tenant.engine_command_path = "/c"
    tenant.engine_token = "relay-token"
    tenant.save()
    partner.base_url = "http://metadata.partner.test"
    partner.save()
    engine_api.post(IN, incoming_body())
    # when the partner's reply is relayed, and an admin sends the partner a test event
    reply = partner_api.post(OUT, outgoing_body()).json()["eventId"]
    relay = Delivery.objects.get(event_id=reply, target="engine")
    send_one(delivery_id=relay.pk)
    probe = partner_send_test_event(partner=partner)
    # then both are refused without a connect
    relay.refresh_from_db()
    assert relay.status == "dead" and "169.254.169.254" in relay.last_error
    assert probe.status_code is None and "refused to connect" in probe.error
    assert dialled == []
