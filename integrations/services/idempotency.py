"""Idempotency-Key handling (SPEC §3.5).

The first request with a key inserts an `in_progress` record in its own committed
transaction; a concurrent duplicate finds it and waits. The first request completes the record
inside the same transaction that stores its event, so "event stored" and "key remembered" are
one fact. Refusals (4xx) delete the record: they are not remembered.
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import connection
from django.utils import timezone

from integrations.errors import Conflict
from integrations.models import IdempotencyRecord
from integrations.services.sql import prep, qn

TTL = timedelta(hours=24)
# An in-progress record older than this belongs to a request that died; it is taken over.
STALE_AFTER = timedelta(seconds=60)
WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class Replay:
    status: int
    body: dict[str, Any]


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), b"\0", path.encode(), b"\0", body):
        digest.update(part)
    return digest.hexdigest()


def idempotency_begin(*, holder: str, key: str, fingerprint: str) -> IdempotencyRecord | Replay:
    """Start a request under a key: returns the new record, or the earlier answer to replay.

    Raises Conflict (`idempotency_conflict`) when the key was used with another body, and
    (`idempotency_in_progress`) when a duplicate is still running after WAIT_SECONDS.
    """
    deadline = time.monotonic() + WAIT_SECONDS
    pause = 0.02
    while True:
        now = timezone.now()
        created = _record_insert(holder=holder, key=key, fingerprint=fingerprint, now=now)
        if created is not None:
            return created
        record = IdempotencyRecord.objects.filter(holder=holder, key=key).first()
        if record is None:
            continue  # the other request was refused and forgot the key: try again
        expired = record.created_at < now - TTL
        stale = record.state == IdempotencyRecord.State.IN_PROGRESS and (
            record.created_at < now - STALE_AFTER
        )
        if expired or stale:
            IdempotencyRecord.objects.filter(pk=record.pk, created_at=record.created_at).delete()
            continue
        if record.request_hash != fingerprint:
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


@functools.cache
def _insert_sql() -> str:
    c = {f.name: qn(f.column) for f in IdempotencyRecord._meta.fields}
    table = qn(IdempotencyRecord._meta.db_table)
    return (
        f"INSERT INTO {table} ({c['holder']}, {c['key']}, {c['request_hash']}, {c['state']},"  # noqa: S608
        f" {c['created_at']}) VALUES (%s, %s, %s, %s, %s)"
        f" ON CONFLICT ({c['holder']}, {c['key']}) DO NOTHING RETURNING {c['id']}"
    )


def _record_insert(*, holder: str, key: str, fingerprint: str, now) -> IdempotencyRecord | None:
    """Insert the in-progress record, or return None when the key is taken.

    One statement that cannot fail on the unique key (INSERT ... ON CONFLICT DO NOTHING, on
    PostgreSQL and SQLite alike), so it needs no transaction or savepoint of its own: outside
    a transaction it commits at once, as a concurrent duplicate must see it. Hand-written
    because every request with a key runs it (issue #7: the ORM's compiler cost more CPU than
    the statement); only names from the model's metadata are formatted into the SQL.
    """
    state = IdempotencyRecord.State.IN_PROGRESS
    with connection.cursor() as cursor:
        cursor.execute(
            _insert_sql(),
            [holder, key, fingerprint, state.value, prep(IdempotencyRecord, "created_at", now)],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    record = IdempotencyRecord(
        id=row[0], holder=holder, key=key, request_hash=fingerprint, state=state, created_at=now
    )
    record._state.adding, record._state.db = False, connection.alias
    return record


def idempotency_complete(*, record: IdempotencyRecord, status: int, body: dict) -> None:
    """Remember the answer; call inside the transaction that stored the event."""
    IdempotencyRecord.objects.filter(pk=record.pk).update(
        state=IdempotencyRecord.State.DONE, response_status=status, response_body=body
    )


def idempotency_abandon(*, record: IdempotencyRecord) -> None:
    """Forget a key whose request was refused or failed, so it can be used again."""
    IdempotencyRecord.objects.filter(pk=record.pk).delete()


def idempotency_prune(*, now=None) -> int:
    """Delete records older than 24 h; returns how many."""
    now = now or timezone.now()
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=now - TTL).delete()
    return deleted
