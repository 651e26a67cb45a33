"""Trigram indexes for the admin's partial search (issue 14): parts of ticket numbers,
customer names and message text (integrations/admin/logs.py).

PostgreSQL only: pg_trgm (a trusted extension since PostgreSQL 13, so the database's owner
may create it) and GIN indexes on exactly the expressions Django's `icontains` writes,
UPPER(column) LIKE UPPER('%term%'), so the planner can use them. The embedded SQLite default
searches with a plain LIKE, which its scale allows; there this migration does nothing.

The indexes are built CONCURRENTLY (hence atomic = False): the event table of a live portal
takes writes the whole time. A build that failed leaves an invalid index behind, which
IF NOT EXISTS would then keep; it is dropped first, so running the migration again repairs it.
"""

from django.db import migrations

# (index, table, indexed expression)
INDEXES = [
    ("ticket_number_trgm_idx", "integrations_ticket", 'UPPER("ticket_number"::text)'),
    ("ticket_customer_name_trgm_idx", "integrations_ticket", 'UPPER("customer_name"::text)'),
    ("contact_customer_name_trgm_idx", "integrations_contact", 'UPPER("customer_name"::text)'),
    ("event_message_trgm_idx", "integrations_event", "UPPER(\"payload\" ->> 'message')"),
]


def create_indexes(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for name, table, expression in INDEXES:
            cursor.execute(
                "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = %s AND NOT i.indisvalid",
                [name],
            )
            if cursor.fetchone():
                cursor.execute(f'DROP INDEX CONCURRENTLY "{name}"')
            cursor.execute(
                f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON "{table}" '
                f"USING gin ({expression} gin_trgm_ops)"
            )


def drop_indexes(apps, schema_editor):
    # The extension stays: something else may use it by now.
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        for name, _table, _expression in INDEXES:
            cursor.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"')


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("integrations", "0012_partner_portal_links"),
    ]

    operations = [
        migrations.RunPython(create_indexes, drop_indexes, elidable=False),
    ]
