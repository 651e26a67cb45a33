"""The dashboard (the admin index, issue 14 item 9): deliveries over time by outcome, p50/p95
latency per partner over 24 h or 7 days, a partner filter scoped to the user's tenants, and
an empty state that says what to do first."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from integrations import selectors
from integrations.models import Delivery, DeliveryAttempt, Event, TenantMembership
from tests.factories import PartnerFactory, TicketFactory

# 12:20 in Jakarta (UTC+7): the 24 h window's bars are whole Jakarta hours from 12:00 the
# day before to 12:00 today.
NOW = datetime(2026, 3, 10, 5, 20, tzinfo=UTC)
JAKARTA = "Asia/Jakarta"
_sequence = itertools.count(1)


def _delivery(partner, status: str, created_at: datetime, durations=(), *, target=None):
    """A delivery of `partner` made at `created_at`, with one attempt per duration (None:
    an attempt that got no HTTP answer, 10 s)."""
    ticket = TicketFactory(tenant=partner.tenant)
    event = Event.objects.create(
        tenant=partner.tenant,
        kind="incoming",
        source="engine",
        ticket=ticket,
        ticket_number=ticket.ticket_number,
        sequence=next(_sequence),
        raw_body=b"{}",
        payload={},
        received_at=created_at,
    )
    delivery = Delivery.objects.create(
        event=event,
        tenant=partner.tenant,
        ticket=ticket,
        partner=partner if target is None else None,
        target=target or f"partner:{partner.pk}",
        endpoint="incoming",
        status=status,
    )
    Delivery.objects.filter(pk=delivery.pk).update(created_at=created_at)
    for number, duration in enumerate(durations, 1):
        DeliveryAttempt.objects.create(
            delivery=delivery,
            number=number,
            url="https://desk.example/in",
            response_status=None if duration is None else 200,
            duration_ms=10_000 if duration is None else duration,
        )
    return delivery


def _client(user) -> Client:
    client = Client(HTTP_ACCEPT_LANGUAGE="en")
    client.force_login(user)
    return client


def _member(tenant, role: str, name: str):
    user = get_user_model().objects.create_user(name, is_staff=True)
    TenantMembership.objects.create(user=user, tenant=tenant, role=role)
    return user


@pytest.fixture
def superuser(db):
    return get_user_model().objects.create_superuser("root", "root@example.com", "pw-unused")


@pytest.fixture
def desk(tenant):
    return PartnerFactory(tenant=tenant, name="Desk Jakarta")


@pytest.fixture
def rival(other_tenant):
    return PartnerFactory(tenant=other_tenant, name="Rival Desk")


# --- the selector -------------------------------------------------------------------------
def test_dashboard_stats_counts_deliveries_per_local_hour_and_outcome(desk):
    # Given deliveries at known times (UTC) and statuses
    _delivery(desk, "succeeded", NOW - timedelta(minutes=30))  # 11:50 WIB: bar 23
    _delivery(desk, "succeeded", NOW - timedelta(minutes=10))  # 12:10 WIB: bar 24 (now)
    _delivery(desk, "retrying", NOW - timedelta(minutes=15))  # 12:05 WIB: waiting
    _delivery(desk, "pending", NOW - timedelta(hours=2))  # 10:20 WIB: bar 22, waiting
    _delivery(desk, "dead", NOW - timedelta(hours=2))
    _delivery(desk, "cancelled", NOW - timedelta(hours=24, minutes=10))  # 12:10 WIB: bar 0
    _delivery(desk, "succeeded", NOW - timedelta(hours=24, minutes=21))  # 11:59 WIB: before

    # When the 24 h figures are read in Jakarta's zone
    with timezone.override(JAKARTA):
        stats = selectors.dashboard_stats(tenant_ids=[desk.tenant_id], now=NOW)

    # Then there are 25 hourly bars from 12:00 WIB yesterday, each delivery in its hour
    bars = stats["bars"]
    assert len(bars) == 25
    assert bars[0]["start"] == datetime(2026, 3, 9, 5, 0, tzinfo=UTC)
    assert str(bars[0]["start"].tzinfo) == JAKARTA and bars[0]["start"].hour == 12
    assert bars[-1]["start"].hour == 12 and bars[-1]["end"].hour == 13
    assert bars[0]["counts"] == {
        "succeeded": 0,
        "waiting": 0,
        "dead": 0,
        "cancelled": 1,
        "not_configured": 0,
    }
    assert bars[22]["counts"]["waiting"] == 1 and bars[22]["counts"]["dead"] == 1
    assert bars[23]["counts"]["succeeded"] == 1
    assert bars[24]["counts"] == {
        "succeeded": 1,
        "waiting": 1,
        "dead": 0,
        "cancelled": 0,
        "not_configured": 0,
    }
    assert sum(bar["total"] for bar in bars[1:22]) == 0
    # And the totals leave out the delivery of 11:59 WIB yesterday
    assert stats["totals"] == {
        "succeeded": 2,
        "waiting": 2,
        "dead": 1,
        "cancelled": 1,
        "not_configured": 0,
    }
    assert stats["total"] == 6 and stats["max_bar_total"] == 2
    # And the queue cards count now, whatever the window
    assert (stats["pending"], stats["dead"]) == (2, 1)


def test_dashboard_stats_week_has_six_hour_bars_on_local_quarters_of_the_day(desk):
    # Given a delivery 3 days ago at 17:59 WIB and one at 18:00 WIB
    evening = datetime(2026, 3, 7, 11, 0, tzinfo=UTC)  # 18:00 WIB
    _delivery(desk, "succeeded", evening - timedelta(minutes=1))
    _delivery(desk, "dead", evening)

    # When the 7 day figures are read in Jakarta's zone
    with timezone.override(JAKARTA):
        stats = selectors.dashboard_stats(tenant_ids=[desk.tenant_id], window="7d", now=NOW)

    # Then the bars start at 00, 06, 12 and 18 WIB, 29 of them from 12:00 WIB 7 days ago
    bars = stats["bars"]
    assert len(bars) == 29
    assert {bar["start"].hour for bar in bars} == {0, 6, 12, 18}
    assert bars[0]["start"] == datetime(2026, 3, 3, 12, 0, tzinfo=timezone.get_fixed_timezone(420))
    by_start = {bar["start"]: bar["counts"] for bar in bars}
    assert by_start[evening - timedelta(hours=6)]["succeeded"] == 1
    assert by_start[evening]["dead"] == 1
    assert stats["window"] == "7d"


def test_dashboard_stats_unknown_window_is_the_day(desk):
    with timezone.override(JAKARTA):
        stats = selectors.dashboard_stats(tenant_ids=[desk.tenant_id], window="1y", now=NOW)
    assert stats["window"] == "24h" and len(stats["bars"]) == 25


def test_bar_starts_follow_a_half_hour_zone_and_a_dst_change():
    # Given a zone 5:30 from UTC: bars start at :30 UTC, on whole local hours
    with timezone.override("Asia/Kolkata"):
        starts = selectors.dashboard_bar_starts(now=NOW, window="24h")
        assert all(timezone.localtime(s).minute == 0 for s in starts)
    assert {s.minute for s in starts} == {30} and len(starts) == 25

    # Given Berlin the week its clocks go back (25 Oct 2026, 03:00 CEST -> 02:00 CET)
    with timezone.override("Europe/Berlin"):
        starts = selectors.dashboard_bar_starts(
            now=datetime(2026, 10, 27, 12, 0, tzinfo=UTC), window="7d"
        )
        local_hours = [timezone.localtime(s).hour for s in starts]
    # Then every bar still starts at 00, 06, 12 or 18 local time, in order, none twice
    assert set(local_hours) == {0, 6, 12, 18}
    assert starts == sorted(set(starts))
    assert max(b - a for a, b in itertools.pairwise(starts)) == timedelta(hours=7)


def test_percentile_cont_interpolates_like_postgresql():
    assert selectors.percentile_cont([], 0.5) is None
    assert selectors.percentile_cont([40], 0.95) == 40
    assert selectors.percentile_cont([10, 20, 30, 40], 0.5) == 25
    assert selectors.percentile_cont(list(range(10, 101, 10)), 0.95) == pytest.approx(95.5)


@pytest.fixture
def latencies(desk):
    """Desk: 10 answered attempts (10..90 and 110 ms) over 3 deliveries, and timeouts; a
    second partner: 2 answered attempts of 300 and 500 ms."""
    _delivery(desk, "succeeded", NOW - timedelta(hours=1), [10, 20, 30, None])
    _delivery(desk, "dead", NOW - timedelta(hours=2), [40, 50, 60, None, None])
    _delivery(desk, "succeeded", NOW - timedelta(hours=3), [70, 80, 90, 110])
    # (3 days ago: in the week, not in the day)
    _delivery(desk, "succeeded", NOW - timedelta(days=3), [5000])
    slow = PartnerFactory(tenant=desk.tenant, name="Slow Desk")
    _delivery(slow, "succeeded", NOW - timedelta(hours=1), [300, 500])
    return desk, slow


def _by_name(stats) -> dict[str, dict]:
    return {row["name"]: row for row in stats["partners"]}


def test_dashboard_stats_latency_percentiles_per_partner_from_answered_attempts(latencies):
    desk, slow = latencies

    # When the 24 h figures are read (PostgreSQL's percentile_cont)
    with timezone.override(JAKARTA):
        rows = _by_name(selectors.dashboard_stats(tenant_ids=[desk.tenant_id], now=NOW))

    # Then the timeouts are left out, and p50/p95 are interpolated, rounded to whole ms
    assert rows["Desk Jakarta"]["responses"] == 10
    assert (rows["Desk Jakarta"]["p50_ms"], rows["Desk Jakarta"]["p95_ms"]) == (55, 101)
    assert (rows["Slow Desk"]["p50_ms"], rows["Slow Desk"]["p95_ms"]) == (400, 490)
    # And volume and success rate per partner
    assert (rows["Desk Jakarta"]["total"], rows["Desk Jakarta"]["dead"]) == (3, 1)
    assert rows["Desk Jakarta"]["rate"] == pytest.approx(2 / 3)

    # When the week is read, the attempt of 3 days ago counts too
    with timezone.override(JAKARTA):
        week = _by_name(
            selectors.dashboard_stats(tenant_ids=[desk.tenant_id], window="7d", now=NOW)
        )
    assert week["Desk Jakarta"]["responses"] == 11
    assert week["Desk Jakarta"]["p50_ms"] == 60
    assert week["Desk Jakarta"]["p95_ms"] == 2555  # 110 + 0.5 * (5000 - 110) at rank 9.5


def test_dashboard_stats_latency_without_percentile_cont_is_the_same(latencies, monkeypatch):
    # Given a database without percentile_cont (as SQLite, the embedded default)
    desk, _ = latencies
    monkeypatch.setattr(selectors, "connections", {"default": SimpleNamespace(vendor="sqlite")})

    # When the figures are read
    with timezone.override(JAKARTA):
        rows = _by_name(selectors.dashboard_stats(tenant_ids=[desk.tenant_id], now=NOW))

    # Then Python's percentiles are PostgreSQL's
    assert (rows["Desk Jakarta"]["p50_ms"], rows["Desk Jakarta"]["p95_ms"]) == (55, 101)
    assert (rows["Slow Desk"]["p50_ms"], rows["Slow Desk"]["p95_ms"]) == (400, 490)
    assert rows["Desk Jakarta"]["responses"] == 10


@pytest.mark.parametrize("vendor", ["postgresql", "sqlite"])
def test_dashboard_stats_latency_of_a_busy_partner_from_every_nth_delivery(
    latencies, monkeypatch, vendor
):
    # Given more deliveries in the window than the sample takes (3 of the desk's, 1 of the
    # slow desk's; the sample: 2 per partner)
    desk, _ = latencies
    monkeypatch.setattr(selectors, "LATENCY_SAMPLE_DELIVERIES", 2)
    if vendor == "sqlite":
        monkeypatch.setattr(selectors, "connections", {"default": SimpleNamespace(vendor=vendor)})

    # When the figures are read
    with timezone.override(JAKARTA):
        rows = _by_name(selectors.dashboard_stats(tenant_ids=[desk.tenant_id], now=NOW))

    # Then the desk's latency comes from its deliveries with an even id (every 2nd), the
    # slow desk's from all of its one
    sampled = sorted(
        DeliveryAttempt.objects.filter(
            delivery__partner=desk,
            delivery__created_at__gte=NOW - timedelta(hours=24),
            response_status__isnull=False,
            delivery_id__in=[
                d for d in Delivery.objects.values_list("pk", flat=True) if d % 2 == 0
            ],
        ).values_list("duration_ms", flat=True)
    )
    assert sampled and rows["Desk Jakarta"]["responses"] == len(sampled) < 10
    assert rows["Desk Jakarta"]["p50_ms"] == round(selectors.percentile_cont(sampled, 0.5))
    assert rows["Desk Jakarta"]["sampled"] and not rows["Slow Desk"]["sampled"]
    assert rows["Slow Desk"]["responses"] == 2
    # And the volume is still every delivery
    assert rows["Desk Jakarta"]["total"] == 3


def test_dashboard_stats_one_partner_and_never_another_tenants(latencies, rival):
    desk, slow = latencies
    _delivery(rival, "dead", NOW - timedelta(hours=1), [999])

    with timezone.override(JAKARTA):
        # When narrowed to one partner of the tenant: only its figures, queue included
        one = selectors.dashboard_stats(tenant_ids=[desk.tenant_id], partner_id=slow.pk, now=NOW)
        # When narrowed to another tenant's partner: nothing
        foreign = selectors.dashboard_stats(
            tenant_ids=[desk.tenant_id], partner_id=rival.pk, now=NOW
        )

    assert [row["name"] for row in one["partners"]] == ["Slow Desk"]
    assert one["total"] == 1 and one["dead"] == 0
    assert foreign["total"] == 0 and foreign["partners"] == [] and foreign["dead"] == 0


def test_dashboard_stats_superuser_sees_every_tenant(latencies, rival):
    desk, _ = latencies
    _delivery(rival, "dead", NOW - timedelta(hours=1), [999])
    with timezone.override(JAKARTA):
        stats = selectors.dashboard_stats(tenant_ids=None, now=NOW)
    assert {"Desk Jakarta", "Slow Desk", "Rival Desk"} <= set(_by_name(stats))
    assert stats["totals"]["dead"] == 2


def test_dashboard_stats_names_the_engine_relay_by_target(desk):
    _delivery(desk, "not_configured", NOW - timedelta(hours=1), target="engine")
    with timezone.override(JAKARTA):
        stats = selectors.dashboard_stats(tenant_ids=[desk.tenant_id], now=NOW)
    assert stats["totals"]["not_configured"] == 1
    assert [(r["target"], r["name"], r["partner_id"]) for r in stats["partners"]] == [
        ("engine", None, None)
    ]


# --- the page ------------------------------------------------------------------------------
def _chart(html: str) -> str:
    return html[html.index('<svg class="chart outcomes"') :].split("</svg>")[0]


@pytest.fixture
def busy(desk, rival):
    """Deliveries of the last hour for the tenant's desk and the other tenant's partner."""
    now = timezone.now()
    _delivery(desk, "succeeded", now - timedelta(minutes=20), [120, 80])
    _delivery(desk, "dead", now - timedelta(minutes=5), [None, 40])
    _delivery(desk, "succeeded", now - timedelta(days=2), [60])
    _delivery(rival, "retrying", now - timedelta(minutes=10), [700])
    return desk, rival


@pytest.mark.parametrize("role", ["superuser", "admin", "support"])
def test_dashboard_page_shows_chart_latency_and_queue(busy, superuser, role):
    # Given a superuser, or an admin or support user of the desk's tenant
    desk, rival = busy
    user = superuser if role == "superuser" else _member(desk.tenant, role, f"{role}-user")

    # When they open the dashboard
    response = _client(user).get(reverse("admin:index"))

    # Then it shows the queue, the chart with a title per bar, and the desk's latency
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="queue-pending"' in html and 'id="queue-dead"' in html
    assert re.search(r'<svg class="chart outcomes" role="img" aria-label="[^"]*Dead 1', html)
    assert _chart(html).count("</title>") == 25
    assert 'id="total-succeeded">1<' in html and 'id="total-dead">1<' in html
    row = html[html.index('id="partner-figures"') :]
    # (answered: 120, 80 and 40 ms; p50 80, p95 80 + 0.9 * 40)
    assert "Desk Jakarta" in row and "80 ms" in row and "116 ms" in row
    # And another tenant's partner only for the superuser
    assert ("Rival Desk" in html) is (role == "superuser")
    assert 'id="dashboard-empty"' not in html


def test_dashboard_partner_filter_narrows_to_one_partner(busy, tenant):
    desk, _ = busy
    other = PartnerFactory(tenant=tenant, name="Mail Desk")
    _delivery(other, "cancelled", timezone.now() - timedelta(minutes=1), [33])
    client = _client(_member(tenant, "support", "sari"))

    html = client.get(reverse("admin:index"), {"partner": other.pk}).content.decode()

    assert f'<option value="{other.pk}" selected>Mail Desk</option>' in html
    table = html[html.index('id="partner-figures"') :]
    assert "Mail Desk" in table and "Desk Jakarta" not in table
    assert 'id="total-cancelled">1<' in html and 'id="total-succeeded">0<' in html
    assert f"partner__id__exact={other.pk}" in html  # its deliveries and dead ones, listed


@pytest.mark.parametrize(
    "query",
    [
        {"partner": "rival"},  # another tenant's partner
        {"partner": "abc"},
        {"partner": "-1"},
        {"partner": "99999999999999999999999"},
        {"partner": "1\x00"},
        {"window": "forever"},
        {"window": "7d", "partner": ""},
    ],
)
def test_dashboard_odd_query_shows_every_partner_of_the_tenant(busy, tenant, query):
    # Given a tenant's admin and a query naming another tenant's partner or nonsense
    desk, rival = busy
    if query.get("partner") == "rival":
        query = {"partner": str(rival.pk)}
    client = _client(_member(tenant, "admin", "ayu"))

    # When they open the dashboard with it
    response = client.get(reverse("admin:index"), query)

    # Then the page is the tenant's, every partner, nothing of the other tenant
    assert response.status_code == 200
    html = response.content.decode()
    assert "Rival Desk" not in html
    links = re.findall(r'href="([^"]*)"', html)
    assert not [link for link in links if re.search(rf"partner(__id__exact)?={rival.pk}\b", link)]
    assert "selected>" not in html.split('id="dashboard-partner"')[1].split("</select>")[0]
    assert "Desk Jakarta" in html[html.index('id="partner-figures"') :]


def test_dashboard_window_switch_shows_the_week(busy, tenant):
    desk, _ = busy
    client = _client(_member(tenant, "support", "sari"))

    day = client.get(reverse("admin:index")).content.decode()
    week = client.get(reverse("admin:index"), {"window": "7d", "partner": desk.pk})

    assert "Deliveries per hour by outcome, last 24 hours" in day
    assert 'href="?window=7d"' in day and '<strong id="window-24h"' in day
    html = week.content.decode()
    assert "Deliveries per 6 hours by outcome, last 7 days" in html
    assert _chart(html).count("</title>") == 29
    assert 'id="total-succeeded">2<' in html  # the one of 2 days ago too
    assert f'href="?window=24h&amp;partner={desk.pk}"' in html  # the switch keeps the partner


# --- the empty state --------------------------------------------------------------------------
def test_empty_state_for_a_tenant_admin_without_partners_links_to_add_one(tenant):
    client = _client(_member(tenant, "admin", "ayu"))

    html = client.get(reverse("admin:index")).content.decode()

    assert 'id="dashboard-empty"' in html
    assert "No deliveries in the last 24 hours." in html
    step = html[html.index('id="step-partner"') :].split("</li>")[0]
    assert "Add a partner" in step
    assert f'href="{reverse("admin:integrations_partner_add")}"' in step
    assert 'id="dashboard-partner"' not in html  # no partners to choose from


def test_empty_state_for_support_asks_an_admin(tenant):
    client = _client(_member(tenant, "support", "sari"))

    html = client.get(reverse("admin:index")).content.decode()

    step = html[html.index('id="step-partner"') :].split("</li>")[0]
    assert "Ask an admin of your tenant to add one." in step
    assert reverse("admin:integrations_partner_add") not in html


def test_empty_state_for_a_superuser_without_tenants_starts_with_a_tenant(superuser):
    html = _client(superuser).get(reverse("admin:index")).content.decode()

    steps = re.findall(r'<li id="step-([\w-]+)"', html)
    assert steps == ["tenant", "partner"]
    assert f'href="{reverse("admin:integrations_tenant_add")}"' in html


def test_empty_state_with_a_partner_but_no_deliveries_points_to_its_test_event(desk, tenant):
    client = _client(_member(tenant, "admin", "ayu"))

    html = client.get(reverse("admin:index"), {"window": "7d"}).content.decode()

    assert "No deliveries in the last 7 days." in html
    assert re.findall(r'<li id="step-([\w-]+)"', html) == ["engine-key", "test-event"]
    step = html[html.index('id="step-test-event"') :].split("</li>")[0]
    assert "Send test event" in step
    assert f'href="{reverse("admin:integrations_partner_change", args=[desk.pk])}"' in step


def test_empty_state_after_a_quiet_day_offers_the_week(desk, tenant):
    _delivery(desk, "succeeded", timezone.now() - timedelta(days=3))
    client = _client(_member(tenant, "support", "sari"))

    html = client.get(reverse("admin:index")).content.decode()

    # (support may neither add keys nor send test events)
    assert re.findall(r'<li id="step-([\w-]+)"', html) == ["longer-window"]
    assert 'href="?window=7d"' in html[html.index('id="step-longer-window"') :]


def test_dashboard_in_indonesian_keeps_svg_numbers_plain(busy, tenant):
    # Given a support user whose browser asks for Bahasa Indonesia (decimal comma)
    client = Client(HTTP_ACCEPT_LANGUAGE="id")
    client.force_login(_member(tenant, "support", "sari"))

    # When they open the dashboard
    html = client.get(reverse("admin:index")).content.decode()

    # Then the chart's coordinates keep their decimal point, and the figures are there
    chart = _chart(html)
    coordinates = re.findall(r'\b(?:x|y|width|height)="([^"]*)"', chart)
    assert coordinates and all(re.fullmatch(r"-?\d+(\.\d+)?", c) for c in coordinates)
    assert "Gagal permanen 1" in chart  # Dead, translated, in the bar titles and the label
