"""The SSRF guard at connect time, shared by both HTTP clients.

A host name is resolved once per new connection, with the resolver the caller passes
(`integrations.delivery.resolve`, which tests replace); every answer is vetted by the
`OutboundPolicy` before any connect, so one non-public answer refuses the host; then the
vetted addresses are dialled in order, from Python, and the first that accepts is the
connection. Nothing resolves the name again between the check and the connect, so DNS
rebinding cannot slip a private address in.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable

from integrations.deadlines import Watchdog
from integrations.ssrf import BlockedDestination, IPAddress, OutboundPolicy

Resolver = Callable[[str, int], list[str]]
SocketOption = tuple[int, int, int | bytes]


def vetted_addresses(
    host: str, port: int, *, policy: OutboundPolicy, resolve: Resolver
) -> list[IPAddress]:
    """The addresses `host` may be connected to, in the resolver's order.

    Raises BlockedDestination when any answer is refused (all are checked before any
    connect), socket.gaierror when the name does not resolve.
    """
    host = host.strip("[]")
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
    except ValueError:
        answers = resolve(host, port)
        addresses = list(dict.fromkeys(ipaddress.ip_address(a) for a in answers))
    for address in addresses:
        if reason := policy.block_reason(host, address):
            raise BlockedDestination(host, str(address), reason)
    return addresses


def connect_vetted(
    host: str,
    port: int,
    *,
    policy: OutboundPolicy,
    resolve: Resolver,
    timeout: float | None,
    watchdog: Watchdog | None,
    socket_options: Iterable[SocketOption] = (),
    source_address: tuple[str, int] | None = None,
) -> socket.socket:
    """A socket connected to a vetted address of `host`, each connect bounded by `timeout`
    and by what is left of the watchdog's deadline.

    Raises BlockedDestination, socket.gaierror, or the last connect's OSError
    (ConnectionRefusedError, TimeoutError, ...); OSError("... resolved to no address") when
    the resolver answered nothing.
    """
    addresses = vetted_addresses(host, port, policy=policy, resolve=resolve)
    error: OSError = OSError(f"{host.strip('[]')} resolved to no address")
    for address in addresses:
        limit = timeout
        if watchdog is not None:
            limit = max(0.001, min(limit or watchdog.remaining(), watchdog.remaining()))
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            for option in socket_options:
                sock.setsockopt(*option)
            sock.settimeout(limit)
            if source_address:
                sock.bind(source_address)
            sock.connect((str(address), port))
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock
    raise error
