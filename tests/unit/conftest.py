"""Unit tests never leave the machine.

Every unit test runs with a connect guard that fails on any non-loopback connect, and with a
fake resolver for the transport so no DNS query leaves the machine.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest

from integrations import delivery


@pytest.fixture(autouse=True)
def connect_attempts(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record every outbound connect; fail the test on any non-loopback target."""
    attempts: list[object] = []
    real_connect = socket.socket.connect

    def guarded_connect(sock: socket.socket, address: object) -> None:
        attempts.append(address)
        if isinstance(address, tuple):
            target = ipaddress.ip_address(str(address[0]).split("%")[0])
            if target not in ipaddress.ip_network("127.0.0.0/8") and str(target) != "::1":
                pytest.fail(f"test traffic must stay on loopback, tried {address}")
        real_connect(sock, address)

    def no_create_connection(*args: object, **kwargs: object) -> None:
        pytest.fail("socket.create_connection must not be used by the guarded transport")

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "create_connection", no_create_connection)
    return attempts


@pytest.fixture(autouse=True)
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Host name -> addresses the transport will see; unknown names fail to resolve."""
    records: dict[str, list[str]] = {}

    def resolve(host: str, port: int) -> list[str]:
        if host not in records:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return records[host]

    monkeypatch.setattr(delivery, "resolve", resolve)
    return records
