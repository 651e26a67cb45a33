from django.urls import path

from integrations.portal import views

app_name = "partner-portal"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("sign-in/<str:token>/", views.sign_in, name="sign-in"),
    path("sign-out/", views.sign_out, name="sign-out"),
    path("deliveries/", views.deliveries, name="deliveries"),
    path("deliveries/<int:delivery_id>/", views.delivery, name="delivery"),
    path("deliveries/<int:delivery_id>/resend/", views.resend, name="resend"),
    path("recover/", views.recover, name="recover"),
    path("settings/", views.settings_page, name="settings"),
]
