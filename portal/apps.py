"""The admin app with the portal's own site (dashboard index), loaded by name so that no
model is imported before the app registry is ready."""

from django.contrib.admin.apps import AdminConfig


class PortalAdminConfig(AdminConfig):
    default_site = "portal.admin_site.PortalAdminSite"
