"""Admin registrations. Every model is browsable; the tenant-scoped UI is built on top."""

from __future__ import annotations

from django.contrib import admin

from integrations import models


@admin.register(models.Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "time_zone", "is_active", "created_at"]
    search_fields = ["name", "owner"]
    list_filter = ["is_active"]


@admin.register(models.TenantMembership)
class TenantMembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "tenant", "role"]
    list_filter = ["role"]
    list_select_related = ["user", "tenant"]


@admin.register(models.Partner)
class PartnerAdmin(admin.ModelAdmin):
    list_display = ["name", "tenant", "state", "base_url", "consecutive_failures",
                    "last_success_at"]
    list_filter = ["state"]
    search_fields = ["name", "tenant__owner"]
    list_select_related = ["tenant"]


@admin.register(models.SigningSecret)
class SigningSecretAdmin(admin.ModelAdmin):
    list_display = ["partner", "created_at", "expires_at"]
    list_select_related = ["partner"]
    exclude = ["secret"]


@admin.register(models.ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["prefix", "kind", "partner", "name", "expires_at", "revoked_at",
                    "last_used_at"]
    list_filter = ["kind"]
    list_select_related = ["partner"]
    readonly_fields = ["prefix", "key_hash"]


@admin.register(models.Contact)
class ContactAdmin(admin.ModelAdmin):
    list_display = ["contact_id", "customer_name", "channel", "tenant", "last_seen"]
    search_fields = ["contact_id", "customer_name"]
    list_select_related = ["tenant"]


@admin.register(models.Ticket)
class TicketAdmin(admin.ModelAdmin):
    list_display = ["ticket_number", "tenant", "channel", "status", "customer_name",
                    "created_date"]
    list_filter = ["status", "channel"]
    search_fields = ["ticket_number"]
    list_select_related = ["tenant"]
    raw_id_fields = ["contact"]


class DeliveryInline(admin.TabularInline):
    model = models.Delivery
    extra = 0
    fields = ["target", "status", "attempts", "last_status_code", "last_error", "delivered_at"]
    readonly_fields = fields
    can_delete = False


@admin.register(models.Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "source", "ticket_number", "tenant", "received_at"]
    list_filter = ["kind", "source"]
    search_fields = ["=ticket_number", "=id"]
    list_select_related = ["tenant"]
    raw_id_fields = ["ticket", "partner"]
    inlines = [DeliveryInline]
    show_full_result_count = False


class DeliveryAttemptInline(admin.TabularInline):
    model = models.DeliveryAttempt
    extra = 0
    fields = ["number", "response_status", "duration_ms", "outcome", "error_class",
              "error_message", "created_at"]
    readonly_fields = fields
    can_delete = False


@admin.register(models.Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ["id", "event", "target", "status", "attempts", "next_attempt_at",
                    "last_status_code"]
    list_filter = ["status", "endpoint"]
    search_fields = ["=event__ticket_number", "=event__id"]
    raw_id_fields = ["event", "ticket", "partner"]
    inlines = [DeliveryAttemptInline]
    show_full_result_count = False


@admin.register(models.DeliveryAttempt)
class DeliveryAttemptAdmin(admin.ModelAdmin):
    list_display = ["delivery", "number", "response_status", "duration_ms", "outcome",
                    "created_at"]
    raw_id_fields = ["delivery"]


@admin.register(models.IdempotencyRecord)
class IdempotencyRecordAdmin(admin.ModelAdmin):
    list_display = ["holder", "key", "state", "response_status", "created_at"]


@admin.register(models.WorkerHeartbeat)
class WorkerHeartbeatAdmin(admin.ModelAdmin):
    list_display = ["marker", "seen_at"]
