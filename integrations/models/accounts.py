"""Configuration rows: tenants, their people, partners, signing secrets, API keys."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from integrations.encryption import EncryptedTextField


class Tenant(models.Model):
    """A customer of the engine, known on the wire by `owner` (the Tenant ID)."""

    owner = models.CharField(_("tenant ID"), max_length=255, unique=True)
    name = models.CharField(_("name"), max_length=200)
    time_zone = models.CharField(_("time zone"), max_length=64, default="Asia/Jakarta")
    sticker_text = models.CharField(_("sticker text"), max_length=100, default="Stiker")
    retention_days = models.PositiveIntegerField(_("retention (days)"), default=30)
    engine_base_url = models.URLField(_("engine base URL"), blank=True)
    engine_send_message_path = models.CharField(
        _("engine send-message path"), max_length=500, blank=True
    )
    engine_command_path = models.CharField(_("engine command path"), max_length=500, blank=True)
    # Encrypted at rest (integrations/encryption.py); at most 500 characters (services/accounts).
    engine_token = EncryptedTextField(_("engine bearer token"), blank=True)
    engine_signing_secret = EncryptedTextField(_("engine signing secret"), blank=True)
    # Operations webhooks (SPEC §10): partner.paused, partner.resumed, delivery.dead.
    operations_url = models.URLField(_("operations URL"), max_length=500, blank=True)
    operations_signing_secret = EncryptedTextField(_("operations signing secret"), blank=True)
    is_active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("tenant")
        verbose_name_plural = _("tenants")
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.owner})"


class TenantMembership(models.Model):
    """Gives a user a role in one tenant."""

    class Role(models.TextChoices):
        ADMIN = "admin", _("Tenant admin")
        SUPPORT = "support", _("Support staff")

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="memberships",
        verbose_name=_("user"),
    )
    tenant = models.ForeignKey(
        Tenant, verbose_name=_("tenant"), on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(_("role"), max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("tenant membership")
        verbose_name_plural = _("tenant memberships")
        constraints = [
            models.UniqueConstraint(fields=["user", "tenant"], name="membership_user_tenant_uniq")
        ]

    def __str__(self) -> str:
        return gettext("%(user)s: %(role)s of %(tenant)s") % {
            "user": self.user,
            "role": self.get_role_display(),
            "tenant": self.tenant.name,
        }


class Partner(models.Model):
    """A third-party omnichannel partner of one tenant, and where its webhooks go."""

    class State(models.TextChoices):
        ACTIVE = "active", _("Active")
        DISABLED = "disabled", _("Disabled by an admin")
        PAUSED = "paused", _("Paused automatically")

    tenant = models.ForeignKey(
        Tenant, verbose_name=_("tenant"), on_delete=models.CASCADE, related_name="partners"
    )
    name = models.CharField(_("name"), max_length=200)
    base_url = models.URLField(_("base URL"), max_length=2048)
    incoming_message_path = models.CharField(_("incoming-message path"), max_length=500)
    send_message_path = models.CharField(_("send-message path"), max_length=500)
    channels = models.JSONField(
        _("channels"), default=list, blank=True, help_text=_("Empty means every channel.")
    )
    connect_timeout = models.FloatField(
        _("connect timeout (s)"),
        default=3.0,
        validators=[MinValueValidator(0.5), MaxValueValidator(30)],
    )
    # At most 60 s: the delivery lease (PORTAL_DELIVERY_LEASE_SECONDS, 120 s) must outlast it.
    timeout = models.FloatField(
        _("response deadline (s)"),
        default=10.0,
        validators=[MinValueValidator(0.5), MaxValueValidator(60)],
    )
    retry_schedule = models.CharField(
        _("retry schedule override"),
        max_length=500,
        blank=True,
        help_text=_(
            "Seconds to wait before each retry, comma-separated, such as <code>0,5,300</code>; "
            "empty: the portal's default schedule, set by its operators."
        ),
    )
    rate_limit = models.CharField(
        _("rate limit override"),
        max_length=32,
        blank=True,
        help_text=_(
            "Calls allowed per second or per minute, written <code>100/second</code> or "
            "<code>600/minute</code>; empty: the portal's default, set by its operators."
        ),
    )
    state = models.CharField(_("state"), max_length=16, choices=State.choices, default=State.ACTIVE)
    state_reason = models.CharField(_("state reason"), max_length=500, blank=True)
    state_changed_at = models.DateTimeField(_("state changed at"), null=True, blank=True)
    # Health counters, updated after every attempt.
    consecutive_failures = models.PositiveIntegerField(_("consecutive failures"), default=0)
    failing_since = models.DateTimeField(_("failing since"), null=True, blank=True)
    last_success_at = models.DateTimeField(_("last success at"), null=True, blank=True)
    last_failure_at = models.DateTimeField(_("last failure at"), null=True, blank=True)
    last_error = models.CharField(_("last error"), max_length=500, blank=True)
    success_count = models.PositiveBigIntegerField(_("success count"), default=0)
    failure_count = models.PositiveBigIntegerField(_("failure count"), default=0)
    latency_ms_avg = models.FloatField(_("average latency (ms)"), null=True, blank=True)
    # Alerts to the tenant's admins: at most one "deliveries went dead" mail an hour.
    dead_alert_sent_at = models.DateTimeField(_("dead alert sent at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("partner")
        verbose_name_plural = _("partners")
        ordering = ["tenant__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="partner_tenant_name_uniq")
        ]

    def __str__(self) -> str:
        return self.name

    def subscribes_to(self, channel: str) -> bool:
        return not self.channels or channel in self.channels


class SigningSecret(models.Model):
    """A `whsec_` secret a partner verifies our signatures with. During a rotation the old
    and the new secret are both live and every delivery carries both signatures."""

    partner = models.ForeignKey(
        Partner, verbose_name=_("partner"), on_delete=models.CASCADE, related_name="secrets"
    )
    secret = EncryptedTextField(_("secret"))  # encrypted at rest (integrations/encryption.py)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    expires_at = models.DateTimeField(_("expires at"), null=True, blank=True)

    class Meta:
        verbose_name = _("signing secret")
        verbose_name_plural = _("signing secrets")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.secret[:10]}… ({self.partner})"


class ApiKey(models.Model):
    """A bearer key of a partner or of the engine, stored as a prefix plus a SHA-256 hash."""

    class Kind(models.TextChoices):
        PARTNER = "partner", _("Partner key")
        ENGINE = "engine", _("Engine key")

    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices)
    partner = models.ForeignKey(
        Partner,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="api_keys",
        verbose_name=_("partner"),
    )
    tenants = models.ManyToManyField(
        Tenant,
        verbose_name=_("tenants"),
        blank=True,
        related_name="engine_keys",
        help_text=_("Engine keys only: the tenants it acts for; none means every tenant."),
    )
    name = models.CharField(_("name"), max_length=200, blank=True)
    # Engine keys only: acts for every tenant, later ones included (set when created with no
    # tenants). Explicit, so that deleting a key's tenants never widens it to all.
    all_tenants = models.BooleanField(_("all tenants"), default=False)
    prefix = models.CharField(_("prefix"), max_length=32, unique=True)
    key_hash = models.CharField(_("key hash"), max_length=64)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    expires_at = models.DateTimeField(_("expires at"), null=True, blank=True)
    revoked_at = models.DateTimeField(_("revoked at"), null=True, blank=True)
    last_used_at = models.DateTimeField(_("last used at"), null=True, blank=True)

    class Meta:
        verbose_name = _("API key")
        verbose_name_plural = _("API keys")
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(kind="partner") & Q(partner__isnull=False))
                | (Q(kind="engine") & Q(partner__isnull=True)),
                name="apikey_partner_iff_partner_kind",
            )
        ]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.get_kind_display()})"


class ManagementToken(models.Model):
    """A bearer token of the management API (SPEC §8): one tenant's, with the role it acts
    in; stored as a prefix plus a SHA-256 hash, the raw value shown once."""

    tenant = models.ForeignKey(
        Tenant,
        verbose_name=_("tenant"),
        on_delete=models.CASCADE,
        related_name="management_tokens",
    )
    role = models.CharField(_("role"), max_length=16, choices=TenantMembership.Role.choices)
    name = models.CharField(_("name"), max_length=200, blank=True)
    prefix = models.CharField(_("prefix"), max_length=32, unique=True)
    token_hash = models.CharField(_("token hash"), max_length=64)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("created by"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    expires_at = models.DateTimeField(_("expires at"), null=True, blank=True)
    revoked_at = models.DateTimeField(_("revoked at"), null=True, blank=True)
    last_used_at = models.DateTimeField(_("last used at"), null=True, blank=True)

    class Meta:
        verbose_name = _("management token")
        verbose_name_plural = _("management tokens")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name or self.prefix} ({self.role})"


class PartnerPortalLink(models.Model):
    """A single-use sign-in link to the partner portal (SPEC §9): the raw token is in the
    URL given to the partner, only its SHA-256 is kept; used once, before it expires."""

    partner = models.ForeignKey(
        Partner,
        verbose_name=_("partner"),
        on_delete=models.CASCADE,
        related_name="portal_links",
    )
    token_hash = models.CharField(_("token hash"), max_length=64, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("created by"),
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    expires_at = models.DateTimeField(_("expires at"))
    used_at = models.DateTimeField(_("used at"), null=True, blank=True)

    class Meta:
        verbose_name = _("partner portal link")
        verbose_name_plural = _("partner portal links")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"portal link of {self.partner_id} ({self.created_at:%Y-%m-%d %H:%M})"
