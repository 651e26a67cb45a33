"""The operator assets under deploy/ (the Grafana dashboard, the Prometheus rules and config)
query only what the portal exposes (SPEC §10): every metric name they use is in a real
/metrics scrape, every label value they filter on is one the code produces, every alert says
how bad it is, what happened and where its runbook is (a heading of docs/OPERATIONS.md)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from integrations.models import Delivery, Event, Partner
from integrations.services.heartbeats import SCHEDULER, WORKER_PREFIX
from integrations.webhooks import Outcome
from tests.conftest import incoming_body
from tests.support.outbox import send_one

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "deploy/grafana/portal-dashboard.json"
ALERTS = REPO / "deploy/prometheus/alerts.yml"
PROMETHEUS = REPO / "deploy/prometheus/prometheus.yml"
OPERATIONS = REPO / "docs/OPERATIONS.md"


# Each labelled family and the values the code gives each label (integrations/instruments.py,
# integrations/health.py): the enums, not copies of them.
LABEL_VALUES: dict[str, dict[str, set[str]]] = {
    "portal_events_accepted": {"kind": set(Event.Kind.values), "source": set(Event.Source.values)},
    "portal_delivery_attempts": {"outcome": {o.value for o in Outcome}},
    "portal_deliveries": {"status": set(Delivery.Status.values)},
    "portal_partners": {"state": set(Partner.State.values)},
    "portal_heartbeat_age_seconds": {"component": {SCHEDULER, WORKER_PREFIX.rstrip(":")}},
}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series

# What the exposition appends to a family's name in its samples, by family type.
SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
# PromQL functions and the family types they make sense on.
FUNCTION_TYPES = {
    "rate": {"counter", "histogram"},
    "irate": {"counter", "histogram"},
    "increase": {"counter", "histogram"},
    "delta": {"gauge"},
    "idelta": {"gauge"},
    "deriv": {"gauge"},
}

METRIC = re.compile(r"\b(portal_[A-Za-z0-9_:]+)")
SELECTOR = re.compile(r"\b(portal_[A-Za-z0-9_:]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
FUNCTION_CALL = re.compile(r"\b(" + "|".join(FUNCTION_TYPES) + r")\s*\(\s*(portal_[A-Za-z0-9_:]+)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


# --- reading the assets ----------------------------------------------------------------------
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def alert_rules(document: dict | None = None) -> list[dict]:
    document = document if document is not None else yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _dashboard_queries(node) -> Iterator[str]:
    """Every PromQL string in a dashboard: panel targets' `expr`, variables' queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition", "query") and isinstance(value, str):
                yield value
            else:
                yield from _dashboard_queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from _dashboard_queries(item)


def expressions(board: dict | None = None, rules: list[dict] | None = None) -> dict[str, str]:
    """{where: PromQL} for every query of the dashboard and every rule."""
    board = board if board is not None else dashboard()
    rules = rules if rules is not None else alert_rules()
    found = {f"dashboard query {i}": q for i, q in enumerate(_dashboard_queries(board))}
    found |= {f"alert {rule['alert']}": rule["expr"] for rule in rules}
    return found


def family_of(sample: str, types: dict[str, str]) -> str:
    """The family a queried sample name belongs to, as the exposition names it: a counter's
    samples add `_total`, a histogram's `_bucket`, `_sum` and `_count`; a gauge's add nothing."""
    for family_type, suffixes in SAMPLE_SUFFIXES.items():
        for suffix in suffixes:
            base = sample.removesuffix(suffix)
            if base != sample and types.get(base, family_type) == family_type:
                return base
    return sample


# --- the checks (each returns its problems, so a deliberate mistake can be shown to fail) --
def unexposed_metrics(exprs: dict[str, str], scrape: str) -> list[str]:
    """Metric names the expressions use that the scrape does not have, or that name a family
    with the wrong suffix (a counter without `_total`, a gauge with `_bucket`, ...)."""
    families = list(text_string_to_metric_families(scrape))
    types = {family.name: family.type for family in families}
    samples = {sample.name for family in families for sample in family.samples}
    problems = []
    for where, expr in exprs.items():
        for name in sorted(set(METRIC.findall(expr))):
            family = family_of(name, types)
            if name in samples:
                continue
            if family in types:
                suffixes = SAMPLE_SUFFIXES.get(types[family], ("",))
                shown = ", ".join(family + s for s in suffixes)
                problems.append(f"{where}: {name} is a {types[family]}; query {shown}")
            else:
                problems.append(f"{where}: {name} is not in /metrics")
    return problems


def misapplied_functions(exprs: dict[str, str], scrape: str) -> list[str]:
    """rate()/increase() over something not a counter, delta() over something not a gauge."""
    types = {family.name: family.type for family in text_string_to_metric_families(scrape)}
    problems = []
    for where, expr in exprs.items():
        for function, name in FUNCTION_CALL.findall(expr):
            family = family_of(name, types)
            if family in types and types[family] not in FUNCTION_TYPES[function]:
                problems.append(f"{where}: {function}() over the {types[family]} {name}")
    return problems


def unknown_label_values(exprs: dict[str, str], scrape: str | None = None) -> list[str]:
    """Label matchers on portal_* series whose label the family does not have, or whose value
    the code never gives it; with a scrape, also gauge series the scrape lacks (the gauges
    report every value they can take, zeros included). Grafana variables ($job) are skipped."""
    families = list(text_string_to_metric_families(scrape)) if scrape else []
    types = {family.name: family.type for family in families}
    series = {
        (family.name, label, value)
        for family in families
        for sample in family.samples
        for label, value in sample.labels.items()
    }
    problems = []
    for where, expr in exprs.items():
        for name, inside in SELECTOR.findall(expr):
            family = family_of(name, types)
            labels = LABEL_VALUES.get(family, {})
            for label, op, value in MATCHER.findall(inside):
                if label in TARGET_LABELS or "$" in value:
                    continue
                if label == "le" and name.endswith("_bucket"):
                    continue
                if label not in labels:
                    problems.append(f"{where}: {name} has no label {label!r}")
                    continue
                values = value.split("|") if op in ("=~", "!~") else [value]
                for one in values:
                    if one not in labels[label]:
                        problems.append(
                            f"{where}: {name}{{{label}{op}{value!r}}}: {one!r} is none of "
                            f"{sorted(labels[label])}"
                        )
                    elif types.get(family) == "gauge" and (family, label, one) not in series:
                        problems.append(f"{where}: /metrics has no {family}{{{label}={one!r}}}")
        known = {label for labels in LABEL_VALUES.values() for label in labels}
        for grouping in GROUPING.findall(expr):
            for label in filter(None, (part.strip() for part in grouping.split(","))):
                if label not in known | TARGET_LABELS | {"le"}:
                    problems.append(f"{where}: no portal metric has the label {label!r}")
    return problems


def headings_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown text (fenced code skipped)."""
    anchors, fenced = set(), False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            text = re.sub(r"[^\w\- ]", "", m.group(1).lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


# --- a scrape with the labelled series present -------------------------------------------
@pytest.fixture
def scrape(engine_api, partner, partner_server_factory) -> str:
    """/metrics of this test instance after one event was accepted and one attempt recorded
    (a labelled counter has no series before its first count)."""
    partner.base_url = partner_server_factory().url
    partner.save()
    event_id = engine_api.post("/api/v1/engine/incoming", incoming_body()).json()["eventId"]
    delivery = Delivery.objects.get(event_id=event_id, partner=partner)
    assert send_one(delivery_id=delivery.pk) == "succeeded"
    response = Client().get("/metrics")
    assert response.status_code == 200, response.content
    return response.content.decode()


# --- the tests ---------------------------------------------------------------------------------
def test_every_metric_the_assets_query_is_exposed(scrape):
    assert unexposed_metrics(expressions(), scrape) == []


def test_rate_and_delta_are_taken_over_the_right_kind_of_metric(scrape):
    assert misapplied_functions(expressions(), scrape) == []


def test_every_label_value_the_assets_filter_on_is_one_the_code_produces(scrape):
    assert unknown_label_values(expressions(), scrape) == []


def test_the_checks_catch_a_broken_name_label_or_function(scrape):
    # given a dashboard and rules each with one deliberate mistake
    board = {
        "panels": [
            {"targets": [{"expr": "sum(rate(portal_events_acepted_total[5m]))"}]},
            {"targets": [{"expr": "rate(portal_delivery_attempts[5m])"}]},
            {"targets": [{"expr": "rate(portal_deliveries[5m])"}]},
        ]
    }
    rules = [
        {"alert": "A", "expr": 'portal_partners{state="suspended"} > 0'},
        {"alert": "B", "expr": 'portal_deliveries{status="succeeded"} > 0'},
        {"alert": "C", "expr": 'portal_partners{status="paused"} > 0'},
    ]
    exprs = expressions(board, rules)
    # when they are checked, then each mistake is reported
    unexposed = unexposed_metrics(exprs, scrape)
    assert any("portal_events_acepted_total is not in /metrics" in p for p in unexposed)
    assert any("portal_delivery_attempts is a counter" in p for p in unexposed)
    assert misapplied_functions(exprs, scrape) == [
        "dashboard query 2: rate() over the gauge portal_deliveries"
    ]
    labels = unknown_label_values(exprs, scrape)
    assert any("'suspended' is none of" in p for p in labels)
    assert any("/metrics has no portal_deliveries{status='succeeded'}" in p for p in labels)
    assert any("portal_partners has no label 'status'" in p for p in labels)


def test_the_heartbeat_ages_are_exposed_for_the_scheduler_and_alerting(scrape):
    families = {f.name: f for f in text_string_to_metric_families(scrape)}
    gauge = families["portal_heartbeat_age_seconds"]
    assert gauge.type == "gauge"
    assert {s.labels["component"] for s in gauge.samples} == {"scheduler", "worker"}


def test_the_dashboard_shows_every_metric_of_spec_10():
    used = {m for expr in expressions(rules=[]).values() for m in METRIC.findall(expr)}
    assert {
        "portal_events_accepted_total",
        "portal_delivery_attempts_total",
        "portal_delivery_attempt_duration_seconds_bucket",
        "portal_deliveries",
        "portal_oldest_due_delivery_age_seconds",
        "portal_partners",
    } <= used


def test_the_dashboard_is_importable_and_every_panel_uses_the_chosen_datasource():
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41 and board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'job="$job"' in target["expr"], panel["title"]


def test_every_alert_says_how_bad_what_happened_and_where_its_runbook_is():
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {
        "PortalPartnerPaused",
        "PortalDeadDeliveriesRising",
        "PortalOldestDueDeliveryOld",
        "PortalSchedulerSilent",
        "PortalNoWorkerHeartbeat",
    }
    for rule in rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        for annotation in ("summary", "description", "runbook_url"):
            assert rule["annotations"][annotation].strip(), (rule["alert"], annotation)


def test_every_runbook_link_is_a_heading_of_operations_md():
    anchors = headings_anchors(OPERATIONS.read_text())
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        assert "/docs/OPERATIONS.md#" in url, (rule["alert"], url)
        assert url.rsplit("#", 1)[1] in anchors, (rule["alert"], url)


def test_the_heading_anchors_are_read_as_github_makes_them():
    markdown = "## 8. Signals, dashboard and alerts\n```sh\n# a comment\n```\n### PortalX\n"
    assert headings_anchors(markdown) == {"8-signals-dashboard-and-alerts", "portalx"}


def test_prometheus_scrapes_metrics_with_the_token_and_loads_the_rules():
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert [(PROMETHEUS.parent / f).resolve() for f in config["rule_files"]] == [ALERTS]
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer" and job["authorization"]["credentials_file"]
    # the rules and the dashboard's default pick this job
    assert all(f'job="{job["job_name"]}"' in r["expr"] for r in alert_rules() if "up{" in r["expr"])


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool (Debian: prometheus) absent")
def test_promtool_accepts_the_rules_and_the_config(tmp_path):
    # given the config beside its rules, with its token file where it can be read
    token = tmp_path / "token"
    token.write_text("test-token\n")
    shutil.copy(ALERTS, tmp_path / ALERTS.name)
    config = PROMETHEUS.read_text().replace("/etc/prometheus/portal-metrics-token", str(token))
    (tmp_path / PROMETHEUS.name).write_text(config)
    # when promtool checks them, then it finds nothing wrong
    for args in (["check", "rules", str(ALERTS)], ["check", "config", PROMETHEUS.name]):
        result = subprocess.run(
            ["promtool", *args], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stdout + result.stderr
