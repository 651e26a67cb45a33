"""Idempotency-Key records (SPEC §3.5).

The first request with a key inserts an `in_progress` record in its own committed
statement; a concurrent duplicate finds it and waits. The accepting service
(services/events.py) completes the record inside the transaction that stores its event, so
"event stored" and "key remembered" are one fact, and forgets it when the event is refused.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from integrations.errors import Conflict
from integrations.models import IdempotencyRecord
from integrations.services.ingest_sql import idempotency_record_insert

TTL = timedelta(hours=24)
# An in-progress record older than this belongs to a request that died; it is taken over.
STALE_AFTER = timedelta(seconds=60)
WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class IdempotencyRequest:
    """A request under an Idempotency-Key: who holds the key's scope (one partner, all its
    keys; or one engine key), the key, and the request's fingerprint."""

    holder: str
    key: str
    fingerprint: str


@dataclass(frozen=True)
class Replay:
    """The first answer given under a key, to be answered again."""

    status: int
    body: dict[str, Any]


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    """SHA-256 of method, path and the exact body bytes."""
    digest = hashlib.sha256()
    for part in (method.encode(), b"\0", path.encode(), b"\0", body):
        digest.update(part)
    return digest.hexdigest()


def idempotency_begin(*, request: IdempotencyRequest) -> int | Replay:
    """Start a request under a key: returns the new record's id, or the answer to replay.

    Raises Conflict (`idempotency_conflict`) when the key was used with another body, and
    (`idempotency_in_progress`) when a duplicate is still running after WAIT_SECONDS.
    """
    deadline = time.monotonic() + WAIT_SECONDS
    pause = 0.02
    while True:
        now = timezone.now()
        created = idempotency_record_insert(
            holder=request.holder, key=request.key, fingerprint=request.fingerprint, now=now
        )
        if created is not None:
            return created
        record = IdempotencyRecord.objects.filter(holder=request.holder, key=request.key).first()
        if record is None:
            continue  # the other request was refused and forgot the key: try again
        expired = record.created_at < now - TTL
        stale = record.state == IdempotencyRecord.State.IN_PROGRESS and (
            record.created_at < now - STALE_AFTER
        )
        if expired or stale:
            IdempotencyRecord.objects.filter(pk=record.pk, created_at=record.created_at).delete()
            continue
        if record.request_hash != request.fingerprint:
            raise Conflict(
                "This Idempotency-Key was used with a different request body.",
                code="idempotency_conflict",
            )
        if record.state == IdempotencyRecord.State.DONE:
            return Replay(status=record.response_status or 200, body=record.response_body or {})
        if time.monotonic() > deadline:
            raise Conflict(
                "A request with this Idempotency-Key is still being processed.",
                code="idempotency_in_progress",
            )
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


def idempotency_complete(*, record_id: int, status: int, body: dict[str, Any]) -> None:
    """Remember the answer; call inside the transaction that stored the event."""
    IdempotencyRecord.objects.filter(pk=record_id).update(
        state=IdempotencyRecord.State.DONE, response_status=status, response_body=body
    )


def idempotency_abandon(*, record_id: int) -> None:
    """Forget a key whose request was refused or failed, so it can be used again."""
    IdempotencyRecord.objects.filter(pk=record_id).delete()


def idempotency_prune(*, now: datetime) -> int:
    """Delete records older than 24 h (retention); returns how many."""
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=now - TTL).delete()
    return deleted
