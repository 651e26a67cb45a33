"""The hot path's SQL cursor and its parameters: statements every event or batch runs
(outbox/queue.py, outbox/targets.py, services/ingest_sql.py) go through `sql_cursor`, with
their values adapted by `db_value(s)` as each field's own get_db_prep_save would.

Each statement that uses them is hand-written in one function that says why: built through
the ORM's compiler, they cost more CPU than the database spent running them
(docs/PERFORMANCE.md).
"""

from __future__ import annotations

import functools
import time
import uuid
import weakref
from datetime import datetime
from typing import Any

import psycopg
from django.db import DEFAULT_DB_ALIAS, connection, connections, models
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from psycopg import pq


def sql_cursor() -> Any:
    """The cursor of the hot-path SQL (see the module).

    On PostgreSQL it binds parameters on the server and prepares each statement on its first
    run on a connection, so PostgreSQL parses it once and, once its plan cache settles on a
    generic plan (after five runs), plans it no more: planning the claim cost more than
    running it (about 1 ms each, EXPLAIN ANALYZE, docs/PERFORMANCE.md). Django's cursor
    wrapper stays around it, so its execute wrappers, query logging and error translation
    work as for any other statement (while queries are logged, or traces are on, they go as
    the others do, so the log and the traces show them). Behind PgBouncer in transaction
    mode (PORTAL_PGBOUNCER) a prepared statement would not be on the next transaction's
    server connection: there, as on SQLite, the ordinary cursor.
    """
    conn = connections[DEFAULT_DB_ALIAS]  # this thread's, not the proxy (a lookup a use)
    if (
        conn.vendor != "postgresql"
        or conn.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")
        # Queries are being logged (DEBUG, tests counting them): these statements go through
        # Django's own cursor, as the others do, so the log shows them as it shows those.
        or conn.queries_logged
        # Traces are on: the psycopg instrumentation traces the cursors it makes, so these
        # statements keep their spans (and give up preparing).
        or PsycopgInstrumentor().is_instrumented_by_opentelemetry
    ):
        return conn.cursor()
    conn.close_if_health_check_failed()
    conn.ensure_connection()
    with conn.wrap_database_errors:
        _replan_when_due(conn.connection)
        cursor = _PreparedCursor(conn.connection)
        return conn._prepare_cursor(cursor)  # type: ignore[attr-defined]


# Seconds a connection keeps its prepared statements before they are prepared again.
REPLAN_AFTER = 15.0
_prepared_since: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = (
    weakref.WeakKeyDictionary()
)


def _replan_when_due(raw: psycopg.Connection[Any]) -> None:
    """Drop the connection's prepared statements every REPLAN_AFTER seconds, so each is
    planned again. A generic plan is made once, with the table sizes of that moment: made
    while a table was nearly empty (a new install, the start of a benchmark), it kept
    reading the whole table as it grew (the claim's join to the events: a sequential scan of
    2,915 rows, 1.7 ms of its 2.8, auto_explain, docs/PERFORMANCE.md). Planned again, each
    statement sees the tables' current size (PostgreSQL counts their pages at planning, with
    or without fresh statistics). Costs a DEALLOCATE ALL and a few custom plans per
    statement per connection every REPLAN_AFTER seconds.

    psycopg is told first, as a ROLLBACK tells it (it forgets its names), then the server
    (DEALLOCATE ALL at once: psycopg's own would wait until after the next statement, which
    may be prepared by then). A DEALLOCATE alone would not do: psycopg looks at a command's
    result only the first time it sees its text, so a second one would leave it naming
    statements the server no longer has (tests/outbox/test_queue.py). Its automatic
    preparing of the ORM's statements (prepare_threshold in settings) starts over too. If
    that bookkeeping is not where this psycopg keeps it, nothing is dropped."""
    now = time.monotonic()
    since = _prepared_since.setdefault(raw, now)
    # (between transactions only: a failed one would refuse the DEALLOCATE)
    if now - since > REPLAN_AFTER and raw.info.transaction_status == pq.TransactionStatus.IDLE:
        prepared = getattr(raw, "_prepared", None)
        if prepared is not None and hasattr(prepared, "clear"):
            prepared.clear()  # forgets every name (its own DEALLOCATE waits for a statement)
            raw.execute("DEALLOCATE ALL", prepare=False)  # before any is prepared again
        _prepared_since[raw] = now


class _PreparedCursor(psycopg.RawCursor):
    """Server-side binding, every statement prepared on its first run (psycopg's automatic
    preparing, prepare_threshold in settings, waits for a statement's fifth), its %s
    placeholders turned into PostgreSQL's own once per statement text (`native_placeholders`):
    psycopg's cursor does that on every run of a statement longer than 4 KiB or with more than
    50 parameters (the claim; the record of a batch), 13 % of a worker's CPU in the delivery
    bench."""

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        kwargs.setdefault("prepare", True)
        if params is not None:
            query = _native(query, params)
        return super().execute(query, params, **kwargs)

    def executemany(self, query: Any, params_seq: Any, **kwargs: Any) -> Any:
        params_seq = list(params_seq)
        if params_seq:
            query = _native(query, params_seq[0])
        return super().executemany(query, params_seq, **kwargs)


def _native(query: Any, params: Any) -> str:
    """`query` with PostgreSQL's placeholders, checked against `params` as psycopg would (a
    count that does not match is refused before anything is sent)."""
    if type(query) is not str or not isinstance(params, (list, tuple)):
        raise psycopg.ProgrammingError("hot-path SQL is a str with a list of parameters")
    text, count = native_placeholders(query)
    if len(params) != count:
        raise psycopg.ProgrammingError(
            f"the query has {count} placeholders but {len(params)} parameters were passed"
        )
    return text


@functools.lru_cache(maxsize=256)
def native_placeholders(query: str) -> tuple[str, int]:
    """`query` with psycopg's positional placeholders (%s) as PostgreSQL's ($1, $2, …) and
    %% as %, as psycopg's cursor would send it, and how many placeholders it has. The hot
    path's statements take only those: any other placeholder (%(name)s, %b, %t) or a lone %
    raises psycopg.ProgrammingError."""
    pieces, n = [], 0
    for piece in query.split("%%"):
        parts = piece.split("%s")
        if any("%" in part for part in parts):
            raise psycopg.ProgrammingError(
                f"hot-path SQL takes %s placeholders only: {query[:80]!r}"
            )
        rebuilt = [parts[0]]
        for part in parts[1:]:
            n += 1
            rebuilt.append(f"${n}{part}")
        pieces.append("".join(rebuilt))
    return "%".join(pieces), n


def db_value(model: type[models.Model], field: str, value: Any) -> Any:
    """`value` as the database driver takes it for `model.field` (the ORM's own adaptation:
    datetimes and UUIDs come out right on PostgreSQL and SQLite alike)."""
    return _adapted(model, field, value, connections[DEFAULT_DB_ALIAS])


def db_values(model: type[models.Model], row: dict[str, Any]) -> list[Any]:
    """`db_value` of each of a row's fields, in the row's order."""
    # the connection itself, not the thread-local proxy: a field's adaptation asks it for its
    # features and operations several times, each a thread-local lookup through the proxy
    conn = connections[DEFAULT_DB_ALIAS]
    return [_adapted(model, name, value, conn) for name, value in row.items()]


def _adapted(model: type[models.Model], field: str, value: Any, conn: Any) -> Any:
    as_is, prep = _db_prep(model, field, conn.vendor)
    if value is None or (type(value) in as_is and getattr(value, "tzinfo", True) is not None):
        return value  # (a naive datetime has tzinfo None: the field warns and converts it)
    return prep(value, conn)


# Fields whose adaptation gives a value of one plain type back as it came, by exact field
# class (a subclass, such as an encrypted text field, adapts its own way) and exact value
# type (an int for a text field is still converted by the field). Integers are not among
# them: Django wraps each in its column's size (Int4, Int8), so a statement's parameter types
# do not change with the values, and a prepared statement fits every call.
_AS_IS: dict[type[models.Field[Any, Any]], tuple[type, ...]] = {
    models.CharField: (str,),
    models.TextField: (str,),
    models.BooleanField: (bool,),
}


@functools.cache
def _db_prep(model: type[models.Model], field: str, vendor: str) -> tuple[tuple[type, ...], Any]:
    """The value types `model.field` takes as they are on `vendor` (an accepted event adapts
    ~50 values: the field's get_db_prep_save for each was a tenth of its CPU), and the
    field's adaptation for the others. On PostgreSQL an aware datetime and a UUID go as they
    are too (psycopg adapts them; SQLite wants text)."""
    model_field = model._meta.get_field(field)
    assert isinstance(model_field, models.Field)
    target = getattr(model_field, "target_field", model_field)  # a foreign key's: its target's
    as_is = _AS_IS.get(type(target), ())
    if vendor == "postgresql" and type(target) is models.DateTimeField:
        as_is = (datetime,)  # aware ones only (`_adapted`): a naive one gets the ORM's warning
    elif vendor == "postgresql" and type(target) is models.UUIDField:
        as_is = (uuid.UUID,)
    return as_is, model_field.get_db_prep_save


@functools.cache
def columns(model: type[models.Model]) -> dict[str, str]:
    """The model's concrete fields by name -> their quoted column names (a foreign key's name
    gives its id column), for statements built from the models' metadata."""
    return {f.name: connection.ops.quote_name(f.column) for f in model._meta.concrete_fields}
