"""Unit tests of the SSRF guard's rules and the outbound allowlist (integrations/ssrf.py).

The guard applied at connect time, through `send_webhook`, is tested in test_delivery.py.
"""

from __future__ import annotations

import ipaddress

import pytest

from integrations.ssrf import OutboundPolicy, address_block_reason

STRICT = OutboundPolicy()
LOOPBACK = OutboundPolicy.from_setting("127.0.0.0/8,::1")

# Whitespace-separated so the tables stay tables.
BLOCKED_ADDRESSES = """
    127.0.0.1 127.255.255.254 10.0.0.1 10.255.255.255 172.16.0.1 172.31.255.254 192.168.1.1
    169.254.169.254 169.254.0.1 100.64.0.1 100.127.255.254 224.0.0.1 239.255.255.250
    240.0.0.1 255.255.255.255 0.0.0.0 0.1.2.3 192.0.0.8 192.0.2.1 198.18.0.1 198.19.255.254
    198.51.100.7 203.0.113.9 192.88.99.1
    ::1 :: ::ffff:127.0.0.1 ::ffff:10.0.0.1 ::ffff:169.254.169.254 ::127.0.0.1 ::ffff:0:7f00:1
    64:ff9b::a9fe:a9fe 64:ff9b::7f00:1 64:ff9b:1:a9fe:a9:fe00:: 64:ff9b:1::a9fe:a9fe
    2002:7f00:1:: 2002:a9fe:a9fe:: 2002:a00:1:: fe80::1 fc00::1 fd12:3456::1 fec0::1 ff02::1
    ff05::2 2001:db8::1 2001:0:4136:e378:8000:63bf:3fff:fdd2 2001:2::1 100::1 3fff::1
""".split()
PUBLIC_ADDRESSES = """
    8.8.8.8 1.1.1.1 93.184.216.34 172.32.0.1 100.128.0.1 192.169.0.1 2606:4700:4700::1111
    2a00:1450:4001::1 ::ffff:8.8.8.8 64:ff9b::808:808 2002:808:808::
""".split()


# --- address classification ----------------------------------------------------------------


@pytest.mark.parametrize("address", BLOCKED_ADDRESSES)
def test_address_block_reason_refuses_non_public(address: str) -> None:
    # when
    reason = address_block_reason(ipaddress.ip_address(address))
    # then
    assert reason is not None


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "cgnat"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("fc00::1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("2002:a9fe:a9fe::", "link-local"),
        ("2001:db8::1", "reserved"),
    ],
)
def test_address_block_reason_names_the_range(address: str, reason: str) -> None:
    # when / then
    assert address_block_reason(ipaddress.ip_address(address)).startswith(reason)


@pytest.mark.parametrize("address", PUBLIC_ADDRESSES)
def test_address_block_reason_allows_public(address: str) -> None:
    # when / then
    assert address_block_reason(ipaddress.ip_address(address)) is None


# --- allowlist -----------------------------------------------------------------------------


def test_outbound_policy_from_setting_parses_networks_and_hosts() -> None:
    # when
    policy = OutboundPolicy.from_setting(" 127.0.0.0/8, ::1 ,Partner.Local.,, ")
    # then
    assert policy.allowlist_networks == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert policy.allowlist_hosts == frozenset({"partner.local"})


@pytest.mark.parametrize(
    "entry", ["10.0.0.1/8", "10.0.0.0/33", "999.1.1.1", "http://x", "*.example.com", "a b", "-x.io"]
)
def test_outbound_policy_from_setting_rejects_bad_entry(entry: str) -> None:
    # when / then
    with pytest.raises(ValueError, match="allowlist entry"):
        OutboundPolicy.from_setting(f"127.0.0.0/8,{entry}")


def test_outbound_policy_from_setting_empty_allows_nothing_special() -> None:
    # when
    policy = OutboundPolicy.from_setting("")
    # then
    assert policy == STRICT
    assert policy.block_reason("x", ipaddress.ip_address("127.0.0.1")) == "loopback"


def test_outbound_policy_block_reason_allows_mapped_form_of_allowlisted_network() -> None:
    # when / then
    assert LOOPBACK.block_reason("x", ipaddress.ip_address("::ffff:127.0.0.1")) is None
