from django.urls import path

from integrations.api import manage, views

urlpatterns = [
    path("engine/incoming", views.EngineIncomingView.as_view(), name="engine-incoming"),
    path("engine/outgoing", views.EngineOutgoingView.as_view(), name="engine-outgoing"),
    path("outgoing", views.PartnerOutgoingView.as_view(), name="partner-outgoing"),
    path("command", views.PartnerCommandView.as_view(), name="partner-command"),
    # <path:…>: ticket numbers and contact ids may contain "/"; sent percent-encoded
    # (%2F), the server hands it over decoded, and the lookup still finds them.
    path(
        "tickets/<path:ticket_number>/messages",
        views.TicketMessagesView.as_view(),
        name="ticket-messages",
    ),
    path("contacts/<path:contact_id>", views.ContactView.as_view(), name="contact-detail"),
    path("events/<str:event_id>", views.EventDetailView.as_view(), name="event-detail"),
    # The management API (SPEC §8): management tokens only.
    path("manage/tenant", manage.TenantView.as_view(), name="manage-tenant"),
    path("manage/partners", manage.PartnersView.as_view(), name="manage-partners"),
    path("manage/partners/<int:partner_id>", manage.PartnerView.as_view(), name="manage-partner"),
    path(
        "manage/partners/<int:partner_id>/disable",
        manage.PartnerDisableView.as_view(),
        name="manage-partner-disable",
    ),
    path(
        "manage/partners/<int:partner_id>/resume",
        manage.PartnerResumeView.as_view(),
        name="manage-partner-resume",
    ),
    path("manage/partners/<int:partner_id>/keys", manage.KeysView.as_view(), name="manage-keys"),
    path(
        "manage/partners/<int:partner_id>/keys/<str:prefix>",
        manage.KeyView.as_view(),
        name="manage-key",
    ),
    path(
        "manage/partners/<int:partner_id>/secrets",
        manage.SecretsView.as_view(),
        name="manage-secrets",
    ),
    path(
        "manage/partners/<int:partner_id>/test", manage.TestEventView.as_view(), name="manage-test"
    ),
    path(
        "manage/partners/<int:partner_id>/recover",
        manage.RecoverView.as_view(),
        name="manage-recover",
    ),
    path(
        "manage/partners/<int:partner_id>/portal-links",
        manage.PortalLinksView.as_view(),
        name="manage-portal-links",
    ),
    path("manage/deliveries", manage.DeliveriesView.as_view(), name="manage-deliveries"),
    path(
        "manage/deliveries/<int:delivery_id>",
        manage.DeliveryView.as_view(),
        name="manage-delivery",
    ),
    path(
        "manage/deliveries/<int:delivery_id>/redeliver",
        manage.RedeliverView.as_view(),
        name="manage-redeliver",
    ),
    path(
        "manage/deliveries/<int:delivery_id>/cancel",
        manage.CancelView.as_view(),
        name="manage-cancel",
    ),
    path("manage/tickets/<path:ticket_number>", manage.TicketView.as_view(), name="manage-ticket"),
]
