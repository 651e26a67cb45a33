"""Times in the admin are shown in the tenant's time zone (issue 14): the zone of the first
tenant the user belongs to; for a superuser who belongs to none, the tenants' zone when they
all share one, else UTC. A user can switch to UTC and back (kept in their session)."""

from __future__ import annotations

from collections.abc import Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from integrations.models import Tenant, TenantMembership

SESSION_KEY = "portal_time_zone"  # "utc" when the user asked for UTC
UTC = "UTC"


def tenant_zone(user) -> str:
    """The zone times are shown in for this user when they have not asked for UTC."""
    zones = list(
        TenantMembership.objects.filter(user=user)
        .order_by("tenant_id")
        .values_list("tenant__time_zone", flat=True)[:1]
    )
    if not zones and user.is_superuser:
        zones = list(Tenant.objects.order_by().values_list("time_zone", flat=True).distinct()[:2])
        if len(zones) != 1:
            return UTC
    if not zones:
        return UTC
    try:
        ZoneInfo(zones[0])
    except (ZoneInfoNotFoundError, ValueError):
        return UTC
    return zones[0]


class TimeZoneMiddleware:
    """Activates the zone for a signed-in staff user's admin pages."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if not (request.path_info.startswith("/admin/") and user and user.is_staff):
            return self.get_response(request)
        home = tenant_zone(user)
        chosen = UTC if request.session.get(SESSION_KEY) == "utc" else home
        request.portal_zones = {"shown": chosen, "home": home}  # type: ignore[attr-defined]
        timezone.activate(ZoneInfo(chosen))
        try:
            return self.get_response(request)
        finally:
            timezone.deactivate()


@require_POST
def switch_time_zone(request: HttpRequest) -> HttpResponse:
    """Show times in UTC (zone=utc) or in the tenant's zone (anything else)."""
    if request.POST.get("zone") == "utc":
        request.session[SESSION_KEY] = "utc"
    else:
        request.session.pop(SESSION_KEY, None)
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = "/admin/"
    return HttpResponseRedirect(target)
