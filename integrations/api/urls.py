from django.urls import path

from integrations.api import views

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
]
