"""Admin for tenants, their people, partners, keys and signing secrets."""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _

from integrations import selectors
from integrations.admin.scoping import (
    ADMIN,
    SUPPORT,
    ReadOnlyScopedInline,
    TenantScopedAdmin,
    tenant_ids_for,
)
from integrations.errors import PortalError
from integrations.models import ApiKey, Partner, SigningSecret, Tenant, TenantMembership
from integrations.services import operations
from integrations.services.accounts import (
    api_key_generate,
    api_key_revoke,
    signing_secret_rotate,
    user_create,
    validate_time_zone,
)
from integrations.webhooks import generate_secret


def show_once(request, label: str, value: str) -> None:
    """Show a secret in the next page's messages: the only time it is ever shown."""
    messages.warning(
        request,
        format_html(
            _("{} (copy it now, it is shown only once): <code class='secret-once'>{}</code>"),
            label,
            value,
        ),
    )


class TenantForm(forms.ModelForm):
    engine_base_url = forms.URLField(
        label=capfirst(_("engine base URL")), required=False, assume_scheme="https", max_length=200
    )

    class Meta:
        model = Tenant
        fields = [
            "owner",
            "name",
            "is_active",
            "time_zone",
            "sticker_text",
            "retention_days",
            "engine_base_url",
            "engine_send_message_path",
            "engine_command_path",
            "engine_token",
        ]

    def clean_time_zone(self):
        try:
            return validate_time_zone(self.cleaned_data["time_zone"])
        except PortalError as exc:
            raise forms.ValidationError(exc.message) from None


@admin.register(Tenant)
class TenantAdmin(TenantScopedAdmin):
    tenant_path = ""
    role_permissions = {ADMIN: {"view", "change"}, SUPPORT: {"view"}}
    form = TenantForm
    list_display = ["name", "owner", "time_zone", "is_active"]
    search_fields = ["name", "=owner"]
    list_filter = ["is_active"]
    fieldsets = [
        (None, {"fields": ["owner", "name", "is_active"]}),
        (_("Messages"), {"fields": ["time_zone", "sticker_text", "retention_days"]}),
        (
            _("Engine relay"),
            {
                "fields": [
                    "engine_base_url",
                    "engine_send_message_path",
                    "engine_command_path",
                    "engine_token",
                ]
            },
        ),
    ]

    def get_readonly_fields(self, request, obj=None):
        return [] if request.user.is_superuser else ["owner", "is_active"]

    def save_model(self, request, obj, form, change):
        if not obj.engine_signing_secret:
            obj.engine_signing_secret = generate_secret()
        super().save_model(request, obj, form, change)


class MembershipForm(forms.ModelForm):
    """Invite someone: a new staff user with a generated password, or an existing user."""

    username = forms.CharField(label=_("username"), max_length=150, required=False)
    email = forms.EmailField(label=_("e-mail"), required=False)

    class Meta:
        model = TenantMembership
        fields = ["tenant", "role"]

    def clean_username(self):
        from django.contrib.auth import get_user_model

        username = self.cleaned_data["username"].strip()
        if not username:
            raise forms.ValidationError(_("A username is required."))
        if get_user_model().objects.filter(username=username).exists():
            raise forms.ValidationError(_("This username is taken."))
        return username


@admin.register(TenantMembership)
class TenantMembershipAdmin(TenantScopedAdmin):
    role_permissions = {ADMIN: {"view", "add", "change", "delete"}, SUPPORT: {"view"}}
    list_display = ["user", "tenant", "role", "user_active"]
    list_filter = ["role"]
    list_select_related = ["user", "tenant"]
    actions = ["deactivate_users", "activate_users"]

    @admin.display(boolean=True, description=_("active"))
    def user_active(self, obj):
        return obj.user.is_active

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = MembershipForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        return ["tenant", "username", "email", "role"] if obj is None else ["role"]

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        user, password = user_create(
            tenant=form.cleaned_data["tenant"],
            username=form.cleaned_data["username"],
            role=form.cleaned_data["role"],
            email=form.cleaned_data["email"] or "",
        )
        obj.pk = TenantMembership.objects.get(user=user, tenant=form.cleaned_data["tenant"]).pk
        obj.user = user
        show_once(request, _("Password for %(user)s") % {"user": user.username}, password)

    def _manageable_users(self, request, queryset):
        admin_tenants = set(tenant_ids_for(request, role=ADMIN) or [])
        for membership in queryset.select_related("user"):
            user = membership.user
            other = set(user.memberships.values_list("tenant_id", flat=True))
            if request.user.is_superuser or (
                not user.is_superuser and other <= admin_tenants and user != request.user
            ):
                yield user

    def _set_active(self, request, queryset, active: bool) -> int:
        users = list(self._manageable_users(request, queryset))
        for user in users:
            user.is_active = active
            user.save(update_fields=["is_active"])
        return len(users)

    @admin.action(description=_("Deactivate the selected users"), permissions=["change"])
    def deactivate_users(self, request, queryset):
        count = self._set_active(request, queryset, False)
        messages.success(request, _("%(n)d user(s) deactivated.") % {"n": count})

    @admin.action(description=_("Activate the selected users"), permissions=["change"])
    def activate_users(self, request, queryset):
        count = self._set_active(request, queryset, True)
        messages.success(request, _("%(n)d user(s) activated.") % {"n": count})


class ApiKeyInline(ReadOnlyScopedInline):
    model = ApiKey
    fields = ["prefix", "name", "created_at", "expires_at", "revoked_at", "last_used_at"]
    readonly_fields = fields
    show_change_link = True


class ChannelsField(forms.CharField):
    """Channels as 'whatsapp, telegram' text; stored as a sorted list (empty = all)."""

    def prepare_value(self, value):
        return ", ".join(value) if isinstance(value, list) else value

    def to_python(self, value):
        text = super().to_python(value) or ""
        return sorted({c.strip().lower() for c in text.split(",") if c.strip()})


class PartnerForm(forms.ModelForm):
    base_url = forms.URLField(label=capfirst(_("base URL")), assume_scheme="https", max_length=2048)
    channels = ChannelsField(
        label=_("Channels"),
        required=False,
        help_text=_("Comma-separated, e.g. whatsapp, telegram. Empty means every channel."),
    )

    class Meta:
        model = Partner
        fields = [
            "tenant",
            "name",
            "base_url",
            "incoming_message_path",
            "send_message_path",
            "channels",
            "connect_timeout",
            "timeout",
            "retry_schedule",
            "rate_limit",
        ]

    def clean_retry_schedule(self):
        from django.core.exceptions import ImproperlyConfigured

        from portal.env import parse_retry_schedule

        value = self.cleaned_data["retry_schedule"].strip()
        if value:
            try:
                parse_retry_schedule(value, name="retry schedule")
            except ImproperlyConfigured as exc:
                raise forms.ValidationError(str(exc)) from None
        return value

    def clean_rate_limit(self):
        from django.core.exceptions import ImproperlyConfigured

        from portal.env import parse_rate

        value = self.cleaned_data["rate_limit"].strip()
        if value:
            try:
                return parse_rate(value, name="rate limit")
            except ImproperlyConfigured as exc:
                raise forms.ValidationError(str(exc)) from None
        return value

    def _clean_path(self, name):
        value = self.cleaned_data[name].strip()
        if not value.startswith("/") or any(ch.isspace() for ch in value):
            raise forms.ValidationError(_("Must start with '/' and contain no spaces."))
        return value

    def clean_incoming_message_path(self):
        return self._clean_path("incoming_message_path")

    def clean_send_message_path(self):
        return self._clean_path("send_message_path")


class RecoverForm(forms.Form):
    since = forms.DateTimeField(label=_("from"), help_text=_("YYYY-MM-DD HH:MM"))
    until = forms.DateTimeField(label=_("until"), help_text=_("YYYY-MM-DD HH:MM"))


@admin.register(Partner)
class PartnerAdmin(TenantScopedAdmin):
    role_permissions = {ADMIN: {"view", "add", "change"}, SUPPORT: {"view"}}
    form = PartnerForm
    change_form_template = "admin/integrations/partner/change_form.html"
    list_display = [
        "name",
        "tenant",
        "state",
        "base_url",
        "consecutive_failures",
        "last_success_at",
    ]
    list_filter = ["state"]
    search_fields = ["name", "=tenant__owner"]
    list_select_related = ["tenant"]
    inlines = [ApiKeyInline]
    actions = ["disable_partners", "resume_partners", "rotate_secrets", "new_keys"]
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
        fields = list(self.readonly_fields)
        if obj is not None:
            fields.append("tenant")
        return fields

    def save_model(self, request, obj, form, change):
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            if not change:
                key = ApiKey(kind=ApiKey.Kind.PARTNER, partner=obj, name="initial")
                raw = api_key_generate(key=key)
                key.save()
                secret = SigningSecret.objects.create(partner=obj, secret=generate_secret())
        if not change:
            show_once(request, _("API key"), raw)
            show_once(request, _("Signing secret"), secret.secret)

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
            key = ApiKey(kind=ApiKey.Kind.PARTNER, partner=partner, name="rotation")
            raw = api_key_generate(key=key)
            key.save()
            self.log_change(request, partner, f"API key {key.prefix} created.")
            show_once(request, _("New API key of %(name)s") % {"name": partner.name}, raw)


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
        if not change:
            if not request.user.is_superuser or not obj.kind:
                obj.kind = ApiKey.Kind.PARTNER
            raw = api_key_generate(key=obj)
        super().save_model(request, obj, form, change)
        if not change:
            show_once(request, _("API key"), raw)

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        return qs if request.user.is_superuser else qs.filter(kind=ApiKey.Kind.PARTNER)

    @admin.action(description=_("Revoke the selected keys now"), permissions=["change"])
    def revoke_keys(self, request, queryset):
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
