"""The outbox queue's statements, each on its own (integrations/outbox/queue.py): claim,
top-up, hand-back, per-ticket order, the dispatcher's query."""

import uuid
from datetime import timedelta

import psycopg
import pytest
from django.db import ProgrammingError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from integrations.models import Delivery, Partner, SigningSecret, Tenant
from integrations.outbox import queue, sql
from integrations.outbox.targets import delivery_target
from tests.conftest import incoming_body, outgoing_body

IN = "/api/v1/engine/incoming"


def _ingest(engine_api, **overrides) -> Delivery:
    event_id = engine_api.post(IN, incoming_body(**overrides)).json()["eventId"]
    return Delivery.objects.get(event_id=event_id, partner__isnull=False)


def test_claim_takes_a_due_delivery_once_and_counts_the_try(engine_api, partner):
    # given a new delivery
    delivery = _ingest(engine_api)
    now, token = timezone.now(), uuid.uuid4()
    # when two callers claim it
    first = queue.deliveries_claim(delivery_ids=[delivery.pk], token=token, now=now)
    second = queue.deliveries_claim(delivery_ids=[delivery.pk], token=uuid.uuid4(), now=now)
    # then only the first gets it, leased, with the try counted
    assert [(d.pk, d.partner_id) for d in first] == [(delivery.pk, partner.pk)] and second == []
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.lease_token) == ("delivering", 1, token)
    assert delivery.lease_expires_at > now


def test_claim_takes_an_expired_lease_again(engine_api, partner):
    delivery = _ingest(engine_api)
    now = timezone.now()
    queue.deliveries_claim(delivery_ids=[delivery.pk], token=uuid.uuid4(), now=now)
    Delivery.objects.filter(pk=delivery.pk).update(lease_expires_at=now - timedelta(seconds=1))
    taken = queue.deliveries_claim(delivery_ids=[delivery.pk], token=uuid.uuid4(), now=now)
    assert [(d.pk, d.partner_id, d.attempts) for d in taken] == [(delivery.pk, partner.pk, 2)]
    assert Delivery.objects.get(pk=delivery.pk).attempts == 2


def test_claim_holds_back_a_ticket_behind_its_open_older_delivery(engine_api, partner):
    older, newer = _ingest(engine_api, message="one"), _ingest(engine_api, message="two")
    other_ticket = _ingest(engine_api, ticketNumber="other")
    ids = [newer.pk, other_ticket.pk]
    taken = queue.deliveries_claim(delivery_ids=ids, token=uuid.uuid4(), now=timezone.now())
    assert [d.pk for d in taken] == [other_ticket.pk]
    assert Delivery.objects.get(pk=older.pk).status == "pending"


def test_claim_skips_a_paused_partner(engine_api, partner):
    delivery = _ingest(engine_api)
    partner.state = "paused"
    partner.save()
    token = uuid.uuid4()
    assert queue.deliveries_claim(delivery_ids=[delivery.pk], token=token, now=timezone.now()) == []


def test_claim_more_tops_up_with_the_partners_oldest_new_deliveries(engine_api, partner):
    deliveries = [_ingest(engine_api, ticketNumber=f"t{i}") for i in range(4)]
    now, token = timezone.now(), uuid.uuid4()
    queue.deliveries_claim(delivery_ids=[deliveries[0].pk], token=token, now=now)
    more = queue.deliveries_claim_more(partner_id=partner.pk, limit=2, token=token, now=now)
    assert [d.pk for d in more] == [deliveries[1].pk, deliveries[2].pk]
    assert Delivery.objects.get(pk=deliveries[3].pk).status == "pending"


def test_hand_back_restores_status_and_try_under_our_lease_only(engine_api, partner):
    new, retried = _ingest(engine_api, ticketNumber="a"), _ingest(engine_api, ticketNumber="b")
    Delivery.objects.filter(pk=retried.pk).update(status="retrying", attempts=1)
    now, token = timezone.now(), uuid.uuid4()
    queue.deliveries_claim(delivery_ids=[new.pk, retried.pk], token=token, now=now)
    # a stranger's token changes nothing
    assert queue.deliveries_hand_back(delivery_ids=[new.pk], token=uuid.uuid4()) == 0
    assert queue.deliveries_hand_back(delivery_ids=[new.pk, retried.pk], token=token) == 2
    new.refresh_from_db()
    retried.refresh_from_db()
    assert (new.status, new.attempts, new.lease_token) == ("pending", 0, None)
    assert (retried.status, retried.attempts) == ("retrying", 1)


def test_queue_next_in_order_queues_the_tickets_next_delivery_on_commit(
    engine_api, partner, request, django_capture_on_commit_callbacks
):
    first, second = _ingest(engine_api, message="one"), _ingest(engine_api, message="two")
    _ingest(engine_api, message="three")
    Delivery.objects.filter(pk=first.pk).update(status="succeeded")
    request.node.queued_deliveries.clear()
    with django_capture_on_commit_callbacks(execute=True):
        queue.queue_next_in_order([first])
    assert request.node.queued_deliveries == [second.pk]
    assert Delivery.objects.get(pk=second.pk).dispatched_at is not None


def test_deliveries_due_skips_recently_queued_and_dispatch_marks_them(engine_api, partner):
    delivery = _ingest(engine_api)
    now = timezone.now()
    # just queued by ingest: not due for the dispatcher yet
    assert queue.deliveries_due(now=now) == []
    Delivery.objects.filter(pk=delivery.pk).update(dispatched_at=None)
    assert queue.deliveries_due(now=now) == [(delivery.pk, f"partner:{partner.pk}")]
    assert queue.deliveries_dispatch(now=now) == 1
    assert queue.deliveries_due(now=now) == []


def test_batches_by_target_keeps_targets_apart_and_caps_size():
    rows = [(5, "partner:1"), (1, "partner:1"), (2, "engine:7"), (3, "partner:1"), (4, "engine:8")]
    assert queue.batches_by_target(rows, 2) == [[1, 3], [5], [2], [4]]
    assert queue.batch_key("engine", 7) == "engine:7"
    assert queue.batch_key("partner:3", 7) == "partner:3"


def test_a_failing_engine_relay_gets_one_attempt_at_a_time(
    tenant, other_tenant, engine_api, partner_api
):
    for t in (tenant, other_tenant):
        t.engine_base_url, t.engine_send_message_path = "http://127.0.0.1:9", "/msg"
        t.save()

    def reply(ticket: str) -> Delivery:
        engine_api.post(IN, incoming_body(ticketNumber=ticket))
        body = outgoing_body(ticketNumber=ticket, owner=tenant.owner)
        response = partner_api.post("/api/v1/outgoing", body)
        return Delivery.objects.get(event_id=response.json()["eventId"])

    # given tenant A's engine relay with one delivery retrying and one in flight
    retrying, in_flight, waiting = reply("r1"), reply("r2"), reply("r3")
    now = timezone.now()
    Delivery.objects.filter(pk=retrying.pk).update(
        status="retrying", attempts=1, next_attempt_at=now + timedelta(hours=1)
    )
    assert queue.deliveries_claim(delivery_ids=[in_flight.pk], token=uuid.uuid4(), now=now)
    # when another of its relay deliveries is claimed: it waits for the one in flight
    assert queue.deliveries_claim(delivery_ids=[waiting.pk], token=uuid.uuid4(), now=now) == []
    # and another tenant's relay is not held back by it (a row of tenant B's, made by hand)
    other = Delivery.objects.create(
        event=Delivery.objects.get(pk=waiting.pk).event,
        tenant=other_tenant,
        ticket=Delivery.objects.get(pk=waiting.pk).ticket,
        partner=None,
        target="engine-b",
        endpoint="engine_message",
        next_attempt_at=now,
    )
    assert queue.deliveries_claim(delivery_ids=[other.pk], token=uuid.uuid4(), now=now) != []
    # and once the engine has no retrying delivery left, the relay is not limited
    Delivery.objects.filter(pk=retrying.pk).update(status="succeeded")
    assert queue.deliveries_claim(delivery_ids=[waiting.pk], token=uuid.uuid4(), now=now) != []


@pytest.mark.parametrize(
    "plan",
    [
        {},
        # the plan that once took 3 rows for a limit of 2 in a full run: the candidates
        # rescanned per row of a nested loop, each rescan skipping the rows the UPDATE had
        # already changed and locking the next ones
        {
            "enable_hashjoin": "off",
            "enable_mergejoin": "off",
            "enable_material": "off",
            "enable_hashagg": "off",
            "enable_sort": "off",
        },
    ],
)
def test_claim_more_never_takes_more_than_its_limit_whatever_the_plan(engine_api, partner, plan):
    from django.db import connection, transaction

    deliveries = [_ingest(engine_api, ticketNumber=f"t{i}") for i in range(6)]
    now, token = timezone.now(), uuid.uuid4()
    with transaction.atomic(), connection.cursor() as cursor:
        for name, value in plan.items():
            cursor.execute(f"SET LOCAL {name} = {value}")
        more = queue.deliveries_claim_more(partner_id=partner.pk, limit=2, token=token, now=now)
    assert [d.pk for d in more] == [deliveries[0].pk, deliveries[1].pk]
    assert Delivery.objects.filter(status="delivering").count() == 2


def _add_history(cursor, delivery: Delivery, *, status: str, count: int = 3000) -> None:
    """Give `delivery`'s ticket `count` more events, each with a delivery to the same target
    in `status` (due when it was): a long history or backlog, inserted in bulk."""
    cursor.execute(
        """
        WITH events AS (
            INSERT INTO integrations_event
                (id, tenant_id, kind, source, ticket_id, ticket_number, sequence, raw_body,
                 payload, idempotency_key, received_at)
            SELECT gen_random_uuid(), e.tenant_id, e.kind, e.source, e.ticket_id,
                   e.ticket_number, 100 + n, e.raw_body, e.payload, '', e.received_at
            FROM integrations_event e, generate_series(1, %s) AS n
            WHERE e.id = %s
            RETURNING id)
        INSERT INTO integrations_delivery
            (event_id, tenant_id, ticket_id, partner_id, target, endpoint, status, attempts,
             retry_base, next_attempt_at, last_error, created_at, updated_at)
        SELECT events.id, d.tenant_id, d.ticket_id, d.partner_id, d.target, d.endpoint,
               %s, 0, 0, d.next_attempt_at, '', d.created_at, d.updated_at
        FROM events, integrations_delivery d WHERE d.id = %s
        """,
        [count, str(delivery.event_id), status, delivery.pk],
    )


def test_the_order_check_reads_the_partial_index_of_open_deliveries(engine_api, partner):
    """The claim's per-ticket order check and the next-in-order lookup use the index that
    holds only open deliveries, not the ticket's whole history (issue #16): given a ticket
    with 3,000 delivered messages and two open ones, and its statistics, their plans read
    delivery_open_order_idx."""
    from django.db import connection, transaction

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL plans")
    older, newer = _ingest(engine_api, message="one"), _ingest(engine_api, message="two")
    final = ", ".join(f"'{s}'" for s in Delivery.FINAL_STATUSES)
    probes = [
        # the claim's NOT EXISTS, as queue._claimable_sql writes it
        f"""SELECT 1 FROM integrations_delivery d WHERE d.id = {newer.pk} AND NOT EXISTS (
              SELECT 1 FROM integrations_delivery o
              WHERE o.target = d.target AND o.ticket_id = d.ticket_id AND o.id < d.id
                AND o.status NOT IN ({final}))""",
        # queue_next_in_order's lookup
        f"""SELECT MIN(n.id) FROM integrations_delivery n
            JOIN (VALUES ('partner:{partner.pk}', {older.ticket_id}, {older.pk})) v
              ON n.target = v.column1 AND n.ticket_id = v.column2 AND n.id > v.column3
            WHERE n.status NOT IN ({final}) GROUP BY n.target, n.ticket_id""",
    ]
    with transaction.atomic(), connection.cursor() as cursor:
        _add_history(cursor, older, status="succeeded")
        cursor.execute("ANALYZE integrations_delivery")
        for sql in probes:
            cursor.execute(f"EXPLAIN {sql}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "delivery_open_order_idx" in plan, plan


# The pump's claim as PostgreSQL shows it among a session's prepared statements.
CLAIM_DUE = "%WITH picked AS MATERIALIZED%c.partner_id = $1%"


def _prepared_runs(statement: str) -> list[int]:
    """How many times each of this session's prepared statements LIKE `statement` ran."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT generic_plans + custom_plans FROM pg_prepared_statements"
            " WHERE statement LIKE %s",
            [statement],
        )
        return [runs for (runs,) in cursor.fetchall()]


def test_the_hot_path_sql_runs_as_prepared_statements_on_postgresql(engine_api, partner):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL prepared statements")
    # given a delivery and a claim run a few times on one connection (queries not logged)
    _ingest(engine_api)
    Partner.objects.filter(pk=partner.pk).update(state="paused")  # nothing is taken
    for _ in range(3):
        queue.deliveries_claim_due(
            key=f"partner:{partner.pk}", limit=20, token=uuid.uuid4(), now=timezone.now()
        )
    # then PostgreSQL holds the claim as a prepared statement of this session, run 3 times
    assert _prepared_runs(CLAIM_DUE) == [3]


def test_hot_path_placeholders_become_postgresqls_own():
    native = sql.native_placeholders
    assert native("a = %s AND b IN (%s, %s)") == ("a = $1 AND b IN ($2, $3)", 3)
    # %% is a percent sign, as psycopg reads it; so %%s is the text "%s", not a placeholder
    assert native("x LIKE 'a%%' AND y = %s") == ("x LIKE 'a%' AND y = $1", 1)
    assert native("SELECT '%%s', %s") == ("SELECT '%s', $1", 1)
    for other in ("a = %(name)s", "a = %b", "a = %t", "SELECT '100%' WHERE a = %s"):
        with pytest.raises(psycopg.ProgrammingError, match="placeholders only"):
            native(other)


def test_a_long_statement_with_many_parameters_runs_on_the_prepared_cursor(db):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL prepared statements")
    # given a statement past psycopg's own cache of conversions: more than 50 parameters,
    # longer than 4 KiB (a batch's record), with a percent sign in it
    values = list(range(60))
    query = "SELECT " + ", ".join(["%s::int"] * 60) + ", '5%%'" + " " * 4096
    sql.native_placeholders.cache_clear()
    # when it runs twice on the hot path's cursor
    for _ in range(2):
        with sql.sql_cursor() as cursor:
            assert type(cursor.cursor).__name__ == "_PreparedCursor"
            cursor.execute(query, values)
            # then every value and the percent sign come back as sent
            assert cursor.fetchone() == (*values, "5%")
    # and its placeholders were converted once
    info = sql.native_placeholders.cache_info()
    assert (info.misses, info.hits) == (1, 1)


def test_the_prepared_cursor_converts_placeholders_for_executemany_too(db):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL prepared statements")
    with sql.sql_cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE t_many (n int)")
        # (sent as written, "%s" would be a syntax error on the server)
        cursor.executemany("INSERT INTO t_many (n) VALUES (%s)", [[1], [2], [3]])
        cursor.execute("SELECT sum(n) FROM t_many")
        assert cursor.fetchone() == (6,)


def test_the_prepared_cursor_refuses_a_parameter_count_that_does_not_match(db):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL prepared statements")
    with sql.sql_cursor() as cursor, pytest.raises(ProgrammingError, match="2 placeholders"):
        cursor.execute("SELECT %s::int, %s::int", [1, 2, 3])
    # (refused before it was sent: the connection is usable as it was)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)


def test_the_orms_repeated_statements_are_prepared_too_on_postgresql(engine_api, partner):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL prepared statements")
    # given an ORM query run seven times on one connection (server-side binding; psycopg
    # prepares a statement on its sixth run: prepare_threshold 5)
    assert connection.settings_dict["OPTIONS"].get("server_side_binding") is True
    for _ in range(7):
        list(Partner.objects.filter(pk=partner.pk, name="not-this-one"))
    # then PostgreSQL holds it as a prepared statement of this session
    assert _prepared_runs('%FROM "integrations_partner"%"integrations_partner"."name" = $1%') in (
        [1],
        [2],
    )


def test_behind_pgbouncer_and_while_queries_are_logged_the_ordinary_cursor_is_used(db, settings):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL prepared statements")
    with sql.sql_cursor() as cursor:
        assert type(cursor.cursor).__name__ == "_PreparedCursor"
    connection.settings_dict["DISABLE_SERVER_SIDE_CURSORS"] = True
    try:
        with sql.sql_cursor() as cursor:
            assert type(cursor.cursor).__name__ != "_PreparedCursor"
    finally:
        connection.settings_dict["DISABLE_SERVER_SIDE_CURSORS"] = False
    with CaptureQueriesContext(connection), sql.sql_cursor() as cursor:
        assert type(cursor.cursor).__name__ != "_PreparedCursor"


def test_with_traces_on_the_hot_path_sql_keeps_its_spans(db, monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL prepared statements")
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    monkeypatch.setattr(PsycopgInstrumentor, "is_instrumented_by_opentelemetry", True)
    with sql.sql_cursor() as cursor:  # the instrumented connection's own cursor
        assert type(cursor.cursor).__name__ != "_PreparedCursor"


def _plan_nodes(plan: dict):
    yield plan
    for child in plan.get("Plans", []):
        yield from _plan_nodes(child)


def test_a_pumps_claim_reads_no_more_candidates_than_its_limit(engine_api, partner):
    """The pump's claim costs the same however deep the backlog (issue #16): given a partner
    with 3,000 new deliveries, and statistics, a claim of 5 reads 5 candidates off an index
    in id order. (On churned tables a claim that also took retries, two statuses with no id
    order in the index, read and sorted every waiting row: 585 for a batch of 20.)"""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL plans")
    first = _ingest(engine_api, message="zero")
    with connection.cursor() as cursor:
        _add_history(cursor, first, status="pending")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE integrations_delivery")
    with CaptureQueriesContext(connection) as queries:
        queue.deliveries_claim_due(
            key=f"partner:{partner.pk}", limit=5, token=uuid.uuid4(), now=timezone.now()
        )
    claim = queries.captured_queries[-1]["sql"]
    Delivery.objects.filter(status="delivering").update(
        status="pending", lease_token=None, lease_expires_at=None, attempts=0
    )
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + claim)
        (plan,) = cursor.fetchone()[0]
    # then the candidates come off an index in id order: 5 rows read, not the backlog
    (read,) = [node for node in _plan_nodes(plan["Plan"]) if node.get("Alias") == "c"]
    assert "Index Name" in read, read
    assert read["Actual Rows"] + read.get("Rows Removed by Filter", 0) <= 5, read


def test_db_value_adapts_as_the_orm_does_and_skips_only_what_needs_nothing(tenant):
    from integrations.models import Event, Tenant

    now = timezone.now()
    # plain values of plain fields, and (PostgreSQL) aware datetimes and UUIDs, go as they are
    assert queue.db_value(Delivery, "target", "partner:1") == "partner:1"
    assert queue.db_value(Delivery, "partner", 7) == 7
    event_id = uuid.uuid4()
    for model, field, value in ((Delivery, "updated_at", now), (Event, "id", event_id)):
        expected = model._meta.get_field(field).get_db_prep_save(value, connection)
        assert queue.db_value(model, field, value) == expected
    # a field that adapts its own way (an encrypted secret) still does
    stored = queue.db_value(Tenant, "engine_token", "s3cret")
    assert stored != "s3cret" and stored.startswith("enc1:")  # encrypted (Fernet: random IV)
    # a JSON value is wrapped for the driver as the ORM wraps it
    wrapped = queue.db_value(Event, "payload", {"a": 1})
    assert type(wrapped) is type(Event._meta.get_field("payload").get_db_prep_save({}, connection))
    # an integer keeps the ORM's typed wrapper (psycopg's Int4 and Int8 on PostgreSQL), and a
    # value of another plain type than the field's is converted by the field, as before
    for name, value in (("attempts", 2), ("partner", 7), ("attempts", True)):
        expected = Delivery._meta.get_field(name).get_db_prep_save(value, connection)
        adapted = queue.db_value(Delivery, name, value)
        assert adapted == expected and type(adapted) is type(expected)
    assert queue.db_value(Delivery, "target", 7) == "7"
    assert queue.db_values(Delivery, {"target": "x", "status": "pending"}) == ["x", "pending"]


def _claim_taking_nothing(engine_api, partner):
    """A pump's claim over one delivery of a paused partner (it takes nothing), on
    PostgreSQL."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL prepared statements")
    _ingest(engine_api)
    Partner.objects.filter(pk=partner.pk).update(state="paused")
    key = f"partner:{partner.pk}"
    return lambda: queue.deliveries_claim_due(
        key=key, limit=20, token=uuid.uuid4(), now=timezone.now()
    )


def _delivered_history(rows: int) -> None:
    """`rows` delivered copies of the deliveries there are (each its own target), the table
    then analyzed: a history for the planner to weigh."""
    fields = [f.column for f in Delivery._meta.concrete_fields if not f.primary_key]
    copies = {"target": "c.target || '#' || g", "status": "'succeeded'"}
    copied = ", ".join(copies.get(f, f"c.{f}") for f in fields)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Delivery._meta.db_table} ({', '.join(fields)})"  # noqa: S608
            f" SELECT {copied}"
            f" FROM {Delivery._meta.db_table} c, generate_series(1, %s) g",
            [rows],
        )
        cursor.execute(f"ANALYZE {Delivery._meta.db_table}")


def test_a_claim_reads_the_rows_it_takes_not_the_whole_table(engine_api, partner):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL table statistics")
    # given a new delivery among 500 delivered ones
    delivery = _ingest(engine_api)
    _delivered_history(500)

    def rows_read_in_sequence() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT coalesce(sum(seq_tup_read), 0) FROM pg_stat_xact_user_tables"
                " WHERE relname = %s",
                [Delivery._meta.db_table],
            )
            return int(cursor.fetchone()[0])

    before = rows_read_in_sequence()
    # when a pump claims it
    taken, _ = queue.deliveries_claim_due(
        key=f"partner:{partner.pk}", limit=20, token=uuid.uuid4(), now=timezone.now()
    )
    # then it is taken, and the statement did not read the table row by row to find it (its
    # UPDATE, by id = ANY(array), went by a sequential scan while the table was small enough
    # for the planner to think that cheaper: 3,000 rows read a claim in the latency bench)
    assert [d.pk for d in taken] == [delivery.pk]
    assert 0 <= rows_read_in_sequence() - before < 100  # (500 read by the old statement)


@pytest.mark.django_db(transaction=True)
def test_a_pumps_claim_settles_on_one_plan_instead_of_planning_every_run(engine_api, partner):
    # (PostgreSQL plans a prepared statement's first five runs for their values, then keeps a
    # generic plan unless it looks dearer: with its constants as parameters, LIMIT $n and
    # status = $n, the claim's generic plan looked dearer, and each run was planned again,
    # 0.9 ms of PostgreSQL per event in the latency bench)
    claim = _claim_taking_nothing(engine_api, partner)
    # given a history of 5,000 delivered messages (their statistics known to the planner)
    _delivered_history(5000)
    # when a pump claims eight times on one connection
    for _ in range(8):
        claim()
    # then the runs after the fifth use the plan made once
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
            " WHERE statement LIKE %s",
            [CLAIM_DUE],
        )
        ((generic, custom),) = cursor.fetchall()
    # (PostgreSQL plans the first five runs for their values whatever the statement)
    assert generic + custom == 8 and generic > 0


@pytest.mark.django_db(transaction=True)
def test_prepared_statements_are_planned_again_after_a_while(engine_api, partner, monkeypatch):
    claim = _claim_taking_nothing(engine_api, partner)
    for _ in range(3):
        claim()
    assert _prepared_runs(CLAIM_DUE) == [3]
    # once REPLAN_AFTER has gone by, the next hot statement drops them all and starts over
    monkeypatch.setattr(sql, "REPLAN_AFTER", 0.0)
    claim()
    assert _prepared_runs(CLAIM_DUE) == [1]


@pytest.mark.django_db(transaction=True)
def test_planning_again_keeps_psycopg_and_the_server_agreed(engine_api, partner, monkeypatch):
    # (psycopg names the statements it prepared: had the server dropped one behind its
    # back, the next run would fail with "prepared statement ... does not exist")
    claim = _claim_taking_nothing(engine_api, partner)
    # given a rollback (psycopg forgets its names) and a replan due at every statement
    with pytest.raises(RuntimeError), transaction.atomic():
        claim()
        raise RuntimeError
    monkeypatch.setattr(sql, "REPLAN_AFTER", 0.0)
    for _ in range(4):
        claim()  # then every run drops and prepares again, without an error
    monkeypatch.setattr(sql, "REPLAN_AFTER", 3600.0)
    for _ in range(3):
        claim()
    assert _prepared_runs(CLAIM_DUE) == [4]  # the last replan's, run 1 + 3 times


def test_a_claimed_delivery_comes_with_its_partners_live_secrets(engine_api, partner):
    # given a rotation: the old secret expired, two live ones (the newest first)
    delivery = _ingest(engine_api)
    now = timezone.now()
    SigningSecret.objects.filter(partner=partner).update(expires_at=now - timedelta(seconds=1))
    older = SigningSecret.objects.create(partner=partner, secret="whsec_b2xkZXI=")
    newer = SigningSecret.objects.create(partner=partner, secret="whsec_bmV3ZXI=")
    SigningSecret.objects.filter(pk=older.pk).update(expires_at=now + timedelta(hours=1))
    (claimed,) = queue.deliveries_claim(delivery_ids=[delivery.pk], token=uuid.uuid4(), now=now)
    # then the claim read them (decrypted) on PostgreSQL; SQLite leaves them to the target
    live = (newer.secret, older.secret)
    assert claimed.partner is not None
    if connection.vendor == "postgresql":
        assert claimed.partner.secrets == live
    else:
        assert claimed.partner.secrets is None
    assert delivery_target(claimed, now).secrets == live
    # and the tenant's secrets come decrypted too
    assert claimed.tenant.engine_signing_secret == Tenant.objects.get().engine_signing_secret
