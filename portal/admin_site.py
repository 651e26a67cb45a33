"""The admin site: its index is the dashboard (per-partner volume and success rate over
24 h, queue depth), scoped to the user's tenants."""

from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from integrations import selectors


class PortalAdminSite(admin.AdminSite):
    site_header = _("Integration Portal")
    site_title = _("Integration Portal")
    index_title = _("Dashboard")
    index_template = "admin/portal_index.html"
    site_url = None  # no "View site" link: the portal has no public site (/ is the admin)

    def index(self, request, extra_context=None):
        from integrations.admin.scoping import tenant_ids_for

        extra_context = extra_context or {}
        extra_context["dashboard"] = selectors.dashboard_stats(tenant_ids=tenant_ids_for(request))
        return super().index(request, extra_context)
