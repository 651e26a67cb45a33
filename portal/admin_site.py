"""The admin site: its index is the dashboard, scoped to the user's tenants: queue depth,
deliveries over time by outcome and per partner volume and p50/p95 latency over 24 h or
7 days (?window=24h|7d), for every partner or one (?partner=ID, one of the user's
tenants'; anything else shows every partner), and what to do first when there is nothing
to show. The charts are SVG drawn here, on the server."""

import math
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin
from django.urls import reverse
from django.utils import formats
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from integrations import explain, selectors
from integrations.models import ApiKey, Delivery, Partner, Tenant


class PortalAdminSite(admin.AdminSite):
    site_header = _("Integration Portal")
    site_title = _("Integration Portal")
    index_title = _("Dashboard")
    index_template = "admin/portal_index.html"
    site_url = None  # no "View site" link: the portal has no public site (/ is the admin)
    # Lists get the width (a 1366-px laptop): the dashboard and breadcrumbs lead everywhere.
    enable_nav_sidebar = False

    def get_urls(self):
        from django.urls import path

        from integrations.admin.zones import switch_time_zone

        return [
            path("time-zone/", self.admin_view(switch_time_zone), name="time_zone"),
        ] + super().get_urls()

    def index(self, request, extra_context=None):
        from integrations.admin.scoping import tenant_ids_for

        extra_context = extra_context or {}
        extra_context["dashboard"] = dashboard_context(
            request, tenant_ids=tenant_ids_for(request), registry=self._registry
        )
        return super().index(request, extra_context)


# --- the dashboard ---------------------------------------------------------------------------

WINDOW_LABELS = {"24h": _("Last 24 hours"), "7d": _("Last 7 days")}
CHART_TITLES = {
    "24h": _("Deliveries per hour by outcome, last 24 hours"),
    "7d": _("Deliveries per 6 hours by outcome, last 7 days"),
}
OUTCOME_LABELS = {
    "succeeded": Delivery.Status.SUCCEEDED.label,
    "waiting": _("Waiting or retrying"),
    "dead": Delivery.Status.DEAD.label,
    "cancelled": Delivery.Status.CANCELLED.label,
    "not_configured": Delivery.Status.NOT_CONFIGURED.label,
}
# The chart in SVG user units: bars between PLOT_LEFT and PLOT_RIGHT, from PLOT_BOTTOM up
# to PLOT_TOP; the axes' labels around them.
CHART_WIDTH, CHART_HEIGHT = 720, 220
PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 48, 700, 8, 190
LATENCY_BAR_WIDTH = 120
FIRST_STEP_PARTNERS = 5  # partner pages linked from the empty state


def dashboard_context(request, *, tenant_ids: list[int] | None, registry) -> dict[str, Any]:
    """The index's `dashboard`: the selector's figures for the window and partner the query
    string asks for (unknown ones fall back to 24 h and every partner), the chart's
    geometry, the filter's links and choices, and the first steps when there is nothing."""
    choices = selectors.dashboard_partner_choices(tenant_ids=tenant_ids)
    window = request.GET.get("window", "")
    if window not in selectors.DASHBOARD_WINDOWS:
        window = selectors.DASHBOARD_DEFAULT_WINDOW
    partner = _chosen_partner(request.GET.get("partner", ""), choices)
    partner_id = partner["id"] if partner else None
    stats = selectors.dashboard_stats(tenant_ids=tenant_ids, window=window, partner_id=partner_id)
    partner_query = {"partner": partner_id} if partner_id else {}
    return {
        **stats,
        "window_label": WINDOW_LABELS[window],
        "windows": [
            {
                "key": key,
                "label": label,
                "url": "?" + urlencode({"window": key, **partner_query}),
                "current": key == window,
            }
            for key, label in WINDOW_LABELS.items()
        ],
        "partner_choices": choices,
        "partner": partner,
        "several_tenants": len({c["tenant_id"] for c in choices}) > 1,
        "outcomes": [
            {"key": key, "label": OUTCOME_LABELS[key], "total": stats["totals"][key]}
            for key in selectors.DASHBOARD_OUTCOMES
        ],
        "chart": _chart(stats, window),
        "rows": _partner_rows(stats, window),
        "any_sampled": any(row["sampled"] for row in stats["partners"]),
        "latency_sample": selectors.LATENCY_SAMPLE_DELIVERIES,
        "dead_query": urlencode({"status__exact": "dead", "partner__id__exact": partner_id})
        if partner_id
        else "status__exact=dead",
        "first_steps": None
        if stats["total"]
        else _first_steps(request, registry, stats, choices, partner),
    }


def _chosen_partner(value: str, choices: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The partner `?partner=` names if it is one of `choices` (the user's tenants'), else
    None: a mistyped or another tenant's id shows every partner and says nothing of it."""
    return next((c for c in choices if str(c["id"]) == value.strip()), None)


def _nice_step(value: float) -> int:
    """The smallest of 1, 2, 5, 10, 20, 50, ... at least `value`."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= value)


def _chart(stats: dict[str, Any], window: str) -> dict[str, Any]:
    """Stacked bars, a y axis of about four steps and x labels every few bars; the title of
    each bar (its tooltip) gives its time and figures."""
    bars = stats["bars"]
    step = _nice_step(stats["max_bar_total"] / 4)
    top = max(step, step * math.ceil(stats["max_bar_total"] / step))
    plot_width = PLOT_RIGHT - PLOT_LEFT
    plot_height = PLOT_BOTTOM - PLOT_TOP
    slot = plot_width / max(len(bars), 1)
    width = max(1.0, slot * 0.75)
    hours = selectors.DASHBOARD_WINDOWS[window][1]
    drawn = []
    for i, bar in enumerate(bars):
        x = PLOT_LEFT + i * slot + (slot - width) / 2
        y = float(PLOT_BOTTOM)
        segments = []
        for key in selectors.DASHBOARD_OUTCOMES:
            count = bar["counts"][key]
            if count:
                height = count / top * plot_height
                y -= height
                segments.append({"outcome": key, "y": round(y, 2), "height": round(height, 2)})
        start, end = bar["start"], bar["end"]
        figures = ", ".join(f"{OUTCOME_LABELS[k]} {bar['counts'][k]}" for k in OUTCOME_LABELS)
        title = gettext("%(start)s to %(end)s: %(figures)s") % {
            "start": formats.date_format(start, "j M H:i"),
            "end": formats.date_format(end, "H:i"),
            "figures": figures,
        }
        label = None
        if start.hour == 0 and start.minute == 0:
            label = formats.date_format(start, "j M")
        elif hours == 1 and start.hour % 3 == 0:
            label = formats.date_format(start, "H:i")
        drawn.append(
            {
                "x": round(x, 2),
                "width": round(width, 2),
                "center": round(x + width / 2, 2),
                "segments": segments,
                "title": title,
                "label": label,
            }
        )
    ticks = [
        {"value": value, "y": round(PLOT_BOTTOM - value / top * plot_height, 2)}
        for value in range(0, top + 1, step)
    ]
    summary = ", ".join(
        f"{OUTCOME_LABELS[k]} {stats['totals'][k]}" for k in selectors.DASHBOARD_OUTCOMES
    )
    return {
        "title": CHART_TITLES[window],
        "label": gettext("%(chart)s: %(figures)s")
        % {"chart": CHART_TITLES[window], "figures": summary},
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "plot_left": PLOT_LEFT,
        "plot_right": PLOT_RIGHT,
        "plot_bottom": PLOT_BOTTOM,
        "label_y": PLOT_BOTTOM + 18,
        "tick_x": PLOT_LEFT - 6,
        "bars": drawn,
        "ticks": ticks,
    }


def _partner_rows(stats: dict[str, Any], window: str) -> list[dict[str, Any]]:
    """The per-target table: a name for the engine relay and the operations URL, a link to
    a partner's deliveries, and bar widths for p50 and p95."""
    slowest = max((row["p95_ms"] or 0 for row in stats["partners"]), default=0)
    changelist = reverse("admin:integrations_delivery_changelist")
    rows = []
    for row in stats["partners"]:
        name = explain.target_name(row["target"], row["name"])
        link = None
        if row["partner_id"] is not None:
            query = {"partner__id__exact": row["partner_id"], "recent": window}
            link = f"{changelist}?{urlencode(query)}"
        rows.append(
            {
                **row,
                "label": name,
                "deliveries_url": link,
                "rate_percent": None if row["rate"] is None else round(100 * row["rate"], 1),
                "p50_width": _share(row["p50_ms"], slowest),
                "p95_width": _share(row["p95_ms"], slowest),
            }
        )
    return rows


def _share(value: float | None, largest: float) -> float:
    if not value or not largest:
        return 0.0
    return round(value / largest * LATENCY_BAR_WIDTH, 2)


def _first_steps(request, registry, stats, choices, partner) -> list[dict[str, Any]]:
    """What to do when the window has no deliveries, as far as this user may do it: a tenant
    first (a superuser without any), then a partner; an engine key while nothing was ever
    delivered; a test event from a partner's page; a longer window after a quiet day."""
    steps: list[dict[str, Any]] = []

    def may(model, action: str) -> bool:
        model_admin = registry.get(model)
        return model_admin is not None and getattr(model_admin, f"has_{action}_permission")(request)

    def url(model, action: str, name: str) -> str | None:
        return reverse(f"admin:integrations_{name}_add") if may(model, action) else None

    if not stats["tenant_count"]:
        steps.append({"key": "tenant", "url": url(Tenant, "add", "tenant")})
    if not choices:
        steps.append({"key": "partner", "url": url(Partner, "add", "partner")})
        return steps
    if not stats["any_deliveries"] and may(ApiKey, "add"):
        steps.append({"key": "engine_key", "url": url(ApiKey, "add", "apikey")})
    if may(Partner, "change"):
        shown = [partner] if partner else choices[:FIRST_STEP_PARTNERS]
        steps.append(
            {
                "key": "test_event",
                "partners": [
                    {**c, "url": reverse("admin:integrations_partner_change", args=[c["id"]])}
                    for c in shown
                ],
            }
        )
    if stats["any_deliveries"] and stats["window"] != "7d":
        query = {"window": "7d", **({"partner": partner["id"]} if partner else {})}
        steps.append({"key": "longer_window", "url": "?" + urlencode(query)})
    return steps
