"""Hand-written SQL for the hot paths (ingest, delivery claims), issue #7.

Every accepted event and every delivery batch runs a handful of statements. Building them
through the ORM's query compiler took about a quarter of the web process's CPU per request and
more worker CPU than running the claim (py-spy on bench/ingest.py and bench/delivery.py), so
their text is built once per process from the models' metadata (table and column names are
never spelled out by hand) and only the values are prepared per call, by each field's own
get_db_prep_save (the adaptation the ORM itself uses: JSON, bytes, UUIDs and datetimes come out
right on PostgreSQL and on SQLite alike). INSERT … ON CONFLICT … DO UPDATE and RETURNING run on
PostgreSQL and on SQLite >= 3.35. Only names from the models' metadata, fixed SQL and
placeholders are formatted into the statements (hence their S608 noqa).
"""

from __future__ import annotations

import functools
import json
from typing import TypeVar

from django.db import connection, models

M = TypeVar("M", bound=models.Model)


def qn(name: str) -> str:
    return connection.ops.quote_name(name)


def prep(model: type[models.Model], field: str, value):
    """`value` as the database driver takes it for `model.field`."""
    return model._meta.get_field(field).get_db_prep_save(value, connection)


def insert_fields(model: type[models.Model]) -> tuple[models.Field, ...]:
    """The columns an INSERT of `model` writes: every concrete field except an auto pk."""
    return tuple(f for f in model._meta.concrete_fields if f is not model._meta.auto_field)


@functools.cache
def insert_sql(model: type[models.Model], rows: int) -> str:
    """`INSERT INTO <table> (<insert_fields>) VALUES (...) x rows`, plus `RETURNING <pk>`
    when the database assigns the key."""
    fields = insert_fields(model)
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    sql = (
        f"INSERT INTO {qn(model._meta.db_table)} ({', '.join(qn(f.column) for f in fields)})"  # noqa: S608
        f" VALUES {', '.join([row] * rows)}"
    )
    if model._meta.auto_field is not None:
        sql += f" RETURNING {qn(model._meta.pk.column)}"
    return sql


def insert(objs: list[M]) -> list[M]:
    """Insert unsaved instances of one model in one statement, as Model.save() would (defaults
    and auto_now fields included); sets their pk, marks them saved and returns them."""
    if not objs:
        return objs
    model = type(objs[0])
    fields = insert_fields(model)
    params = [f.get_db_prep_save(f.pre_save(obj, True), connection) for obj in objs for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(insert_sql(model, len(objs)), params)
        if model._meta.auto_field is not None:
            # RETURNING yields the rows in VALUES order (bulk_create relies on it too).
            for obj, (pk,) in zip(objs, cursor.fetchall(), strict=True):
                obj.pk = pk
    for obj in objs:
        obj._state.adding, obj._state.db = False, connection.alias
    return objs


def json_value(value):
    """A JSON column as a raw cursor returns it: text (SQLite, Django's PostgreSQL setup)."""
    return json.loads(value) if isinstance(value, (str, bytes)) else value
