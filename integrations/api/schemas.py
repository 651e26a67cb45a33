"""Serializers that document the wire formats for OpenAPI.

Validation itself lives in integrations/payloads.py; these are built from the same constants
so the schema states the same required keys, enums and length limits.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample
from rest_framework import serializers

from integrations import payloads as p
from integrations.models import Delivery

ALL_TYPES = (*p.MESSAGE_TYPES, p.STICKER)
# Named choice sets, so the schema's enum names are stable (see ENUM_NAME_OVERRIDES).
SUCCESS_STATUS = ("success",)
ERROR_STATUS = ("error",)
TICKET_STATUS = ("open", "closed")


class _MessageFields(serializers.Serializer):
    ticketNumber = serializers.RegexField(r"^\S+$", max_length=p.MAX_TICKET_NUMBER)
    channel = serializers.RegexField(
        p.CHANNEL_PATTERN,
        max_length=p.MAX_CHANNEL,
        help_text="Lower-case channel name, e.g. whatsapp.",
    )
    message = serializers.CharField(
        max_length=p.MAX_MESSAGE,
        allow_blank=True,
        help_text="text: non-empty; location: 'latitude,longitude'; media: caption or file "
        "name, may be empty.",
    )
    mediaLink = serializers.CharField(
        max_length=p.MAX_MEDIA_LINK,
        allow_blank=True,
        help_text="'' for text and location; an absolute http(s) URL for media.",
    )
    customerName = serializers.CharField(max_length=p.MAX_NAME)
    owner = serializers.CharField(max_length=p.MAX_ID, help_text="The tenant id.")


class IncomingEventSerializer(_MessageFields):
    accountId = serializers.CharField(max_length=p.MAX_ID)
    contactId = serializers.CharField(max_length=p.MAX_ID)
    messageType = serializers.ChoiceField(
        choices=ALL_TYPES, help_text="Case-insensitive; sticker becomes text (the sticker text)."
    )
    createdDate = serializers.RegexField(
        p.CREATED_DATE_PATTERN, help_text="yyyy-MM-dd'T'HH:mm:ss.SSS, the tenant's local time."
    )
    groupId = serializers.CharField(max_length=p.MAX_OPTIONAL, required=False, allow_blank=True)
    language = serializers.CharField(max_length=p.MAX_OPTIONAL, required=False, allow_blank=True)


class EngineOutgoingEventSerializer(_MessageFields):
    messageType = serializers.ChoiceField(choices=ALL_TYPES, help_text="Case-insensitive.")
    createdDate = serializers.RegexField(p.CREATED_DATE_PATTERN, required=False)


class PartnerOutgoingEventSerializer(_MessageFields):
    messageType = serializers.ChoiceField(choices=p.MESSAGE_TYPES, help_text="Case-insensitive.")
    createdDate = serializers.RegexField(p.CREATED_DATE_PATTERN, required=False)


class CommandEventSerializer(serializers.Serializer):
    ticketNumber = serializers.RegexField(r"^\S+$", max_length=p.MAX_TICKET_NUMBER)
    channel = serializers.RegexField(p.CHANNEL_PATTERN, max_length=p.MAX_CHANNEL)
    owner = serializers.CharField(max_length=p.MAX_ID)
    event = serializers.ChoiceField(choices=p.COMMAND_EVENTS, help_text="Case-insensitive.")


class AcceptedSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=SUCCESS_STATUS)
    eventId = serializers.UUIDField()


class ErrorSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=ERROR_STATUS)
    code = serializers.CharField()
    message = serializers.CharField()
    errors = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))


class DeliveryStatusSerializer(serializers.Serializer):
    target = serializers.CharField(help_text="'engine' or 'partner:<id>'.")
    status = serializers.ChoiceField(choices=Delivery.Status.choices)


class HistoryItemSerializer(serializers.Serializer):
    eventId = serializers.UUIDField()
    direction = serializers.ChoiceField(choices=["incoming", "outgoing"])
    source = serializers.ChoiceField(choices=["engine", "partner"])
    messageType = serializers.CharField()
    message = serializers.CharField(allow_blank=True)
    mediaLink = serializers.CharField(allow_blank=True)
    createdAt = serializers.DateTimeField()
    deliveries = DeliveryStatusSerializer(many=True)


class HistorySerializer(serializers.Serializer):
    results = HistoryItemSerializer(many=True)
    next = serializers.URLField(allow_null=True)


class ContactTicketSerializer(serializers.Serializer):
    ticketNumber = serializers.CharField()
    status = serializers.ChoiceField(choices=TICKET_STATUS)


class ContactSerializer(serializers.Serializer):
    contactId = serializers.CharField()
    customerName = serializers.CharField()
    channel = serializers.CharField()
    accountId = serializers.CharField()
    firstSeen = serializers.DateTimeField()
    lastSeen = serializers.DateTimeField()
    tickets = ContactTicketSerializer(many=True)


class EventDeliverySerializer(DeliveryStatusSerializer):
    partnerName = serializers.CharField(allow_null=True)
    attempts = serializers.IntegerField()
    lastStatusCode = serializers.IntegerField(allow_null=True)
    lastError = serializers.CharField(allow_blank=True)
    nextAttemptAt = serializers.DateTimeField(allow_null=True)
    deliveredAt = serializers.DateTimeField(allow_null=True)


class EventDetailSerializer(serializers.Serializer):
    eventId = serializers.UUIDField()
    kind = serializers.ChoiceField(choices=["incoming", "outgoing", "command", "operations"])
    source = serializers.ChoiceField(choices=["engine", "partner", "portal"])
    owner = serializers.CharField()
    ticketNumber = serializers.CharField()
    receivedAt = serializers.DateTimeField()
    payload = serializers.DictField()
    deliveries = EventDeliverySerializer(many=True)


INCOMING_EXAMPLE = OpenApiExample(
    "Incoming text",
    value={
        "ticketNumber": "294c9ea88f7e649f8c37ae895ebab247",
        "channel": "whatsapp",
        "accountId": "628128778222",
        "contactId": "d61d77735f3fe08bcf6d6b96fa06ba9d",
        "messageType": "text",
        "message": "Halo",
        "mediaLink": "",
        "customerName": "Farhan Akbar",
        "createdDate": "2021-04-28T15:39:37.945",
        "owner": "82ab0fd5cfd1e80d1ff97c0cfc9aa9e2",
        "groupId": "",
        "language": "",
    },
    request_only=True,
)
OUTGOING_EXAMPLE = OpenApiExample(
    "Agent reply",
    value={
        "ticketNumber": "294c9ea88f7e649f8c37ae895ebab247",
        "channel": "whatsapp",
        "messageType": "text",
        "message": "Halo, ada yang bisa kami bantu?",
        "mediaLink": "",
        "customerName": "Farhan Akbar",
        "owner": "82ab0fd5cfd1e80d1ff97c0cfc9aa9e2",
    },
    request_only=True,
)
COMMAND_EXAMPLE = OpenApiExample(
    "Close the ticket",
    value={
        "ticketNumber": "294c9ea88f7e649f8c37ae895ebab247",
        "channel": "whatsapp",
        "owner": "82ab0fd5cfd1e80d1ff97c0cfc9aa9e2",
        "event": "close",
    },
    request_only=True,
)
