"""Admin for partners, their API keys and signing secrets; the partner page's operations
(test event, recovery) and actions."""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _

from integrations import selectors
from integrations.admin.forms import (
    ServiceCleanedForm,
    confirm_first,
    copy_saved,
    fieldsets_swapped,
    service_values,
    show_once,
)
from integrations.admin.scoping import (
    ADMIN,
    SUPPORT,
    ReadOnlyScopedInline,
    TenantScopedAdmin,
)
from integrations.delivery import redact_url
from integrations.models import ApiKey, Partner, SigningSecret
from integrations.services import operations
from integrations.services.accounts import (
    api_key_create,
    api_key_revoke,
)
from integrations.services.partners import SETTINGS as PARTNER_SETTINGS
from integrations.services.partners import (
    keep_stored_password,
    partner_create,
    partner_name_check,
    partner_settings_clean,
    partner_update,
    signing_secret_rotate,
)
from integrations.services.portal import portal_link_create


class ApiKeyInline(ReadOnlyScopedInline):
    model = ApiKey
    fields = ["prefix", "name", "created_at", "expires_at", "revoked_at", "last_used_at"]
    readonly_fields = fields
    show_change_link = True


class ChannelsField(forms.CharField):
    """Channels as 'whatsapp, telegram' text (the partner service checks and stores them as
    a sorted list; empty = all)."""

    def prepare_value(self, value):
        return ", ".join(value) if isinstance(value, list) else value

    def has_changed(self, initial, data):
        def names(value):
            items = value if isinstance(value, list) else (value or "").split(",")
            return sorted({item.strip().lower() for item in items if item.strip()})

        return names(initial) != names(data)


class PartnerForm(ServiceCleanedForm):
    base_url = forms.CharField(
        label=capfirst(_("base URL")),
        max_length=2048,
        help_text=_("An absolute http:// or https:// URL, such as https://desk.example.com."),
    )
    service_fields = PARTNER_SETTINGS
    channels = ChannelsField(
        label=_("Channels"),
        required=False,
        help_text=_("Comma-separated, e.g. whatsapp, telegram. Empty means every channel."),
    )

    class Meta:
        model = Partner
        fields = ["tenant", *PARTNER_SETTINGS]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            # A password in the URL is never shown again; sent back as ***, it is kept.
            self.initial["base_url"] = redact_url(self.instance.base_url)

    def service_clean(self, **values):
        if self.instance.pk and "base_url" in values:
            values["base_url"] = keep_stored_password(values["base_url"], self.instance.base_url)
        cleaned = partner_settings_clean(**values)
        tenant = self.instance.tenant if self.instance.pk else self.cleaned_data.get("tenant")
        if tenant is not None and "name" in cleaned:
            partner_name_check(
                tenant=tenant,
                name=cleaned["name"],
                partner=self.instance if self.instance.pk else None,
            )
        return cleaned


class RecoverForm(forms.Form):
    since = forms.DateTimeField(label=capfirst(_("from")), help_text=_("YYYY-MM-DD HH:MM"))
    until = forms.DateTimeField(label=capfirst(_("until")), help_text=_("YYYY-MM-DD HH:MM"))


@admin.register(Partner)
class PartnerAdmin(TenantScopedAdmin):
    role_permissions = {ADMIN: {"view", "add", "change"}, SUPPORT: {"view"}}
    form = PartnerForm
    change_form_template = "admin/integrations/partner/change_form.html"
    list_display = [
        "name",
        "tenant",
        "state",
        "display_url",
        "consecutive_failures",
        "last_success_at",
    ]
    list_filter = ["state"]
    search_fields = ["name", "=tenant__owner"]
    list_select_related = ["tenant"]
    inlines = [ApiKeyInline]
    actions = ["disable_partners", "resume_partners", "rotate_secrets", "new_keys", "portal_links"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "tenant",
                    "name",
                    "base_url",
                    "incoming_message_path",
                    "send_message_path",
                    "channels",
                ]
            },
        ),
        (_("Delivery"), {"fields": ["connect_timeout", "timeout", "retry_schedule", "rate_limit"]}),
        (_("State"), {"fields": ["state", "state_reason", "state_changed_at"]}),
    ]
    readonly_fields = ["state", "state_reason", "state_changed_at"]

    def get_readonly_fields(self, request, obj=None):
        fields = [*self.readonly_fields, "display_url"]
        if obj is not None:
            fields.append("tenant")
        return fields

    def get_fieldsets(self, request, obj=None):
        """Who may only look sees the base URL with any password in it redacted."""
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or self.has_change_permission(request, obj):
            return fieldsets
        return fieldsets_swapped(fieldsets, {"base_url": "display_url"})

    @admin.display(description=_("base URL"), ordering="base_url")
    def display_url(self, obj):
        return redact_url(obj.base_url)

    def save_model(self, request, obj, form, change):
        values = service_values(form, PARTNER_SETTINGS)
        if change:
            partner_update(partner=obj, **values)
            return
        partner, raw, secret = partner_create(tenant=form.cleaned_data["tenant"], **values)
        copy_saved(obj, partner)
        show_once(request, _("API key"), raw)
        show_once(request, _("Signing secret"), secret)

    # --- the partner page: health, test event, recovery ------------------------------------
    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = extra_context or {}
        partner = self.get_object(request, object_id)
        if partner is not None:
            extra_context["health"] = selectors.partner_health(partner=partner)
            extra_context["can_operate"] = self.has_change_permission(request, partner)
        return super().change_view(request, object_id, form_url, extra_context)

    def get_urls(self):
        urls = [
            path(
                "<path:object_id>/test-event/",
                self.admin_site.admin_view(self.test_event_view),
                name="integrations_partner_test_event",
            ),
            path(
                "<path:object_id>/recover/",
                self.admin_site.admin_view(self.recover_view),
                name="integrations_partner_recover",
            ),
        ]
        return urls + super().get_urls()

    def test_event_view(self, request, object_id):
        partner = get_object_or_404(self.get_queryset(request), pk=object_id)
        if request.method != "POST" or not self.has_change_permission(request, partner):
            raise PermissionDenied
        result = operations.partner_send_test_event(partner=partner)
        context = {
            **self.admin_site.each_context(request),
            "partner": partner,
            "result": result,
            "opts": self.opts,
            "title": _("Test event to %(name)s") % {"name": partner.name},
        }
        return TemplateResponse(request, "admin/integrations/partner/test_event.html", context)

    def recover_view(self, request, object_id):
        partner = get_object_or_404(self.get_queryset(request), pk=object_id)
        if not self.has_change_permission(request, partner):
            raise PermissionDenied
        form = RecoverForm(
            request.POST or None,
            initial={"since": timezone.now() - timedelta(days=1), "until": timezone.now()},
        )
        if request.method == "POST" and form.is_valid():
            count = operations.deliveries_recover(
                partner=partner, since=form.cleaned_data["since"], until=form.cleaned_data["until"]
            )
            self.log_change(request, partner, f"Recovered {count} dead deliveries.")
            messages.success(
                request,
                _("%(n)d dead deliveries will be sent again, in their original order.")
                % {"n": count},
            )
            return redirect(reverse("admin:integrations_partner_change", args=[partner.pk]))
        context = {
            **self.admin_site.each_context(request),
            "partner": partner,
            "form": form,
            "opts": self.opts,
            "title": _("Recover dead deliveries of %(name)s") % {"name": partner.name},
        }
        return TemplateResponse(request, "admin/integrations/partner/recover.html", context)

    # --- actions ---------------------------------------------------------------------------
    @admin.action(description=_("Disable the selected partners"), permissions=["change"])
    def disable_partners(self, request, queryset):
        asked = confirm_first(
            self,
            request,
            queryset,
            question=_("Disable these partners?"),
            consequence=_(
                "A disabled partner's API calls are refused and nothing is sent to it until "
                "an admin resumes it."
            ),
        )
        if asked is not None:
            return asked
        for partner in queryset:
            operations.partner_disable(partner=partner)
            self.log_change(request, partner, "Disabled.")
        messages.success(request, _("Partners disabled."))

    @admin.action(description=_("Resume the selected partners"), permissions=["change"])
    def resume_partners(self, request, queryset):
        for partner in queryset:
            operations.partner_resume(partner=partner)
            self.log_change(request, partner, "Resumed.")
        messages.success(request, _("Partners resumed; waiting deliveries go out in order."))

    @admin.action(
        description=_("Rotate signing secrets (old ones stay valid 24 h)"), permissions=["change"]
    )
    def rotate_secrets(self, request, queryset):
        for partner in queryset:
            secret = signing_secret_rotate(partner=partner)
            self.log_change(request, partner, "Signing secret rotated.")
            show_once(
                request, _("New signing secret of %(name)s") % {"name": partner.name}, secret.secret
            )

    @admin.action(
        description=_("Create a new API key (rotation; old keys keep working)"),
        permissions=["change"],
    )
    def new_keys(self, request, queryset):
        for partner in queryset:
            key, raw = api_key_create(kind=ApiKey.Kind.PARTNER, partner=partner, name="rotation")
            self.log_change(request, partner, f"API key {key.prefix} created.")
            show_once(request, _("New API key of %(name)s") % {"name": partner.name}, raw)

    @admin.action(
        description=_("Give a partner portal sign-in link (single use)"), permissions=["change"]
    )
    def portal_links(self, request, queryset):
        for partner in queryset:
            path, expires_at = portal_link_create(partner=partner, created_by=request.user)
            self.log_change(request, partner, "Partner portal sign-in link given.")
            show_once(
                request,
                _("Sign-in link of %(name)s, valid once until %(until)s")
                % {"name": partner.name, "until": f"{expires_at:%Y-%m-%d %H:%M:%S %Z}"},
                request.build_absolute_uri(path),
            )


class ApiKeyForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = ["kind", "partner", "tenants", "all_tenants", "name", "expires_at"]

    def clean(self):
        data = super().clean()
        kind = data.get("kind") or ApiKey.Kind.PARTNER
        if kind == ApiKey.Kind.ENGINE and not data.get("all_tenants") and not data.get("tenants"):
            raise forms.ValidationError(_("Choose the engine key's tenants, or all tenants."))
        if kind == ApiKey.Kind.PARTNER and not data.get("partner"):
            raise forms.ValidationError(_("A partner key needs a partner."))
        if kind == ApiKey.Kind.ENGINE and data.get("partner"):
            raise forms.ValidationError(_("An engine key belongs to no partner."))
        return data


@admin.register(ApiKey)
class ApiKeyAdmin(TenantScopedAdmin):
    tenant_path = "partner__tenant"
    role_permissions = {ADMIN: {"view", "add", "change"}, SUPPORT: {"view"}}
    form = ApiKeyForm
    list_display = ["prefix", "kind", "partner", "name", "expires_at", "revoked_at", "last_used_at"]
    list_filter = ["kind"]
    list_select_related = ["partner"]
    search_fields = ["=prefix", "name"]
    actions = ["revoke_keys"]

    def get_fields(self, request, obj=None):
        if obj is not None:
            return ["prefix", "kind", "partner", "name", "expires_at", "revoked_at"]
        if request.user.is_superuser:
            return ["kind", "partner", "tenants", "all_tenants", "name", "expires_at"]
        return ["partner", "name", "expires_at"]

    def get_readonly_fields(self, request, obj=None):
        return ["prefix", "kind", "partner", "revoked_at"] if obj is not None else []

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        kind = obj.kind if request.user.is_superuser and obj.kind else ApiKey.Kind.PARTNER
        key, raw = api_key_create(
            kind=kind,
            partner=form.cleaned_data.get("partner"),
            tenants=list(form.cleaned_data.get("tenants") or []),
            all_tenants=bool(form.cleaned_data.get("all_tenants")),
            name=form.cleaned_data.get("name") or "",
            expires_at=form.cleaned_data.get("expires_at"),
        )
        copy_saved(obj, key)
        show_once(request, _("API key"), raw)

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        return qs if request.user.is_superuser else qs.filter(kind=ApiKey.Kind.PARTNER)

    @admin.action(description=_("Revoke the selected keys now"), permissions=["change"])
    def revoke_keys(self, request, queryset):
        asked = confirm_first(
            self,
            request,
            queryset,
            question=_("Revoke these API keys?"),
            consequence=_("A revoked key fails at once and cannot be used again."),
        )
        if asked is not None:
            return asked
        for key in queryset:
            api_key_revoke(key=key)
            self.log_change(request, key, "Revoked.")
        messages.success(request, _("Keys revoked."))


@admin.register(SigningSecret)
class SigningSecretAdmin(TenantScopedAdmin):
    tenant_path = "partner__tenant"
    list_display = ["partner", "fingerprint", "created_at", "expires_at"]
    list_select_related = ["partner"]
    fields = ["partner", "fingerprint", "created_at", "expires_at"]
    readonly_fields = fields

    # Secrets are made and retired only by the partner's "rotate" action, never edited here.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description=_("secret"))
    def fingerprint(self, obj):
        return f"{obj.secret[:10]}…"
