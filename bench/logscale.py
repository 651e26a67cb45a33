"""Admin and API pages at log scale: server time with 1,000,000 events (issue 7).

    .venv/bin/python bench/logscale.py [--events 1000000] [--baseline-events 10000]
                                       [--runs 7] [--warmups 2] [--plans PATH]

Starts its own PostgreSQL and Redis (scripts/testenv.py via harness.Bench), migrates, creates
2 tenants with 3 partners each (one for every channel, one for `email`, one for `telegram`),
a superuser and a support user of the first tenant, then loads in bulk, with SQL
`INSERT ... SELECT generate_series(...)` (no Python per row):

  events      EVENTS over the last 40 days, time-ordered like a live table: 10 per ticket,
              100 tickets interleaved per 1,000 events; 57 % incoming, 30 % partner replies,
              9 % engine outgoing, 4 % commands; one ticket of the first tenant has 500 more
              (the "heavy" ticket, last 3 days) and the total stays EVENTS
  tickets     EVENTS/10, half per tenant; contacts: tickets/2; ticket and contact numbers are
              32 hex digits like the engine's
  deliveries  one per (event, target) as ingest makes them: every subscribed partner for
              engine events, the engine relay for partner events (not_configured in the second
              tenant, which has no engine) -> about 1.2 per event. Status mix: older than 28 h
              96.5 % succeeded, 2.8 % dead, 0.3 % cancelled, 0.4 % pending (a paused
              partner); younger: 90 % succeeded, 5 % retrying, 2 % dead, 2.5 % pending
  attempts    one per try (about 1.3 per delivery: 28 % of the succeeded ones needed 2-3
              tries, half the dead ones 8), with headers, status, body, duration

then VACUUM (ANALYZE) (what autovacuum would have done on a live table: statistics, visibility
map). Each page is then requested in process through django.test.Client (full middleware
stack, template rendering), logged in as the superuser and as the support user of the first
tenant (admin pages) or with a partner key of that tenant (API): WARMUPS unmeasured requests,
then RUNS timed with time.perf_counter; median and p90 (nearest rank) in ms; then one more
request inside CaptureQueriesContext for the query count and the slowest query, which is run
again as EXPLAIN (ANALYZE, BUFFERS) (plans written to --plans PATH, key facts in the JSON).

Last, retention: `integrations.services.operations.events_prune` with the default 30 days
(events older than that whose deliveries are all final); how many went and how long it took.

With --baseline-events (default 10000; 0 = none) the same script first runs itself at that
size in a child process (its own servers) and each page also reports ratio = median at EVENTS /
median at the baseline size: how the page scales with the log. The deep page is the same
relative depth at both sizes (p=2000 of 20,000 pages at 1M; --deep-page overrides).

Prints one JSON object. The team's goal (admin lists, ticket timeline and history API under
300 ms server time at 1,000,000 events) is reported per page as goal_300ms (median < 300 ms),
never asserted.
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import harness
from harness import Bench, log, percentile, rnd

FULL_SIZE = 1_000_000
HEAVY_EVENTS = 500
DAYS = 40
RETENTION_DAYS = 30
GOAL_MS = 300.0
# A page whose first request takes longer than this gets fewer runs (bounded total time).
SLOW_S = 10.0
SLOW_RUNS = 3
# Admin pages: (name, path or path template, query string); measured as both users.
ADMIN_PAGES = [
    ("event_list_plain", "/admin/integrations/event/", ""),
    ("event_list_filtered", "/admin/integrations/event/", "kind__exact=incoming&recent=24h"),
    ("event_list_search", "/admin/integrations/event/", "q={ticket}"),
    # Partial search (issue 14, item 3): 6 characters from the middle of a ticket number, a
    # customer's name in lower case, two words of a message (a common one and the ticket's
    # 8-digit prefix: about 10 events) and a word in about 90 % of them.
    ("event_list_search_ticket_part", "/admin/integrations/event/", "q={ticket_part}"),
    ("event_list_search_customer", "/admin/integrations/event/", "q={customer}"),
    ("event_list_search_words_rare", "/admin/integrations/event/", "q={words_rare}"),
    ("event_list_search_word_common", "/admin/integrations/event/", "q={word_common}"),
    ("event_list_deep", "/admin/integrations/event/", "p={deep_page}"),
    ("delivery_list_plain", "/admin/integrations/delivery/", ""),
    ("delivery_list_dead", "/admin/integrations/delivery/", "status__exact=dead"),
    ("delivery_list_search", "/admin/integrations/delivery/", "q={ticket}"),
    ("delivery_list_search_ticket_part", "/admin/integrations/delivery/", "q={ticket_part}"),
    ("delivery_list_search_customer", "/admin/integrations/delivery/", "q={customer}"),
    ("delivery_list_search_words_rare", "/admin/integrations/delivery/", "q={words_rare}"),
    ("delivery_list_search_word_common", "/admin/integrations/delivery/", "q={word_common}"),
    ("ticket_timeline", "/admin/integrations/ticket/{heavy_id}/timeline/", ""),
    ("dashboard", "/admin/", ""),
    ("dashboard_7d", "/admin/", "window=7d"),
]
# The goal covers these (admin lists, the timeline, the history API, the management API's
# deliveries list, issue #13).
GOAL_PAGES = ("event_list", "delivery_list", "ticket_timeline", "history", "manage_deliveries")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=FULL_SIZE, help="events to load")
    parser.add_argument(
        "--baseline-events",
        type=int,
        default=10_000,
        help="also run at this size first (child process) for ratios; 0: no",
    )
    parser.add_argument("--runs", type=int, default=7, help="timed requests per page")
    parser.add_argument("--warmups", type=int, default=2, help="unmeasured requests first")
    parser.add_argument(
        "--deep-page",
        type=int,
        default=0,
        help="admin event list page for the deep-page figure "
        "(default: 2000 at 1M events, the same relative depth otherwise)",
    )
    parser.add_argument(
        "--plans",
        type=Path,
        default=None,
        help="write the EXPLAIN (ANALYZE, BUFFERS) plans to this text file",
    )
    parser.add_argument("--no-prune", action="store_true", help="skip the retention figure")
    args = parser.parse_args()
    if not 2_000 <= args.events <= 20_000_000:
        parser.error("--events must be in [2000, 20000000]")
    if args.baseline_events and not 2_000 <= args.baseline_events <= 20_000_000:
        parser.error("--baseline-events must be 0 or in [2000, 20000000]")
    if not 1 <= args.runs <= 100 or not 0 <= args.warmups <= 20:
        parser.error("--runs in [1, 100], --warmups in [0, 20]")
    if args.deep_page < 0:
        parser.error("--deep-page must be positive")
    if not args.deep_page:
        args.deep_page = max(2, round(2000 * args.events / FULL_SIZE))
    return args


# --- data -------------------------------------------------------------------------------------


class Shape:
    """Row counts derived from --events (see the module docstring)."""

    def __init__(self, events: int) -> None:
        self.events = events
        self.heavy = min(HEAVY_EVENTS, events // 4)
        self.regular = events - self.heavy
        # Event g of the regular ones belongs to ticket (g // 1000) * 100 + g % 100 and is its
        # message number (g % 1000) // 100 + 1.
        full, rest = divmod(self.regular, 1000)
        self.tickets = full * 100 + min(rest, 100)  # regular tickets; the heavy one is extra
        self.heavy_index = self.tickets
        # Even, so ticket i and its contact i % contacts are in the same tenant (i % 2).
        self.contacts = max(2, self.tickets // 4 * 2)


def create_accounts() -> dict[str, Any]:
    """Tenants, partners (with keys), the superuser and a support user, via the services."""
    from django.contrib.auth import get_user_model

    from integrations.models import Partner, Tenant
    from integrations.services.accounts import tenant_create, user_create
    from integrations.services.management import management_token_create
    from integrations.services.partners import partner_create

    tenants = [
        tenant_create(owner="82ab0fd5cfd1e80d1ff97c0cfc9aa9e2", name="Tenant One"),
        tenant_create(owner="5f0c7b1e9a2d4c3b8e6f1a0d2c4b6e8f", name="Tenant Two"),
    ]
    # Only the first tenant has an engine: the second one's relay deliveries are not_configured.
    Tenant.objects.filter(pk=tenants[0].pk).update(
        engine_base_url="https://engine.example.com",
        engine_send_message_path="/send",
        engine_command_path="/command",
        engine_token="bench-token",
    )
    partners: list[dict[str, Any]] = []
    keys: dict[int, str] = {}
    for tenant in tenants:
        for name, host, channel in (
            ("Desk", "desk", None),
            ("Mail desk", "mail", "email"),
            ("Telegram bot", "tg", "telegram"),
        ):
            partner, raw_key, _secret = partner_create(
                tenant=tenant,
                name=f"{name} {tenant.name}",
                base_url=f"https://{host}{tenant.pk}.partner.example.com",
                incoming_message_path="/webhook/incoming",
                send_message_path="/webhook/send",
                channels=[channel] if channel else [],
            )
            partners.append(
                {
                    "tenant_id": tenant.pk,
                    "partner_id": partner.pk,
                    "channel": channel,
                    "desk": channel is None,
                    "base_url": partner.base_url,
                }
            )
            keys[partner.pk] = raw_key
    # The history and event pages are requested back to back: no 429 from the partner rate.
    Partner.objects.update(rate_limit="100000/second")
    superuser = get_user_model().objects.create_superuser(
        "bench-admin", "admin@example.com", "bench-admin-password"
    )
    support, _password = user_create(tenant=tenants[0], username="bench-support", role="support")
    desk = next(p for p in partners if p["desk"] and p["tenant_id"] == tenants[0].pk)
    _, manage_token = management_token_create(tenant=tenants[0], role="support", name="bench")
    return {
        "manage_token": manage_token,
        "desk_id": desk["partner_id"],
        "tenants": [t.pk for t in tenants],
        "partners": partners,
        "superuser": superuser,
        "support": support,
        "partner_key": keys[desk["partner_id"]],
    }


CHANNEL_SQL = """CASE WHEN mod({i}, 20) < 10 THEN 'whatsapp' WHEN mod({i}, 20) < 13 THEN 'telegram'
    WHEN mod({i}, 20) < 16 THEN 'email' WHEN mod({i}, 20) < 18 THEN 'webchat'
    ELSE 'instagram' END"""

CONTACTS_SQL = f"""
INSERT INTO integrations_contact
    (id, tenant_id, contact_id, customer_name, channel, account_id, first_seen, last_seen)
SELECT c + 1, CASE WHEN mod(c, 2) = 0 THEN %(t1)s ELSE %(t2)s END, md5('contact-' || c),
       'Customer ' || c, {CHANNEL_SQL.format(i="c")}, '6281' || lpad(c::text, 8, '0'),
       %(start)s::timestamptz + (c::float / %(contacts)s) * interval '1 day',
       %(now)s::timestamptz - (c::float / %(contacts)s) * interval '1 day'
FROM generate_series(0, %(contacts)s - 1) AS c
"""

# Ticket i's first message is regular event (i // 100) * 1000 + i % 100.
TICKETS_SQL = f"""
INSERT INTO integrations_ticket
    (id, tenant_id, ticket_number, contact_id, channel, account_id, customer_name,
     created_date, group_id, language, status, closed_by, closed_at, last_sequence,
     created_at, updated_at)
SELECT i + 1, CASE WHEN mod(i, 2) = 0 THEN %(t1)s ELSE %(t2)s END, md5('ticket-' || i),
       mod(i, %(contacts)s) + 1, {CHANNEL_SQL.format(i="i")},
       '6281' || lpad(mod(i, %(contacts)s)::text, 8, '0'), 'Customer ' || mod(i, %(contacts)s),
       created, '', 'id', CASE WHEN mod(i, 5) < 2 THEN 'closed' ELSE 'open' END,
       CASE WHEN mod(i, 5) < 2 THEN 'agent-' || mod(i, 7) ELSE '' END,
       CASE WHEN mod(i, 5) < 2 THEN created + interval '2 hours' END, 0, created, created
FROM (
    SELECT i, %(start)s::timestamptz + ((i / 100) * 1000 + mod(i, 100)) * %(step)s::interval
           AS created
    FROM generate_series(0, %(tickets)s - 1) AS i
) AS t
UNION ALL
SELECT %(heavy_index)s + 1, %(t1)s, md5('ticket-heavy'), 1, 'whatsapp', '628100000000',
       'Customer 0', %(heavy_start)s::timestamptz, '', 'id', 'open', '', NULL, 0,
       %(heavy_start)s::timestamptz, %(heavy_start)s::timestamptz
"""

# kind mix per message: the first of a ticket is incoming; then 52 % incoming, 33 % partner
# reply, 10 % engine outgoing, 5 % command.
EVENTS_SQL = """
WITH plan AS MATERIALIZED (
    SELECT (g / 1000) * 100 + mod(g, 100) AS ticket_index, mod(g, 1000) / 100 + 1 AS seq,
           %(start)s::timestamptz + g * %(step)s::interval AS received_at,
           random() AS r, random() AS r2
    FROM generate_series(0, %(regular)s - 1) AS g
    UNION ALL
    SELECT %(heavy_index)s, h + 1,
           %(heavy_start)s::timestamptz + h * %(heavy_step)s::interval, random(), random()
    FROM generate_series(0, %(heavy)s - 1) AS h
), typed AS (
    SELECT p.seq, p.received_at, p.r2, t.id AS ticket_id, t.tenant_id, t.ticket_number,
           t.channel, t.account_id, t.customer_name, c.contact_id, tn.owner,
           to_char(t.created_date AT TIME ZONE 'Asia/Jakarta', 'YYYY-MM-DD"T"HH24:MI:SS.MS')
               AS created_date,
           CASE WHEN p.seq = 1 OR p.r < 0.52 THEN 'incoming' WHEN p.r < 0.85 THEN 'reply'
                WHEN p.r < 0.95 THEN 'engine_out' ELSE 'command' END AS what
    FROM plan AS p
    JOIN integrations_ticket AS t ON t.id = p.ticket_index + 1
    JOIN integrations_tenant AS tn ON tn.id = t.tenant_id
    LEFT JOIN integrations_contact AS c ON c.id = t.contact_id
), shaped AS (
    SELECT ty.*,
        CASE WHEN ty.what = 'command' THEN jsonb_build_object(
                'ticketNumber', ty.ticket_number, 'channel', ty.channel, 'owner', ty.owner,
                'event', 'close')
             ELSE jsonb_build_object(
                'ticketNumber', ty.ticket_number, 'channel', ty.channel,
                'accountId', ty.account_id, 'contactId', ty.contact_id,
                'messageType', CASE WHEN ty.r2 < 0.1 THEN 'image' ELSE 'text' END,
                'message', CASE WHEN ty.r2 < 0.1 THEN 'foto-' || ty.seq || '.jpg'
                                ELSE 'Halo, ini pesan ' || ty.seq || ' tentang pesanan '
                                     || left(ty.ticket_number, 8) || ', mohon dibantu ya.'
                           END,
                'mediaLink', CASE WHEN ty.r2 < 0.1
                                  THEN 'https://cdn.example.com/media/'
                                       || md5(ty.ticket_number || ty.seq) || '.jpg'
                                  ELSE '' END,
                'customerName', ty.customer_name, 'createdDate', ty.created_date,
                'owner', ty.owner, 'groupId', '', 'language', 'id')
        END AS payload
    FROM typed AS ty
)
INSERT INTO integrations_event
    (id, tenant_id, kind, source, partner_id, ticket_id, ticket_number, sequence, raw_body,
     payload, idempotency_key, received_at)
SELECT gen_random_uuid(), s.tenant_id,
       CASE s.what WHEN 'incoming' THEN 'incoming' WHEN 'command' THEN 'command'
                   ELSE 'outgoing' END,
       CASE WHEN s.what IN ('incoming', 'engine_out') THEN 'engine' ELSE 'partner' END,
       CASE WHEN s.what IN ('reply', 'command') THEN d.partner_id END,
       s.ticket_id, s.ticket_number, s.seq, convert_to(s.payload::text, 'UTF8'), s.payload,
       CASE WHEN s.what IN ('reply', 'command') THEN md5(s.ticket_number || s.seq) ELSE '' END,
       s.received_at
FROM shaped AS s
JOIN bench_partner AS d ON d.tenant_id = s.tenant_id AND d.desk
ORDER BY s.received_at
"""

TICKET_SEQUENCE_SQL = """
UPDATE integrations_ticket AS t SET last_sequence = m.seq
FROM (SELECT ticket_id, max(sequence) AS seq FROM integrations_event GROUP BY ticket_id) AS m
WHERE m.ticket_id = t.id
"""

DELIVERIES_SQL = """
WITH targets AS (
    SELECT e.id AS event_id, e.tenant_id, e.ticket_id, e.received_at, p.partner_id,
           'partner:' || p.partner_id AS target,
           CASE WHEN e.kind = 'incoming' THEN 'incoming' ELSE 'send' END AS endpoint
    FROM integrations_event AS e
    JOIN integrations_ticket AS t ON t.id = e.ticket_id
    JOIN bench_partner AS p
      ON p.tenant_id = e.tenant_id AND (p.channel IS NULL OR p.channel = t.channel)
    WHERE e.source = 'engine'
    UNION ALL
    SELECT e.id, e.tenant_id, e.ticket_id, e.received_at, NULL, 'engine',
           CASE WHEN e.kind = 'command' THEN 'engine_command' ELSE 'engine_message' END
    FROM integrations_event AS e
    WHERE e.source = 'partner'
), rolled AS MATERIALIZED (
    SELECT tg.*, random() AS r, random() AS r2,
           tg.received_at > %(now)s::timestamptz - interval '28 hours' AS recent,
           tn.engine_base_url <> '' AS has_engine
    FROM targets AS tg JOIN integrations_tenant AS tn ON tn.id = tg.tenant_id
), statused AS (
    SELECT rl.*,
        CASE WHEN rl.partner_id IS NULL AND NOT rl.has_engine THEN 'not_configured'
             WHEN rl.recent THEN
                CASE WHEN rl.r < 0.90 THEN 'succeeded' WHEN rl.r < 0.95 THEN 'retrying'
                     WHEN rl.r < 0.97 THEN 'dead' WHEN rl.r < 0.995 THEN 'pending'
                     ELSE 'cancelled' END
             ELSE CASE WHEN rl.r < 0.965 THEN 'succeeded' WHEN rl.r < 0.993 THEN 'dead'
                       WHEN rl.r < 0.996 THEN 'cancelled' ELSE 'pending' END
        END AS status
    FROM rolled AS rl
), counted AS (
    SELECT st.*,
        CASE st.status
            WHEN 'succeeded' THEN CASE WHEN st.r2 < 0.28 THEN 2 + floor(st.r2 / 0.14)::int
                                       ELSE 1 END
            WHEN 'dead' THEN CASE WHEN st.r2 < 0.5 THEN 1 ELSE 8 END
            WHEN 'retrying' THEN 1 + floor(st.r2 * 5)::int
            WHEN 'pending' THEN CASE WHEN st.recent THEN 0 ELSE 3 END
            WHEN 'cancelled' THEN 2
            ELSE 0 END AS attempts
    FROM statused AS st
)
INSERT INTO integrations_delivery
    (event_id, tenant_id, ticket_id, partner_id, target, endpoint, status, attempts,
     retry_base, next_attempt_at, dispatched_at, lease_token, lease_expires_at,
     last_status_code, last_error, delivered_at, created_at, updated_at)
SELECT c.event_id, c.tenant_id, c.ticket_id, c.partner_id, c.target, c.endpoint, c.status,
       c.attempts, 0,
       CASE c.status WHEN 'retrying' THEN %(now)s::timestamptz + c.r2 * interval '1 hour'
                     WHEN 'pending' THEN c.received_at END,
       CASE WHEN c.status <> 'not_configured' THEN c.received_at END, NULL, NULL,
       CASE WHEN c.attempts = 0 THEN NULL WHEN c.status = 'succeeded' THEN 200
            WHEN c.status = 'dead' AND c.attempts = 1 THEN 404 ELSE 503 END,
       CASE WHEN c.attempts = 0 OR c.status = 'succeeded' THEN ''
            WHEN c.status = 'dead' AND c.attempts = 1 THEN 'HTTP 404' ELSE 'HTTP 503' END,
       CASE WHEN c.status = 'succeeded'
            THEN c.received_at + (c.attempts - 1) * interval '5 seconds'
                 + interval '180 milliseconds' END,
       c.received_at, c.received_at + c.attempts * interval '5 seconds' + interval '1 second'
FROM counted AS c
ORDER BY c.received_at, c.target
"""

ATTEMPTS_SQL = """
INSERT INTO integrations_deliveryattempt
    (delivery_id, number, url, request_headers, response_status, response_headers,
     response_body, duration_ms, outcome, error_class, error_message, created_at)
SELECT d.id, n, coalesce(u.url, ''),
       jsonb_build_object('Content-Type', 'application/json', 'User-Agent',
                          'IntegrationPortal/1.0', 'webhook-id', d.event_id::text,
                          'webhook-timestamp',
                          extract(epoch FROM d.created_at)::bigint::text),
       CASE WHEN is_last AND d.status = 'succeeded' THEN 200
            WHEN is_last AND d.status = 'dead' AND d.attempts = 1 THEN 404
            WHEN mod(n, 3) = 0 THEN NULL ELSE 503 END,
       CASE WHEN mod(n, 3) = 0 AND NOT (is_last AND d.status IN ('succeeded', 'dead')) THEN '{}'
            ELSE '{"Content-Type": "application/json", "Server": "nginx"}' END::jsonb,
       CASE WHEN is_last AND d.status = 'succeeded' THEN '{"status":"success"}'
            WHEN is_last AND d.status = 'dead' AND d.attempts = 1
            THEN '{"status":"error","message":"Not Found"}'
            WHEN mod(n, 3) = 0 THEN ''
            ELSE '<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>' END,
       CASE WHEN mod(n, 3) = 0 AND NOT is_last THEN 10000 ELSE 40 + mod(d.id, 160)::int END,
       CASE WHEN is_last AND d.status = 'succeeded' THEN 'success'
            WHEN is_last AND d.status = 'dead' AND d.attempts = 1 THEN 'dead' ELSE 'retry' END,
       CASE WHEN mod(n, 3) = 0 AND NOT is_last THEN 'ReadTimeout' ELSE '' END,
       CASE WHEN mod(n, 3) = 0 AND NOT is_last THEN 'no answer within the 10 s deadline'
            ELSE '' END,
       d.created_at + (n - 1) * interval '5 seconds'
FROM integrations_delivery AS d
LEFT JOIN bench_url AS u ON u.target = d.target AND u.endpoint = d.endpoint
CROSS JOIN LATERAL (
    SELECT n, n = d.attempts AS is_last FROM generate_series(1, d.attempts) AS n
) AS a
WHERE d.attempts > 0
ORDER BY d.id, n
"""

TABLES = [
    "integrations_contact",
    "integrations_ticket",
    "integrations_event",
    "integrations_delivery",
    "integrations_deliveryattempt",
]


def load_rows(shape: Shape, accounts: dict[str, Any]) -> dict[str, Any]:
    """Bulk-load contacts, tickets, events, deliveries, attempts; returns rows and seconds."""
    from datetime import UTC, datetime, timedelta

    from django.db import connection, transaction

    now = datetime.now(UTC).replace(microsecond=0)
    span = timedelta(days=DAYS)
    heavy_span = timedelta(days=3)
    t1, t2 = accounts["tenants"]
    params = {
        "t1": t1,
        "t2": t2,
        "now": now,
        "start": now - span,
        "step": span / max(shape.regular, 1),
        "regular": shape.regular,
        "tickets": shape.tickets,
        "contacts": shape.contacts,
        "heavy": shape.heavy,
        "heavy_index": shape.heavy_index,
        "heavy_start": now - heavy_span,
        "heavy_step": heavy_span / max(shape.heavy, 1),
    }
    figures: dict[str, Any] = {}
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMP TABLE bench_partner (tenant_id bigint, partner_id bigint,"
            " channel text, desk boolean)"
        )
        cursor.execute("CREATE TEMP TABLE bench_url (target text, endpoint text, url text)")
        for p in accounts["partners"]:
            cursor.execute(
                "INSERT INTO bench_partner VALUES (%s, %s, %s, %s)",
                [p["tenant_id"], p["partner_id"], p["channel"], p["desk"]],
            )
            for endpoint, path in (("incoming", "/webhook/incoming"), ("send", "/webhook/send")):
                cursor.execute(
                    "INSERT INTO bench_url VALUES (%s, %s, %s)",
                    [f"partner:{p['partner_id']}", endpoint, p["base_url"] + path],
                )
        cursor.execute(
            "INSERT INTO bench_url VALUES ('engine', 'engine_message', "
            "'https://engine.example.com/send'), ('engine', 'engine_command', "
            "'https://engine.example.com/command')"
        )
        cursor.execute("SELECT setseed(0.42)")
        steps = [
            ("contacts", CONTACTS_SQL),
            ("tickets", TICKETS_SQL),
            ("events", EVENTS_SQL),
            ("ticket_last_sequence", TICKET_SEQUENCE_SQL),
            ("deliveries", DELIVERIES_SQL),
            ("attempts", ATTEMPTS_SQL),
        ]
        total = time.perf_counter()
        for name, sql in steps:
            started = time.perf_counter()
            with transaction.atomic():
                cursor.execute("SET LOCAL work_mem = '256MB'")
                cursor.execute(sql, params)
                rows = cursor.rowcount
            seconds = time.perf_counter() - started
            figures[name] = {"rows": rows, "seconds": rnd(seconds)}
            log(f"  {name}: {rows:,} rows in {seconds:.1f}s")
        for table in ("integrations_contact", "integrations_ticket"):
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT max(id) FROM {table}))"
            )
        figures["insert_seconds"] = rnd(time.perf_counter() - total)
        started = time.perf_counter()
        cursor.execute("SET maintenance_work_mem = '1GB'")
        cursor.execute("VACUUM (ANALYZE)")
        cursor.execute("RESET maintenance_work_mem")
        figures["vacuum_analyze_seconds"] = rnd(time.perf_counter() - started)
        log(f"  VACUUM (ANALYZE) in {figures['vacuum_analyze_seconds']}s")
        figures["seconds"] = rnd(time.perf_counter() - total)
        sizes = {}
        for table in TABLES:
            cursor.execute("SELECT pg_total_relation_size(%s), pg_indexes_size(%s)", [table, table])
            total_bytes, index_bytes = cursor.fetchone()
            sizes[table.removeprefix("integrations_")] = {
                "total_mb": rnd(total_bytes / 2**20, 1),
                "indexes_mb": rnd(index_bytes / 2**20, 1),
            }
        figures["table_sizes"] = sizes
        cursor.execute("DROP TABLE bench_partner, bench_url")
    return figures


def data_facts(shape: Shape) -> dict[str, Any]:
    """What was loaded: counts per status, deliveries and attempts per event."""
    from django.db import connection

    with connection.cursor() as cursor:
        counts = {}
        for table in TABLES:
            cursor.execute(f"SELECT count(*) FROM {table}")  # noqa: S608
            counts[table.removeprefix("integrations_")] = cursor.fetchone()[0]
        cursor.execute(
            "SELECT status, count(*) FROM integrations_delivery GROUP BY status "
            "ORDER BY count(*) DESC"
        )
        statuses = dict(cursor.fetchall())
        cursor.execute(
            "SELECT kind, count(*) FROM integrations_event GROUP BY kind ORDER BY count(*) DESC"
        )
        kinds = dict(cursor.fetchall())
    return {
        "rows": counts,
        "deliveries_per_event": rnd(counts["delivery"] / max(counts["event"], 1), 3),
        "attempts_per_delivery": rnd(counts["deliveryattempt"] / max(counts["delivery"], 1), 3),
        "delivery_status": statuses,
        "event_kind": kinds,
        "days": DAYS,
        "heavy_ticket_events": shape.heavy,
    }


# --- pages ------------------------------------------------------------------------------------


def page_targets(shape: Shape, accounts: dict[str, Any], deep_page: int) -> list[dict[str, Any]]:
    """Every (page, caller) to measure, with its URL and request headers."""
    from integrations.models import Event, Ticket

    heavy = Ticket.objects.get(ticket_number__exact=_md5("ticket-heavy"))
    # A regular ticket of the first tenant from the middle of the time range.
    middle = (shape.tickets // 2) // 2 * 2
    ticket = _md5(f"ticket-{middle}")
    event = Event.objects.filter(ticket=heavy, kind="incoming").order_by("-sequence").first()
    # A customer of the first tenant (even contact index) with a number of several digits.
    customer = (shape.contacts // 3) // 2 * 2
    values = {
        "ticket": ticket,
        "heavy_id": heavy.pk,
        "deep_page": deep_page,
        "ticket_part": ticket[10:16],
        "customer": quote_plus(f"customer {customer}"),
        # Message text is 'Halo, ini pesan N tentang pesanan <ticket[:8]>, mohon dibantu ya.'
        # (10 % are 'foto-N.jpg' instead).
        "words_rare": quote_plus(f"Pesanan {ticket[:8].upper()}"),
        "word_common": "pesanan",
    }
    targets = []
    for name, path, query in ADMIN_PAGES:
        url = path.format(**values) + ("?" + query.format(**values) if query else "")
        for user in ("superuser", "support"):
            targets.append({"name": f"{name}/{user}", "url": url, "caller": user})
    deep_after = max(1, heavy.last_sequence * 4 // 5)
    api = f"/api/v1/tickets/{heavy.ticket_number}/messages"
    for name, url in (
        ("history_first", api),
        ("history_deep_cursor", f"{api}?limit=50&after={deep_after}"),
        ("event_status", f"/api/v1/events/{event.pk}"),
    ):
        targets.append({"name": f"{name}/partner", "url": url, "caller": "partner"})
    # The management API's deliveries list (issue #13: < 300 ms), filtered by partner and
    # status as support staff look for a partner's dead deliveries, and unfiltered.
    manage = "/api/v1/manage/deliveries"
    for name, url in (
        ("manage_deliveries_partner_dead", f"{manage}?partnerId={accounts['desk_id']}&status=dead"),
        (
            "manage_deliveries_partner_pending",
            f"{manage}?partnerId={accounts['desk_id']}&status=pending",
        ),
        ("manage_deliveries_plain", manage),
        ("manage_deliveries_ticket", f"{manage}?ticketNumber={heavy.ticket_number}"),
    ):
        targets.append({"name": f"{name}/token", "url": url, "caller": "manager"})
    # A Prometheus scrape (its gauges query the deliveries; issue #15's goal: < 100 ms); the
    # test client is a loopback client, so no token is needed.
    targets.append({"name": "metrics_scrape/loopback", "url": "/metrics", "caller": "superuser"})
    return targets


def _md5(text: str) -> str:
    import hashlib

    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def make_clients(accounts: dict[str, Any]) -> dict[str, tuple[Any, dict[str, str]]]:
    from django.test import Client

    backend = "django.contrib.auth.backends.ModelBackend"
    clients = {}
    for caller in ("superuser", "support"):
        client = Client(HTTP_HOST="localhost")
        client.force_login(accounts[caller], backend=backend)
        clients[caller] = (client, {})
    clients["partner"] = (
        Client(HTTP_HOST="localhost"),
        {"HTTP_AUTHORIZATION": f"Bearer {accounts['partner_key']}"},
    )
    clients["manager"] = (
        Client(HTTP_HOST="localhost"),
        {"HTTP_AUTHORIZATION": f"Bearer {accounts['manage_token']}"},
    )
    return clients


def measure_page(
    target: dict[str, Any], clients: dict[str, Any], args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Time one page; returns (figures, its slowest SELECT as captured)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client, headers = clients[target["caller"]]

    def get() -> tuple[float, int]:
        started = time.perf_counter()
        response = client.get(target["url"], **headers)
        return (time.perf_counter() - started) * 1000, response.status_code

    runs = args.runs
    first_ms, status = get()
    if first_ms > SLOW_S * 1000:
        runs = min(runs, SLOW_RUNS)
    else:
        for _ in range(max(args.warmups - 1, 0)):
            get()
    times = []
    for _ in range(runs):
        ms, status = get()
        times.append(ms)
    with CaptureQueriesContext(connection) as ctx:
        get()
    queries = [q for q in ctx.captured_queries if q["sql"]]
    selects = [q for q in queries if q["sql"].lstrip().upper().startswith(("SELECT", "WITH"))]
    slowest = max(selects, key=lambda q: float(q["time"]), default=None)
    median = statistics.median(times)
    figures = {
        "url": target["url"],
        "caller": target["caller"],
        "status": status,
        "median_ms": rnd(median, 1),
        "p90_ms": rnd(percentile(times, 90), 1),
        "runs": runs,
        "queries": len(queries),
        "sql_ms": rnd(sum(float(q["time"]) for q in queries) * 1000, 1),
        "slowest_query_ms": rnd(float(slowest["time"]) * 1000, 1) if slowest else None,
        # Only for a page that is served: a redirect is reported in summary.not_200.
        "goal_300ms": median < GOAL_MS if status == 200 else None,
        "goal_applies": target["name"].startswith(GOAL_PAGES),
    }
    log(
        f"  {target['name']}: {status}, median {median:.1f} ms, p90 "
        f"{figures['p90_ms']} ms, {len(queries)} queries, slowest "
        f"{figures['slowest_query_ms']} ms"
    )
    return figures, slowest


SCAN_RE = re.compile(
    r"(Seq Scan|Parallel Seq Scan) on (\w+)(?: \w+)?\s+\(cost=[^)]*\)"
    r"(?: \(actual time=[^)]*rows=(\d+) loops=(\d+)\))?"
)
EXEC_RE = re.compile(r"Execution Time: ([\d.]+) ms")


def explain(sql: str) -> tuple[str, dict[str, Any]]:
    """EXPLAIN (ANALYZE, BUFFERS) one captured SELECT; returns (plan text, key facts)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
        text = "\n".join(row[0] for row in cursor.fetchall())
    found = EXEC_RE.search(text)
    scans = sorted(
        {
            f"{m.group(2)} ({int(m.group(3)) * int(m.group(4)):,} rows)"
            if m.group(3)
            else m.group(2)
            for m in SCAN_RE.finditer(text)
        }
    )
    first = text.splitlines()[0].split("  (cost")[0].strip() if text else ""
    return text, {
        "execution_ms": float(found.group(1)) if found else None,
        "top_node": first,
        "seq_scans": scans,
    }


def measure_pages(
    targets: list[dict[str, Any]],
    clients: dict[str, Any],
    args: argparse.Namespace,
    plans: list[str],
) -> dict[str, Any]:
    pages = {}
    for target in targets:
        figures, slowest = measure_page(target, clients, args)
        if slowest is not None:
            text, facts = explain(slowest["sql"])
            figures["plan"] = facts
            figures["slowest_query"] = _shorten(slowest["sql"], 400)
            plans.append(
                f"=== {target['name']}  GET {target['url']}\n"
                f"median {figures['median_ms']} ms, {figures['queries']} queries, "
                f"slowest {figures['slowest_query_ms']} ms\n\n{slowest['sql']}\n\n"
                f"{text}\n"
            )
        pages[target["name"]] = figures
    return pages


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- retention --------------------------------------------------------------------------------


def measure_prune(plans: list[str]) -> dict[str, Any]:
    """events_prune with each tenant's default retention (30 days); figures before/after."""
    from datetime import timedelta

    from django.db import connection
    from django.db.models import Exists, OuterRef
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from integrations.models import Delivery, DeliveryAttempt, Event
    from integrations.services.operations import RETENTION_BATCH, events_prune

    now = timezone.now()
    cutoff = now - timedelta(days=RETENTION_DAYS)
    unfinished = Delivery.objects.filter(event=OuterRef("pk")).exclude(
        status__in=Delivery.FINAL_STATUSES
    )
    old = Event.objects.filter(received_at__lt=cutoff)
    before = {
        "events": Event.objects.count(),
        "deliveries": Delivery.objects.count(),
        "attempts": DeliveryAttempt.objects.count(),
        "events_older_than_retention": old.count(),
        "of_which_prunable": old.filter(~Exists(unfinished)).count(),
    }
    log(
        f"  prune: {before['events_older_than_retention']:,} events older than "
        f"{RETENTION_DAYS} days, {before['of_which_prunable']:,} with all deliveries final"
    )
    # The first batch of each tenant inside CaptureQueriesContext (for its plan), the rest
    # as the hourly task runs it; both timed.
    started = time.perf_counter()
    with CaptureQueriesContext(connection) as ctx:
        deleted = events_prune(now=now, max_batches=1)
    first_s = time.perf_counter() - started
    batch_queries = [q for q in ctx.captured_queries if q["sql"]]
    slowest = max(
        (q for q in batch_queries if q["sql"].lstrip().startswith("SELECT")),
        key=lambda q: float(q["time"]),
        default=None,
    )
    plan_facts = None
    if slowest is not None:
        text, plan_facts = explain(slowest["sql"])
        plans.append(
            f"=== events_prune: slowest SELECT of the first batch "
            f"({float(slowest['time']) * 1000:.1f} ms)\n\n{slowest['sql']}\n\n{text}\n"
        )
    started = time.perf_counter()
    deleted += events_prune(now=now)
    seconds = first_s + time.perf_counter() - started
    after = {
        "events": Event.objects.count(),
        "deliveries": Delivery.objects.count(),
        "attempts": DeliveryAttempt.objects.count(),
        "events_older_than_retention": old.count(),
    }
    log(f"  prune: deleted {deleted:,} events in {seconds:.1f}s")
    return {
        "retention_days": RETENTION_DAYS,
        "batch": RETENTION_BATCH,
        "deleted_events": deleted,
        "deleted_deliveries": before["deliveries"] - after["deliveries"],
        "deleted_attempts": before["attempts"] - after["attempts"],
        "seconds": rnd(seconds, 1),
        "events_per_s": rnd(deleted / seconds, 0) if seconds else None,
        "first_batch": {
            "queries": len(batch_queries),
            "ms": rnd(first_s * 1000, 1),
            "slowest_select_ms": rnd(float(slowest["time"]) * 1000, 1) if slowest else None,
            "plan": plan_facts,
        },
        "before": before,
        "after": after,
        # Left behind on purpose: old events with a delivery still waiting (paused partner).
        "kept_old_events": after["events_older_than_retention"],
    }


# --- baseline and main ------------------------------------------------------------------------


def run_baseline(args: argparse.Namespace) -> tuple[dict[str, Any] | None, str]:
    """This script at --baseline-events in a child process (its own servers)."""
    cmd = [
        sys.executable,
        "bench/logscale.py",
        "--events",
        str(args.baseline_events),
        "--baseline-events",
        "0",
        "--runs",
        str(args.runs),
        "--warmups",
        str(args.warmups),
        "--no-prune",
    ]
    if args.plans:
        cmd += [
            "--plans",
            str(args.plans.with_name(f"{args.plans.stem}-baseline{args.plans.suffix or '.txt'}")),
        ]
    line = harness.short_cmd(cmd)
    log(f"baseline: {line}")
    return harness.run_json(cmd)[0], line


def server_settings() -> dict[str, str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name "
            "IN ('shared_buffers', 'work_mem', 'effective_cache_size', "
            "'random_page_cost', 'max_parallel_workers_per_gather', 'jit')"
        )
        return dict(cursor.fetchall())


def summarize(pages: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any]:
    """Goal verdicts and the slowest pages, in a few lines."""
    base_pages = (baseline or {}).get("pages", {})
    for name, page in pages.items():
        base = base_pages.get(name)
        if base and base.get("status") == page["status"] == 200 and base["median_ms"]:
            page["ratio_vs_baseline"] = rnd(page["median_ms"] / base["median_ms"], 2)
            page["baseline_median_ms"] = base["median_ms"]
    goal = {
        n: p["goal_300ms"]
        for n, p in pages.items()
        if p["goal_applies"] and p["goal_300ms"] is not None
    }
    return {
        "goal": f"admin lists, ticket timeline and history API median < {GOAL_MS:.0f} ms "
        "server time (reported, not asserted)",
        "goal_met": all(goal.values()),
        "goal_missed_by": sorted(n for n, ok in goal.items() if not ok),
        "slowest_pages": [
            f"{n}: {p['median_ms']} ms"
            for n, p in sorted(pages.items(), key=lambda kv: -kv[1]["median_ms"])
        ][:8],
        "not_200": {n: p["status"] for n, p in pages.items() if p["status"] != 200},
    }


def main() -> None:
    args = parse_args()
    baseline, baseline_cmd = (None, None)
    if args.baseline_events and args.baseline_events != args.events:
        baseline, baseline_cmd = run_baseline(args)
    shape = Shape(args.events)
    plans: list[str] = []
    with Bench("logscale") as bench:
        env = bench.start_databases()
        started = time.perf_counter()
        bench.manage(env, "migrate", "--noinput")
        migrate_s = time.perf_counter() - started
        harness.django_setup(env)
        logging.getLogger("axes").setLevel(logging.WARNING)  # one line per force_login
        accounts = create_accounts()
        log(
            f"loading {args.events:,} events ({shape.tickets + 1:,} tickets, "
            f"{shape.contacts:,} contacts)"
        )
        load = load_rows(shape, accounts)
        load["migrate_seconds"] = rnd(migrate_s)
        facts = data_facts(shape)
        log(f"loaded in {load['seconds']}s: {facts['rows']}")

        clients = make_clients(accounts)
        targets = page_targets(shape, accounts, args.deep_page)
        log(f"pages ({args.warmups} warm-ups, {args.runs} runs each)")
        pages = measure_pages(targets, clients, args, plans)
        prune = None if args.no_prune else measure_prune(plans)
        settings = server_settings()

        from django.db import connection

        connection.close()
        result = {
            "benchmark": "logscale",
            "events": args.events,
            "summary": summarize(pages, baseline),
            "pages": pages,
            "load": {**load, "data": facts},
            "prune": prune,
            "baseline": None
            if baseline is None
            else {
                "events": baseline["events"],
                "command": baseline_cmd,
                "load_seconds": baseline["load"]["seconds"],
                "seconds": baseline["seconds"],
                "pages": {
                    n: {"median_ms": p["median_ms"], "status": p["status"]}
                    for n, p in baseline["pages"].items()
                },
            },
            "config": {
                "runs": args.runs,
                "warmups": args.warmups,
                "deep_page": args.deep_page,
                "timing": "django.test.Client in process, "
                "time.perf_counter around client.get (middleware, view, template)",
                "postgresql_settings": settings,
            },
            "versions": bench.versions,
            "machine": harness.machine_info(),
            "command": harness.short_cmd([sys.executable, "bench/logscale.py", *sys.argv[1:]]),
            "seconds": round(bench.elapsed(), 1),
        }
    if args.plans:
        args.plans.write_text("\n".join(plans))
        log(f"plans written to {args.plans}")
    else:
        for page, figures in pages.items():
            if "plan" in figures:
                log(f"  plan {page}: {figures['plan']}")
    harness.emit(result)


if __name__ == "__main__":
    main()
