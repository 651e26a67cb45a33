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

import psycopg
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
            # only an idle session is taken on the socket's word (one left in the middle of
            # a result or of a failed transaction gets Django's check)
            quiet = pgconn.transaction_status == pq.TransactionStatus.IDLE and not _readable(
                pgconn.socket
            )
        except (OSError, ValueError, AttributeError, psycopg.Error):
            quiet = False
        return True if quiet else bool(super().is_usable())


def _readable(fd: int) -> bool:
    """Whether the socket has something to read now (poll: no limit on the descriptor)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))
