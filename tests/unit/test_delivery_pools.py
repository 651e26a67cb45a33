"""Where each HTTP client keeps its connections (integrations/delivery/): per process and
policy (requests), per thread and policy (curl), never inherited by a forked child.

Sending over them is tested, for both clients, in test_delivery.py.
"""

from __future__ import annotations

import os
import threading

import pytest

from integrations.delivery import curl_client, requests_client
from integrations.ssrf import OutboundPolicy

STRICT = OutboundPolicy()
LOOPBACK = OutboundPolicy.from_setting("127.0.0.0/8,::1")


def test_session_for_is_shared_and_rebuilt_after_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    # given
    first = requests_client._session_for(LOOPBACK)
    assert requests_client._session_for(LOOPBACK) is first
    # when the process id changes (we are a forked child)
    monkeypatch.setattr(os, "getpid", lambda: -1)
    # then the parent's pooled sockets are not reused
    assert requests_client._session_for(LOOPBACK) is not first


def test_curl_handle_is_per_thread_and_policy_and_rebuilt_after_fork(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given
    first = curl_client._handle(LOOPBACK)
    assert curl_client._handle(LOOPBACK) is first
    assert curl_client._handle(STRICT) is not first
    other: list[object] = []
    thread = threading.Thread(target=lambda: other.append(curl_client._handle(LOOPBACK)))
    thread.start()
    thread.join()
    assert other[0] is not first
    # when the process id changes (we are a forked child)
    monkeypatch.setattr(os, "getpid", lambda: -1)
    # then the parent's handle is kept aside (never cleaned up here), not reused
    assert curl_client._handle(LOOPBACK) is not first
    assert first in curl_client._inherited
