"""Django's PostgreSQL backend, but `is_usable` (CONN_HEALTH_CHECKS: asked before a kept
connection's first use in each request and task) looks at the connection's socket before it
sends `SELECT 1`.

Every API request and every worker task paid that round trip: on the ingest path it was a
fifth of the web process's wall time per accepted event (py-spy, docs/PERFORMANCE.md). A
session the server ended (a restart, pg_terminate_backend, an idle timeout) has a socket with
something to read: the server's last message, or the end of the stream. Then, and whenever
the socket cannot be looked at, Django's own check runs (`SELECT 1`), so a dead connection is
still replaced before the request uses it; a quiet socket of a connection psycopg holds as
open is taken as usable, as the SELECT would have found it.
"""

from __future__ import annotations

import select

from django.db.backends.postgresql.base import DatabaseWrapper as PostgreSQLDatabaseWrapper
from psycopg import pq


class DatabaseWrapper(PostgreSQLDatabaseWrapper):
    def is_usable(self) -> bool:
        if self.connection is None:
            return False
        try:
            pgconn = self.connection.pgconn
            if pgconn.status != pq.ConnStatus.OK or self.connection.closed:
                return False
            readable, _, _ = select.select([pgconn.socket], [], [], 0)
        except (OSError, ValueError, AttributeError):
            readable = [True]
        if readable:
            return bool(super().is_usable())
        return True
