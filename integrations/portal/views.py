"""The partner portal (SPEC §9): plain Django views for one signed-in partner.

A single-use link (services/portal.py) opens a session that is that partner's only: no user
is logged in, so no admin page opens, and every query here starts from the partner, so
another partner's deliveries (or the engine relay's) are a 404 whatever id is typed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import logout
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from integrations import explain
from integrations.delivery import redact_url
from integrations.errors import Conflict, PortalError
from integrations.models import Delivery, Partner
from integrations.payloads import whole
from integrations.selectors import partner_health, storable
from integrations.services import operations
from integrations.services.partners import signing_secret_rotate
from integrations.services.portal import (
    partner_key_roll,
    partner_paths_change,
    portal_link_partner,
    portal_link_redeem,
)

SESSION_KEY = "partner_portal"
PAGE = 50


def partner_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """The view runs for the partner of the session (as `partner`), else the sign-in
    explanation (no session, expired, or the partner disabled since)."""

    @wraps(view)
    @never_cache  # nothing of a partner's pages (a secret shown once) stays in a cache
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        held = request.session.get(SESSION_KEY) or {}
        until = parse_datetime(held.get("until", "")) if held else None
        partner = (
            Partner.objects.select_related("tenant").filter(pk=held.get("partner")).first()
            if held
            else None
        )
        if (
            partner is None
            or request.user.is_authenticated  # someone logged in to the admin since
            or until is None
            or until <= timezone.now()
            or partner.state == Partner.State.DISABLED
            or not partner.tenant.is_active
        ):
            request.session.pop(SESSION_KEY, None)
            return render(request, "partner_portal/signed_out.html", status=403)
        # times in the tenant's zone, with its name (issue 14)
        try:
            zone = ZoneInfo(partner.tenant.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            zone = ZoneInfo("UTC")
        with timezone.override(zone):
            return view(request, partner, *args, **kwargs)

    return wrapped


@never_cache
@require_http_methods(["GET", "POST"])
def sign_in(request: HttpRequest, token: str) -> HttpResponse:
    """GET asks to sign in (a link previewer does not use the link up); POST uses it."""
    try:
        if request.method == "GET":
            partner = portal_link_partner(token)
            return render(request, "partner_portal/sign_in.html", {"link_partner": partner})
        partner = portal_link_redeem(token)
    except PortalError as exc:
        return render(
            request,
            "partner_portal/signed_out.html",
            {"problem": exc.message},
            status=exc.status_code,
        )
    logout(request)  # a fresh session, the partner's only (an admin login in it is gone)
    ttl = settings.PORTAL_PARTNER_SESSION_TTL
    request.session[SESSION_KEY] = {
        "partner": partner.pk,
        "until": (timezone.now() + timedelta(seconds=ttl)).isoformat(),
    }
    request.session.set_expiry(ttl)
    return redirect("partner-portal:overview")


@require_POST
def sign_out(request: HttpRequest) -> HttpResponse:
    request.session.flush()
    return render(request, "partner_portal/signed_out.html", {"signed_out": True})


def _own(partner: Partner):
    """The partner's own deliveries (never the engine relay's or another partner's)."""
    return Delivery.objects.filter(partner=partner, target=f"partner:{partner.pk}")


@require_GET
@partner_required
def overview(request: HttpRequest, partner: Partner) -> HttpResponse:
    failures = (
        _own(partner)
        .filter(status__in=[Delivery.Status.DEAD, Delivery.Status.RETRYING])
        .select_related("ticket")
        .order_by("-id")[:10]
    )
    failures = list(failures)
    health = partner_health(partner=partner)
    if health["last_error"]:
        health["last_error"] = (
            explain.error_summary(message=health["last_error"]) or health["last_error"]
        )
    for failure in failures:  # in words, in the reader's language (issue 14)
        failure.error_text = explain.delivery_error_text(failure)[0] or failure.last_error  # type: ignore[attr-defined]
    return render(
        request,
        "partner_portal/overview.html",
        {"partner": partner, "health": health, "failures": failures},
    )


def _when(value: str, *, end: bool = False) -> datetime | None:
    """A date (YYYY-MM-DD: the day's start, or with `end` the next day's, so a "to" day is
    included) or a time from a filter field, in UTC; None."""
    if not value:
        return None
    try:
        parsed = parse_datetime(value if "T" in value else f"{value}T00:00:00")
        if parsed is not None and end and "T" not in value:
            parsed += timedelta(days=1)
        if parsed is None:
            return None
        return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError):  # no such day, or out of range in UTC
        return None


@require_GET
@partner_required
def deliveries(request: HttpRequest, partner: Partner) -> HttpResponse:
    q = request.GET
    rows = _own(partner).select_related("ticket")
    status = q.get("status", "")
    if status in Delivery.Status.values:
        rows = rows.filter(status=status)
    ticket = q.get("ticket", "").strip()
    if ticket:
        rows = rows.filter(ticket__ticket_number=ticket) if storable(ticket) else rows.none()
    since, until = _when(q.get("since", "")), _when(q.get("until", ""), end=True)
    if since:
        rows = rows.filter(created_at__gte=since)
    if until:
        rows = rows.filter(created_at__lt=until)
    before = q.get("before", "")
    if whole(before):
        rows = rows.filter(pk__lt=int(before))
    page = list(rows.order_by("-id")[: PAGE + 1])
    older = page[PAGE - 1].pk if len(page) > PAGE else None
    query = q.copy()
    query.pop("before", None)
    return render(
        request,
        "partner_portal/deliveries.html",
        {
            "partner": partner,
            "deliveries": page[:PAGE],
            "statuses": Delivery.Status.choices,
            "filters": {
                "status": status,
                "ticket": ticket,
                "since": q.get("since", ""),
                "until": q.get("until", ""),
            },
            "older": older,
            "query": query.urlencode(),
        },
    )


def _delivery(partner: Partner, delivery_id: int) -> Delivery:
    delivery = (
        _own(partner).select_related("ticket", "tenant", "event").filter(pk=delivery_id).first()
    )
    if delivery is None:
        raise Http404
    return delivery


@require_GET
@partner_required
def delivery(request: HttpRequest, partner: Partner, delivery_id: int) -> HttpResponse:
    found = _delivery(partner, delivery_id)
    found.error_text = explain.delivery_error_text(found)[0] or found.last_error  # type: ignore[attr-defined]
    attempts = list(found.attempts_log.order_by("number"))
    for attempt in attempts:
        attempt.summary = explain.attempt_summary(attempt)  # type: ignore[attr-defined]
        attempt.outcome_label = explain.attempt_outcome(attempt, found)  # type: ignore[attr-defined]
    return render(
        request,
        "partner_portal/delivery.html",
        {"partner": partner, "delivery": found, "attempts": attempts},
    )


@require_POST
@partner_required
def resend(request: HttpRequest, partner: Partner, delivery_id: int) -> HttpResponse:
    found = _delivery(partner, delivery_id)
    try:
        operations.delivery_redeliver(delivery=found)
        messages.success(request, _("Sent again: it goes out in its ticket's order."))
    except Conflict as exc:
        messages.error(request, exc.message)
    return redirect("partner-portal:delivery", delivery_id=found.pk)


@require_POST
@partner_required
def recover(request: HttpRequest, partner: Partner) -> HttpResponse:
    since = _when(request.POST.get("since", ""))
    until = _when(request.POST.get("until", ""), end=True)
    if since is None or until is None or since >= until:
        messages.error(request, _("Give a start and an end, the end after the start."))
    else:
        queued = operations.deliveries_recover(partner=partner, since=since, until=until)
        messages.success(
            request, _("%(n)d dead deliveries are sent again, in order.") % {"n": queued}
        )
    return redirect("partner-portal:deliveries")


@require_http_methods(["GET", "POST"])
@partner_required
def settings_page(request: HttpRequest, partner: Partner) -> HttpResponse:
    errors: dict[str, list[str]] = {}
    probe = None
    action = request.POST.get("action", "")
    if action == "paths":
        try:
            partner_paths_change(
                partner=partner,
                incoming_message_path=request.POST.get("incoming_message_path", ""),
                send_message_path=request.POST.get("send_message_path", ""),
            )
            messages.success(request, _("Paths saved."))
            return redirect("partner-portal:settings")
        except PortalError as exc:
            errors = exc.errors
            partner.refresh_from_db()
    elif action == "rotate":
        secret = signing_secret_rotate(partner=partner)
        messages.warning(
            request,
            format_html(
                "{} <code class='secret-once'>{}</code>",
                _("New signing secret (copy it now, it is shown only once):"),
                secret.secret,
            ),
        )
        return redirect("partner-portal:settings")
    elif action == "roll":
        raw = partner_key_roll(partner=partner)
        messages.warning(
            request,
            format_html(
                "{} <code class='secret-once'>{}</code>",
                _(
                    "New API key (copy it now, it is shown only once; your other keys work "
                    "for 24 more hours):"
                ),
                raw,
            ),
        )
        return redirect("partner-portal:settings")
    elif action == "test":
        probe = operations.partner_send_test_event(partner=partner)
    return render(
        request,
        "partner_portal/settings.html",
        {
            "partner": partner,
            "base_url": redact_url(partner.base_url),
            "errors": errors,
            "probe": probe,
            "values": request.POST if action == "paths" else None,
        },
        status=400 if errors else 200,
    )
