from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from integrations import demo, health
from integrations.api import errors as api_errors

urlpatterns = [
    # The portal has no public site: its root leads to the admin.
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("i18n/", include("django.conf.urls.i18n")),
    # The partner portal (SPEC §9): a signed-in partner's own pages.
    path("partner/", include("integrations.portal.urls")),
    path("api/v1/", include("integrations.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    # Anything else under /api/ answers the JSON envelope, in DEBUG too.
    re_path(r"^api/", api_errors.api_not_found),
]
if settings.DEBUG or settings.PORTAL_DEMO_ENDPOINTS:
    urlpatterns.append(
        path("demo/<str:role>/<path:path>", demo.demo_receiver, name="demo-receiver")
    )

handler404 = "integrations.api.errors.handler404"
handler500 = "integrations.api.errors.handler500"
