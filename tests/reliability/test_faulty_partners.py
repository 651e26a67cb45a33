"""Faulty partners: outage windows, 429/503 with Retry-After, a non-success JSON status, 410,
redirects, timeouts, slow-dripping bodies, connection resets and a 50 MB answer, all at once
in one tenant, while another tenant's healthy partner is measured.

Promises (SPEC §5): each answer gets its outcome (success / retry / dead at once; 410 also
pauses the partner and its later deliveries wait); no attempt outlives its deadline; at most
64 KiB of an answer is read and 8 KiB stored, so worker memory stays flat; a faulty partner
does not stop another tenant's deliveries.
"""

from __future__ import annotations

import statistics
import time
from datetime import timedelta

import pytest

from integrations.models import ApiKey, Delivery, DeliveryAttempt, Partner
from integrations.outbox.targets import delivery_client
from integrations.services.accounts import api_key_create
from integrations.services.partners import partner_create
from tests.conftest import Caller, incoming_body
from tests.factories import TenantFactory
from tests.reliability.conftest import sizes
from tests.support.partner import (
    always,
    drip,
    fail_during,
    first_try_per_id,
    hang,
    huge,
    ok,
    raw,
    reset,
)
from tests.support.processes import pool_children, rss_kib, wait_for, wait_ready

IN = "/api/v1/engine/incoming"
DEADLINE = 2.0  # the faulty partners' response deadline (seconds)
CONCURRENCY = 4
# name -> (behaviour factory, retry schedule override ("" = the suite's 0,1,1,1,1,1,1,1))
FAULTS = {
    "outage_500": (lambda url: fail_during(3.0), ""),
    "throttle_429": (lambda url: first_try_per_id(429, retry_after_s=3), ""),
    "unavailable_503_date": (
        lambda url: first_try_per_id(503, retry_after_s=3, http_date=True),
        "",
    ),
    "soft_error_json": (lambda url: first_try_per_id(200, b'{"status":"error"}'), ""),
    "gone_410": (lambda url: always(410), ""),
    "redirect_301": (lambda url: always(301, {"Location": f"{url}/redirected"}), ""),
    "redirect_302": (lambda url: always(302, {"Location": f"{url}/redirected"}), ""),
    "redirect_307": (lambda url: always(307, {"Location": f"{url}/redirected"}), ""),
    "redirect_308": (lambda url: always(308, {"Location": f"{url}/redirected"}), ""),
    "hang": (lambda url: hang(), "0,1,1"),
    "drip": (lambda url: drip(interval=0.5), "0,1,1"),
    "reset": (lambda url: reset(), "0,1,1"),
    "huge_50mb": (lambda url: huge(50 * 1024 * 1024), ""),
    "nul_bytes_2xx": (
        lambda url: raw(
            b"HTTP/1.1 200 OK\r\nX-Junk: a\x00b\r\nContent-Length: 22\r\n"
            b'Connection: close\r\n\r\n{"status":"success"}\x00\x00'
        ),
        "",
    ),
    "garbage_status_line": (lambda url: raw(b"\x00\x01\x02 not http\x00\r\n\r\n"), "0,1,1"),
}


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _post_healthy(api: Caller, owner: str, count: int, pace: float, tag: str) -> dict[str, float]:
    """Post `count` events for the healthy tenant; returns message -> time posted."""
    posted: dict[str, float] = {}
    for i in range(count):
        text = f"{tag}-{i}"
        posted[text] = time.time()
        body = incoming_body(owner=owner, ticketNumber=f"H{i % 10}", message=text)
        assert api.post(IN, body).status_code == 202
        time.sleep(pace)
    return posted


def _latencies(server, posted: dict[str, float]) -> list[float]:
    """Seconds from posting to the healthy partner receiving it, per message."""
    first_seen: dict[str, float] = {}
    for receipt in server.on("/healthy"):
        first_seen.setdefault(receipt.json["message"], receipt.at)
    return [first_seen[m] - t for m, t in posted.items() if m in first_seen]


def _rss(workers_proc) -> dict[int, int]:
    return {pid: rss_kib(pid) for pid in pool_children(workers_proc)}


def _settled(paused_partner: Partner) -> bool:
    """Every delivery final, except the paused partner's, which wait (never dropped)."""
    return not (
        Delivery.objects.exclude(status__in=Delivery.FINAL_STATUSES)
        .exclude(partner=paused_partner, status=Delivery.Status.PENDING)
        .exists()
    )


@pytest.mark.parametrize(
    "size",
    sizes(
        ci={"faulty_events": 1, "healthy": 20, "pace": 0.2},
        full={"faulty_events": 20, "healthy": 300, "pace": 0.2},
        scaled=("faulty_events", "healthy"),
    ),
)
def test_faulty_partners_each_get_their_outcome_and_do_not_hold_up_another_tenant(
    size, workers, engine_api, tenant, fault_server, figures
):
    # given one tenant with a partner per fault, and another tenant with a healthy partner
    url = fault_server.url
    partners: dict[str, Partner] = {}
    for name, (factory, schedule) in FAULTS.items():
        fault_server.routes[f"/{name}"] = factory(url)
        partner, _, _ = partner_create(
            tenant=tenant,
            name=name,
            base_url=url,
            incoming_message_path=f"/{name}",
            send_message_path="/send",
        )
        Partner.objects.filter(pk=partner.pk).update(
            timeout=DEADLINE, connect_timeout=1.0, retry_schedule=schedule
        )
        partners[name] = partner
    fault_server.routes["/redirected"] = ok()
    fault_server.routes["/healthy"] = ok()
    healthy_tenant = TenantFactory(owner="healthy-tenant", name="Healthy")
    partner_create(
        tenant=healthy_tenant,
        name="healthy",
        base_url=url,
        incoming_message_path="/healthy",
        send_message_path="/send",
    )
    _, raw = api_key_create(kind=ApiKey.Kind.ENGINE, tenants=[healthy_tenant])
    healthy_api = Caller(engine_api.client, raw)
    worker = workers.start_worker("w", CONCURRENCY)
    workers.start_beat()
    wait_ready(workers, "w")
    # and a baseline: the healthy partner's latency with no faulty partner busy
    baseline_posted = _post_healthy(healthy_api, healthy_tenant.owner, 20, 0.1, "base")
    wait_for(
        lambda: len(_latencies(fault_server, baseline_posted)) == 20,
        60,
        "the baseline deliveries",
        workers.logs,
    )
    baseline = _latencies(fault_server, baseline_posted)
    rss_before = _rss(worker)
    # when the faulty tenant gets events (each goes to every faulty partner) while the
    # healthy tenant keeps posting
    started = time.monotonic()
    for i in range(size.faulty_events):
        body = incoming_body(ticketNumber=f"F{i}", message=f"fault-{i}")
        assert engine_api.post(IN, body).status_code == 202
    loaded_posted = _post_healthy(
        healthy_api, healthy_tenant.owner, size.healthy, size.pace, "load"
    )
    wait_for(
        lambda: _settled(partners["gone_410"]),
        120 if not size.full else 900,
        "every delivery to settle",
        workers.logs,
    )
    elapsed = time.monotonic() - started
    loaded = _latencies(fault_server, loaded_posted)
    rss_after = _rss(worker)
    # then each fault is handled as SPEC §5 says
    outcomes = {}
    for name, partner in partners.items():
        deliveries = list(Delivery.objects.filter(partner=partner).order_by("id"))
        attempts = list(
            DeliveryAttempt.objects.filter(delivery__partner=partner).order_by("created_at")
        )
        outcomes[name] = {
            "statuses": sorted({d.status for d in deliveries}),
            "attempts": len(attempts),
            "error_classes": sorted({a.error_class for a in attempts if a.error_class}),
            "max_attempt_ms": max((a.duration_ms for a in attempts), default=0),
        }
        check = CHECKS[name]
        check(name, partner, deliveries, attempts, fault_server)
    # and the healthy partner got everything, without waiting on the faulty ones
    assert len(loaded) == size.healthy
    growth = {pid: rss_after.get(pid, 0) - kib for pid, kib in rss_before.items()}
    figures.record(
        size,
        "faulty_partners",
        faulty_events=size.faulty_events,
        faulty_partners=len(FAULTS),
        worker_concurrency=CONCURRENCY,
        faulty_deadline_s=DEADLINE,
        seconds=round(elapsed, 1),
        healthy_p50_baseline_s=round(statistics.median(baseline), 3),
        healthy_p95_baseline_s=round(_percentile(baseline, 0.95), 3),
        healthy_p50_under_faults_s=round(statistics.median(loaded), 3),
        healthy_p95_under_faults_s=round(_percentile(loaded, 0.95), 3),
        healthy_max_under_faults_s=round(max(loaded), 3),
        healthy_p50_ratio=round(statistics.median(loaded) / statistics.median(baseline), 2),
        worker_rss_before_kib=rss_before,
        worker_rss_after_kib=rss_after,
        worker_rss_max_growth_kib=max(growth.values(), default=0),
        outcomes=outcomes,
    )
    assert statistics.median(loaded) < 3.0
    # worker memory stays flat: a buffered 50 MB answer would show here
    assert rss_before and max(growth.values()) < 30 * 1024


# --- per-fault expectations -----------------------------------------------------------------


def _all(deliveries, status: str) -> None:
    assert deliveries and {d.status for d in deliveries} == {status}, [
        (d.status, d.last_error) for d in deliveries
    ]


def _gap(attempts, delivery) -> timedelta:
    mine = [a for a in attempts if a.delivery_id == delivery.pk]
    return mine[1].created_at - mine[0].created_at - timedelta(milliseconds=mine[0].duration_ms)


def check_outage(name, partner, deliveries, attempts, server):
    # 500s during the window are retried; the first answer after it succeeds
    _all(deliveries, "succeeded")
    assert any(a.response_status == 500 and a.outcome == "retry" for a in attempts)
    for d in deliveries:
        mine = [a for a in attempts if a.delivery_id == d.pk]
        assert [a.response_status for a in mine][-1] == 200
        assert {a.response_status for a in mine[:-1]} <= {500}


def check_retry_after(name, partner, deliveries, attempts, server):
    # the Retry-After (3 s) replaces the shorter scheduled delay (1 s ± 20 %)
    _all(deliveries, "succeeded")
    status = 429 if "429" in name else 503
    for d in deliveries:
        mine = [a for a in attempts if a.delivery_id == d.pk]
        assert [a.response_status for a in mine] == [status, 200]
        assert _gap(attempts, d) >= timedelta(seconds=1.9)


def check_soft_error(name, partner, deliveries, attempts, server):
    # a 2xx whose JSON status is not "success" is retried
    _all(deliveries, "succeeded")
    for d in deliveries:
        mine = [a for a in attempts if a.delivery_id == d.pk]
        assert [(a.response_status, a.outcome) for a in mine] == [(200, "retry"), (200, "success")]


def check_gone(name, partner, deliveries, attempts, server):
    # 410: dead at once and the partner paused; deliveries not yet tried wait, never dropped
    partner.refresh_from_db()
    assert partner.state == Partner.State.PAUSED and "410" in partner.state_reason
    dead = [d for d in deliveries if d.status == "dead"]
    waiting = [d for d in deliveries if d.status == "pending"]
    assert dead and len(dead) + len(waiting) == len(deliveries)
    assert all(d.attempts == 1 and d.last_status_code == 410 for d in dead)
    assert all(d.attempts == 0 for d in waiting)
    assert len(server.on(f"/{name}")) == len(dead)


def check_redirect(name, partner, deliveries, attempts, server):
    # a redirect is dead at once and never followed
    _all(deliveries, "dead")
    code = int(name.rsplit("_", 1)[1])
    assert all(d.attempts == 1 and d.last_status_code == code for d in deliveries)
    assert server.on("/redirected") == []


def check_no_answer(name, partner, deliveries, attempts, server):
    # no (complete) answer: retried until the partner's 3-try schedule is used up, and no
    # attempt lasts much longer than the 2 s deadline
    _all(deliveries, "dead")
    assert all(d.attempts == 3 for d in deliveries)
    assert all(a.outcome == "retry" for a in attempts)
    expected = {
        "hang": {"deadline_exceeded", "timeout"},
        "drip": {"deadline_exceeded"},
        "reset": {"connection_reset", "network_error", "protocol_error"},
    }[name]
    assert {a.error_class for a in attempts} <= expected, [a.error_message for a in attempts]
    assert max(a.duration_ms for a in attempts) < (DEADLINE + 1.5) * 1000


def check_huge(name, partner, deliveries, attempts, server):
    # a 50 MB 2xx answer: success after reading at most 64 KiB; 8 KiB stored
    _all(deliveries, "succeeded")
    assert all(len(a.response_body) <= 8192 for a in attempts)
    assert max(a.duration_ms for a in attempts) < DEADLINE * 1000


def check_nul_bytes(name, partner, deliveries, attempts, server):
    if delivery_client() == "curl":
        # libcurl refuses an answer with a NUL byte in a header (no option allows it): a
        # malformed answer, tried again and recorded with libcurl's words each time
        assert deliveries and {d.status for d in deliveries} <= {"retrying", "dead"}
        assert attempts and all(
            a.outcome == "retry" and a.error_class == "protocol_error" for a in attempts
        )
        assert all("Nul byte in header" in a.error_message for a in attempts)
        return
    # requests: an answer with NUL bytes (body, header) is recorded, with U+FFFD in their place
    _all(deliveries, "succeeded")
    assert all(d.attempts == 1 for d in deliveries)
    assert all("\x00" not in a.response_body and "\ufffd" in a.response_body for a in attempts)


def check_garbage(name, partner, deliveries, attempts, server):
    # not HTTP at all: retried, then dead, each attempt recorded with its error
    _all(deliveries, "dead")
    assert all(d.attempts == 3 for d in deliveries) and len(attempts) == 3 * len(deliveries)
    assert all(a.outcome == "retry" and a.error_message for a in attempts)


CHECKS = {
    "outage_500": check_outage,
    "throttle_429": check_retry_after,
    "unavailable_503_date": check_retry_after,
    "soft_error_json": check_soft_error,
    "gone_410": check_gone,
    "redirect_301": check_redirect,
    "redirect_302": check_redirect,
    "redirect_307": check_redirect,
    "redirect_308": check_redirect,
    "hang": check_no_answer,
    "drip": check_no_answer,
    "reset": check_no_answer,
    "huge_50mb": check_huge,
    "nul_bytes_2xx": check_nul_bytes,
    "garbage_status_line": check_garbage,
}
