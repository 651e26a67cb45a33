"""The SSRF guard's rules (SPEC §5 "SSRF"): which addresses are never connected to, and the
allowlist that overrides them (`PORTAL_OUTBOUND_ALLOWLIST`).

Pure Python: the transport (integrations.delivery) applies these at connect time, on the
addresses actually connected to.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class BlockedDestination(Exception):
    """A connection was refused because the target address is not public (SPEC §5 SSRF)."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        super().__init__(f"refused to connect to {host} ({address}): {reason} address")
        self.host, self.address, self.reason = host, address, reason


# --- address classification --------------------------------------------------------------


def _table(*rows: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), reason) for net, reason in rows)


# First match wins, so narrower rows come first. Explicit tables because `is_private` and
# friends differ between Python patch releases (3.11.7 misjudges mapped and some v6 ranges).
_V4_BLOCKED = _table(
    ("0.0.0.0/32", "unspecified"),
    ("0.0.0.0/8", "reserved"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "cgnat"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),
    ("192.0.2.0/24", "reserved"),
    ("192.88.99.0/24", "reserved"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "reserved"),
    ("198.51.100.0/24", "reserved"),
    ("203.0.113.0/24", "reserved"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # incl. 255.255.255.255
)
_V6_BLOCKED = _table(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    # Local-use NAT64 (RFC 8215) translates inside the operator's own network, and where
    # the IPv4 sits depends on that translator's prefix length: refuse it whole.
    ("64:ff9b:1::/48", "reserved (local-use NAT64)"),
    ("fc00::/7", "private"),
    ("fec0::/10", "private"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
    ("2001::/32", "reserved (Teredo)"),
    ("2001::/23", "reserved"),
    ("2001:db8::/32", "reserved"),
    ("3fff::/20", "reserved"),
    ("5f00::/16", "reserved"),
)
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_COMPATIBLE = ipaddress.IPv6Network("::/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    value = int(ip)
    if ip in _MAPPED:
        return [("IPv4-mapped", ipaddress.IPv4Address(value & 0xFFFFFFFF))]
    if ip in _COMPATIBLE:
        return [("IPv4-compatible", ipaddress.IPv4Address(value & 0xFFFFFFFF))]
    if ip in _NAT64:
        return [("NAT64", ipaddress.IPv4Address(value & 0xFFFFFFFF))]
    if ip in _SIX_TO_FOUR:
        return [("6to4", ipaddress.IPv4Address((value >> 80) & 0xFFFFFFFF))]
    return []


def address_block_reason(ip: IPAddress) -> str | None:
    """Say why connecting to `ip` is refused, ignoring any allowlist.

    Returns None for a public address, else a reason such as "loopback", "private",
    "link-local", "cgnat", "multicast", "reserved" or "unspecified"; an address embedding IPv4
    (mapped, compatible, NAT64, 6to4) is judged by that IPv4, e.g. "loopback (in 6to4)".
    """
    if ip.version == 4:
        return next((reason for net, reason in _V4_BLOCKED if ip in net), None)
    for net, reason in _V6_BLOCKED[:3]:  # these win over the embedded-IPv4 forms below
        if ip in net:
            return reason
    embedded = _embedded_ipv4(ip)
    for form, v4 in embedded:
        if v4_reason := address_block_reason(v4):
            return f"{v4_reason} (in {form})"
    if embedded:
        return None
    for net, reason in _V6_BLOCKED:
        if ip in net:
            return reason
    # Only 2000::/3 is allocated for global unicast; everything else is special or unassigned.
    return None if ip in _V6_GLOBAL_UNICAST else "reserved"


_HOSTNAME = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$")


@dataclass(frozen=True)
class OutboundPolicy:
    """What may be connected to despite the SSRF guard (`PORTAL_OUTBOUND_ALLOWLIST`)."""

    allowlist_networks: tuple[IPNetwork, ...] = ()
    allowlist_hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_setting(cls, value: str) -> OutboundPolicy:
        """Parse "127.0.0.0/8,::1,partner.local" (CIDRs, addresses, host names; may be empty).

        Raises ValueError naming the bad entry: a malformed network, one with host bits set,
        or something that is neither an address nor a host name.
        """
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for raw in (value or "").split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry))
                continue
            except ValueError as exc:
                network_error = str(exc)
            host = entry.rstrip(".")
            looks_numeric = all(label.isdigit() for label in host.split("."))
            if "/" in entry or ":" in entry or looks_numeric or not _HOSTNAME.match(host):
                raise ValueError(
                    f"outbound allowlist entry {raw.strip()!r} is neither a network "
                    f"({network_error}) nor a host name"
                )
            hosts.add(host)
        return cls(tuple(networks), frozenset(hosts))

    def block_reason(self, host: str, ip: IPAddress) -> str | None:
        """Like `address_block_reason`, but None when the host or address is allowlisted."""
        if host.rstrip(".").lower() in self.allowlist_hosts:
            return None
        candidates = [ip]
        if ip.version == 6 and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)  # ::ffff:127.0.0.1 *is* 127.0.0.1
        if any(c in net for c in candidates for net in self.allowlist_networks):
            return None
        return address_block_reason(ip)
