"""OpenAPI descriptions of the management API's bodies (SPEC §8); the views build their
answers in integrations/selectors.py, these only document them."""

from __future__ import annotations

from rest_framework import serializers

from integrations.models import Delivery, Partner, TenantMembership


class PartnerHealthSerializer(serializers.Serializer):
    consecutiveFailures = serializers.IntegerField()
    lastSuccessAt = serializers.DateTimeField(allow_null=True)
    lastFailureAt = serializers.DateTimeField(allow_null=True)
    lastError = serializers.CharField(allow_blank=True)
    successRate24h = serializers.FloatField(allow_null=True)
    latencyP50Ms = serializers.IntegerField(allow_null=True)
    latencyP95Ms = serializers.IntegerField(allow_null=True)
    waiting = serializers.IntegerField()
    dead = serializers.IntegerField()


class PartnerSerializer(serializers.Serializer):
    partnerId = serializers.IntegerField()
    name = serializers.CharField()
    baseUrl = serializers.CharField()
    incomingMessagePath = serializers.CharField()
    sendMessagePath = serializers.CharField()
    channels = serializers.ListField(child=serializers.CharField())
    connectTimeout = serializers.FloatField()
    timeout = serializers.FloatField()
    retrySchedule = serializers.CharField(allow_blank=True)
    rateLimit = serializers.CharField(allow_blank=True)
    state = serializers.ChoiceField(choices=Partner.State.choices)
    stateReason = serializers.CharField(allow_blank=True)
    stateChangedAt = serializers.DateTimeField(allow_null=True)
    createdAt = serializers.DateTimeField()


class PartnerDetailSerializer(PartnerSerializer):
    health = PartnerHealthSerializer()


class PartnerListSerializer(serializers.Serializer):
    results = PartnerSerializer(many=True)
    next = serializers.CharField(allow_null=True)


class PartnerCreatedSerializer(PartnerSerializer):
    apiKey = serializers.CharField(help_text="Shown once.")
    signingSecret = serializers.CharField(help_text="Shown once.")


class PartnerWriteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    baseUrl = serializers.CharField(max_length=2048)
    incomingMessagePath = serializers.CharField(max_length=500)
    sendMessagePath = serializers.CharField(max_length=500)
    channels = serializers.ListField(child=serializers.CharField(), required=False)
    connectTimeout = serializers.FloatField(required=False)
    timeout = serializers.FloatField(required=False)
    retrySchedule = serializers.CharField(required=False, allow_blank=True)
    rateLimit = serializers.CharField(required=False, allow_blank=True)


class PartnerPatchSerializer(PartnerWriteSerializer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            field.required = False


class KeySerializer(serializers.Serializer):
    prefix = serializers.CharField()
    name = serializers.CharField(allow_blank=True)
    createdAt = serializers.DateTimeField()
    lastUsedAt = serializers.DateTimeField(allow_null=True)
    expiresAt = serializers.DateTimeField(allow_null=True)
    revokedAt = serializers.DateTimeField(allow_null=True)


class KeyListSerializer(serializers.Serializer):
    results = KeySerializer(many=True)
    next = serializers.CharField(allow_null=True)


class KeyWriteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    expiresAt = serializers.DateTimeField(required=False, allow_null=True)


class KeyCreatedSerializer(KeySerializer):
    apiKey = serializers.CharField(help_text="Shown once.")


class SecretCreatedSerializer(serializers.Serializer):
    signingSecret = serializers.CharField(help_text="Shown once.")
    previousExpiresAt = serializers.DateTimeField(allow_null=True)


class ProbeSerializer(serializers.Serializer):
    statusCode = serializers.IntegerField(allow_null=True)
    outcome = serializers.CharField()
    latencyMs = serializers.IntegerField()
    responseExcerpt = serializers.CharField(allow_blank=True)
    error = serializers.CharField(allow_blank=True)


class WindowSerializer(serializers.Serializer):
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()


class QueuedSerializer(serializers.Serializer):
    queued = serializers.IntegerField()


class DeliverySerializer(serializers.Serializer):
    deliveryId = serializers.IntegerField()
    eventId = serializers.UUIDField()
    ticketNumber = serializers.CharField()
    target = serializers.CharField()
    partnerId = serializers.IntegerField(allow_null=True)
    endpoint = serializers.ChoiceField(choices=Delivery.Endpoint.choices)
    status = serializers.ChoiceField(choices=Delivery.Status.choices)
    attempts = serializers.IntegerField()
    nextAttemptAt = serializers.DateTimeField(allow_null=True)
    lastStatusCode = serializers.IntegerField(allow_null=True)
    lastError = serializers.CharField(allow_blank=True)
    createdAt = serializers.DateTimeField()
    deliveredAt = serializers.DateTimeField(allow_null=True)


class DeliveryListSerializer(serializers.Serializer):
    results = DeliverySerializer(many=True)
    next = serializers.CharField(allow_null=True)


class AttemptSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    attemptedAt = serializers.DateTimeField()
    url = serializers.CharField()
    statusCode = serializers.IntegerField(allow_null=True)
    outcome = serializers.CharField()
    durationMs = serializers.IntegerField()
    error = serializers.CharField(allow_blank=True)
    responseExcerpt = serializers.CharField(allow_blank=True)


class DeliveryDetailSerializer(DeliverySerializer):
    attemptLog = AttemptSerializer(many=True)


class TimelineDeliverySerializer(serializers.Serializer):
    deliveryId = serializers.IntegerField()
    target = serializers.CharField()
    partnerId = serializers.IntegerField(allow_null=True)
    status = serializers.ChoiceField(choices=Delivery.Status.choices)
    attempts = serializers.IntegerField()
    lastStatusCode = serializers.IntegerField(allow_null=True)


class TimelineEventSerializer(serializers.Serializer):
    eventId = serializers.UUIDField()
    kind = serializers.CharField()
    source = serializers.CharField()
    sequence = serializers.IntegerField()
    receivedAt = serializers.DateTimeField()
    payload = serializers.DictField()
    deliveries = TimelineDeliverySerializer(many=True)


class TicketSerializer(serializers.Serializer):
    ticketNumber = serializers.CharField()
    channel = serializers.CharField()
    status = serializers.CharField()
    customerName = serializers.CharField(allow_blank=True)
    createdDate = serializers.DateTimeField(allow_null=True)
    closedAt = serializers.DateTimeField(allow_null=True)
    timeline = TimelineEventSerializer(many=True)


class TenantSerializer(serializers.Serializer):
    owner = serializers.CharField()
    name = serializers.CharField()
    timeZone = serializers.CharField()
    operationsUrl = serializers.CharField(allow_blank=True)
    role = serializers.ChoiceField(choices=TenantMembership.Role.choices)


class TenantPatchSerializer(serializers.Serializer):
    operationsUrl = serializers.CharField(max_length=500, required=False, allow_blank=True)


class TenantPatchedSerializer(TenantSerializer):
    operationsSigningSecret = serializers.CharField(
        required=False, help_text="Present (and shown once) when a new one was made."
    )


class PortalLinkSerializer(serializers.Serializer):
    url = serializers.CharField(help_text="Single use; shown once.")
    expiresAt = serializers.DateTimeField()
