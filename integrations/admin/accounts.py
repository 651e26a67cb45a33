"""Admin for tenants and their people."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.utils import timezone
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _

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
    TenantScopedAdmin,
    tenant_ids_for,
    tenant_roles,
)
from integrations.delivery import redact_url
from integrations.models import ManagementToken, Tenant, TenantMembership
from integrations.services.accounts import (
    TENANT_SETTINGS,
    operations_secret_rotate,
    tenant_create,
    tenant_settings_clean,
    tenant_update,
    user_create,
)
from integrations.services.management import management_token_create, management_token_revoke
from integrations.services.partners import keep_stored_password


class TenantForm(ServiceCleanedForm):
    engine_base_url = forms.CharField(
        label=capfirst(_("engine base URL")),
        required=False,
        max_length=200,
        help_text=_("An absolute http:// or https:// URL; empty uses the portal's engine."),
    )
    engine_token = forms.CharField(
        label=capfirst(_("engine bearer token")),
        required=False,
        max_length=500,
        widget=forms.PasswordInput(render_value=False),
        help_text=_("Stored, never shown. Leave empty to keep the current token."),
    )
    clear_engine_token = forms.BooleanField(
        label=_("Remove the engine bearer token"), required=False
    )
    operations_url = forms.CharField(
        label=capfirst(_("operations URL")),
        required=False,
        max_length=500,
        help_text=_(
            "Receives partner.paused, partner.resumed and delivery.dead as signed webhooks. "
            "Empty: none are sent."
        ),
    )
    new_operations_secret = forms.BooleanField(
        label=_("Give a new operations signing secret (shown once)"), required=False
    )
    service_fields = TENANT_SETTINGS

    class Meta:
        model = Tenant
        fields = list(TENANT_SETTINGS)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A password written into the operations URL is never sent back to the browser.
        if self.instance.pk and self.instance.operations_url:
            self.initial["operations_url"] = redact_url(self.instance.operations_url)

    def service_clean(self, **values):
        if "operations_url" in values and self.instance.pk:
            values["operations_url"] = keep_stored_password(
                values["operations_url"] or "", self.instance.operations_url
            )
        # The token is never sent to the browser, so an empty field means "keep it".
        if values.get("engine_token", "") == "" and self.instance.pk:
            values["engine_token"] = self.instance.engine_token
        if self.cleaned_data.get("clear_engine_token"):
            values["engine_token"] = ""
        return tenant_settings_clean(**values)


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
                    "clear_engine_token",
                ]
            },
        ),
        (
            _("Operations webhooks"),
            {"fields": ["operations_url", "operations_secret_state", "new_operations_secret"]},
        ),
    ]

    def get_readonly_fields(self, request, obj=None):
        shown = ["engine_token_state", "operations_secret_state", "operations_url_shown"]
        return shown if request.user.is_superuser else [*shown, "owner", "is_active"]

    def get_fieldsets(self, request, obj=None):
        """The token is never shown, to anyone: who may change it gets an empty password
        field, who may only look sees whether one is set."""
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or self.has_change_permission(request, obj):
            return fieldsets
        hidden = {
            "engine_token": "engine_token_state",
            "clear_engine_token": None,
            "new_operations_secret": None,
            "operations_url": "operations_url_shown",
        }
        return fieldsets_swapped(fieldsets, hidden)

    @admin.display(description=_("engine bearer token"))
    def engine_token_state(self, obj):
        return _("set (never shown)") if obj.engine_token else _("not set")

    @admin.display(description=_("operations URL"))
    def operations_url_shown(self, obj):
        return redact_url(obj.operations_url) if obj.operations_url else "-"

    @admin.display(description=_("operations signing secret"))
    def operations_secret_state(self, obj):
        return _("set (never shown)") if obj.operations_signing_secret else _("not set")

    def save_model(self, request, obj, form, change):
        values = service_values(form, TENANT_SETTINGS)
        had_secret = bool(change and Tenant.objects.get(pk=obj.pk).operations_signing_secret)
        if change:
            tenant_update(tenant=obj, **values)
        else:
            copy_saved(obj, tenant_create(**values))
        # The operations signing secret is shown once: when it is made, or made again.
        if form.cleaned_data.get("new_operations_secret"):
            show_once(request, _("Operations signing secret"), operations_secret_rotate(tenant=obj))
        elif obj.operations_signing_secret and not had_secret:
            show_once(request, _("Operations signing secret"), str(obj.operations_signing_secret))


class MembershipForm(forms.ModelForm):
    """Invite someone: a new staff user with a generated password, or an existing user."""

    username = forms.CharField(label=capfirst(_("username")), max_length=150, required=False)
    email = forms.EmailField(label=capfirst(_("e-mail")), required=False)

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


class ManagementTokenForm(forms.ModelForm):
    class Meta:
        model = ManagementToken
        fields = ["tenant", "role", "name", "expires_at"]

    def clean_expires_at(self):
        expires_at = self.cleaned_data.get("expires_at")
        if expires_at is not None and expires_at <= timezone.now():
            raise forms.ValidationError(_("Must be in the future."))
        return expires_at


@admin.register(ManagementToken)
class ManagementTokenAdmin(TenantScopedAdmin):
    """Tokens of the management API (SPEC §8): made by tenant admins, shown once, revoked
    at once; support staff see that they exist."""

    role_permissions = {ADMIN: {"view", "add", "change"}, SUPPORT: {"view"}}
    form = ManagementTokenForm
    list_display = ["prefix", "name", "role", "tenant", "expires_at", "revoked_at", "last_used_at"]
    list_filter = ["role"]
    list_select_related = ["tenant"]
    search_fields = ["=prefix", "name"]
    actions = ["revoke_tokens"]

    def get_fields(self, request, obj=None):
        if obj is not None:
            return ["prefix", "name", "role", "tenant", "created_by", "created_at"] + [
                "expires_at",
                "revoked_at",
                "last_used_at",
            ]
        return ["tenant", "role", "name", "expires_at"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return ["prefix", "role", "tenant", "created_by", "created_at", "revoked_at"] + [
            "last_used_at"
        ]

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "tenant" and not request.user.is_superuser:
            kwargs["queryset"] = Tenant.objects.filter(
                pk__in=[
                    tenant_id
                    for tenant_id, role in tenant_roles(request).items()
                    if role == TenantMembership.Role.ADMIN
                ]
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        token, raw = management_token_create(
            tenant=form.cleaned_data["tenant"],
            role=form.cleaned_data["role"],
            name=form.cleaned_data.get("name") or "",
            created_by=request.user,
            expires_at=form.cleaned_data.get("expires_at"),
        )
        copy_saved(obj, token)
        show_once(request, _("Management token"), raw)

    @admin.action(description=_("Revoke the selected tokens now"), permissions=["change"])
    def revoke_tokens(self, request, queryset):
        asked = confirm_first(
            self,
            request,
            queryset,
            question=_("Revoke these management tokens?"),
            consequence=_("A revoked token fails at once and cannot be used again."),
        )
        if asked is not None:
            return asked
        for token in queryset:
            management_token_revoke(token=token)
            self.log_change(request, token, "Revoked.")
        messages.success(request, _("Tokens revoked."))
