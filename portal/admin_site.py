"""The admin site: its index is the dashboard (per-partner volume and success rate over
24 h, queue depth), scoped to the user's tenants."""

from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from integrations import selectors

# Translated names of our apps in the app list (dashboard, sidebar); the AppConfig's own
# verbose_name is a plain string.
APP_NAMES = {"integrations": _("Integrations")}


class PortalAdminSite(admin.AdminSite):
    site_header = _("Integration Portal")
    site_title = _("Integration Portal")
    index_title = _("Dashboard")
    index_template = "admin/portal_index.html"
    site_url = "/api/docs/"  # "View site": the API documentation partners read

    def index(self, request, extra_context=None):
        from integrations.admin.scoping import tenant_ids_for

        extra_context = extra_context or {}
        extra_context["dashboard"] = selectors.dashboard_stats(
            tenant_ids=tenant_ids_for(request))
        return super().index(request, extra_context)

    def get_app_list(self, request, app_label=None):
        app_list = super().get_app_list(request, app_label)
        for app in app_list:
            if app["app_label"] in APP_NAMES:
                app["name"] = APP_NAMES[app["app_label"]]
        return app_list
