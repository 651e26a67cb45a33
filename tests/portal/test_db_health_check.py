"""The PostgreSQL backend's health check (portal/postgresql/base.py): a kept connection with
a quiet socket is used without a `SELECT 1`; one the server ended is found out and replaced
before a request uses it."""

from __future__ import annotations

import time

import pytest
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.backends.postgresql.base import DatabaseWrapper as PostgreSQLDatabaseWrapper

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the PostgreSQL backend's check"
)


@pytest.fixture
def kept(db):
    """A second connection, as a web or worker process keeps one between requests."""
    wrapper = connections.create_connection(DEFAULT_DB_ALIAS)
    wrapper.ensure_connection()
    yield wrapper
    wrapper.close()


def test_the_portal_uses_its_own_postgresql_backend(kept):
    assert type(kept).__module__ == "portal.postgresql.base"
    assert kept.settings_dict["CONN_HEALTH_CHECKS"]


def test_a_quiet_connection_is_usable_without_a_round_trip(kept, monkeypatch):
    def select_one(self):
        raise AssertionError("SELECT 1 was sent")

    monkeypatch.setattr(PostgreSQLDatabaseWrapper, "is_usable", select_one)
    assert kept.is_usable()


def test_a_connection_the_server_ended_is_not_usable(kept):
    pid = kept.connection.info.backend_pid
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    # the server's goodbye reaches the socket a moment later
    deadline = time.monotonic() + 5
    while kept.is_usable() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not kept.is_usable()
    # and Django's own rule then drops it: the next use opens a new one
    kept.health_check_done = False
    kept.close_if_health_check_failed()
    assert kept.connection is None
    with kept.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        assert cursor.fetchone()[0] != pid


def test_a_closed_connection_is_not_usable(kept):
    kept.connection.close()
    assert not kept.is_usable()
