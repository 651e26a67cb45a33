"""Bearer-key authentication, caller-kind permissions and the partner rate limit."""

from __future__ import annotations

from django.conf import settings
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.throttling import SimpleRateThrottle

from integrations.errors import Forbidden, Unauthorized
from integrations.services.accounts import Principal, principal_authenticate
from integrations.services.management import manager_authenticate
from portal.env import parse_rate


def _bearer(request, what: str, word: str, invalid: str) -> str:
    """The credential of `Authorization: Bearer <credential>`; raises Unauthorized naming
    `what` (the credential), `word` (its placeholder) and the code `invalid`."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, raw = header.partition(" ")
    if not header:
        raise Unauthorized(
            f"Send {what} as 'Authorization: Bearer <{word}>'.", code="not_authenticated"
        )
    if scheme.lower() != "bearer" or not raw.strip():
        raise Unauthorized(f"The Authorization header must be 'Bearer <{word}>'.", code=invalid)
    return raw.strip()


class ApiKeyAuthentication(BaseAuthentication):
    """`Authorization: Bearer <key>`; sets request.user to the Principal. A view with
    `key_checked_later` may get an unchecked engine key from the process's cache
    (`principal_authenticate`): it reads the key's row itself, before anything else."""

    def authenticate(self, request):
        raw = _bearer(request, "your API key", "key", "invalid_key")
        view = request.parser_context.get("view") if request.parser_context else None
        # only for the POST that reads the key with its tenant (an OPTIONS would answer
        # without ever reading it)
        later = getattr(view, "key_checked_later", False) and request.method == "POST"
        principal = principal_authenticate(raw, check_later=later)
        return principal, principal.api_key

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class IsEngine(BasePermission):
    def has_permission(self, request, view) -> bool:
        principal: Principal = request.user
        if not principal.is_engine:
            raise Forbidden("This endpoint is for engine keys.", code="engine_key_required")
        return True


class IsPartner(BasePermission):
    def has_permission(self, request, view) -> bool:
        principal: Principal = request.user
        if principal.is_engine:
            raise Forbidden("This endpoint is for partner keys.", code="partner_key_required")
        return True


class PartnerRateThrottle(SimpleRateThrottle):
    """PORTAL_PARTNER_RATE per partner key, or the partner's own override; engine keys are
    not limited."""

    scope = "partner"

    def get_rate(self) -> str:
        return settings.PORTAL_PARTNER_RATE

    def parse_rate(self, rate):
        num, _, period = rate.partition("/")
        seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}[period[0]]
        return int(num), seconds

    def allow_request(self, request, view) -> bool:
        principal: Principal | None = request.user
        if principal is None or principal.is_engine:
            return True
        rate = settings.PORTAL_PARTNER_RATE
        if principal.partner.rate_limit.strip():
            try:
                rate = parse_rate(principal.partner.rate_limit, name="rate limit")
            except Exception:
                rate = settings.PORTAL_PARTNER_RATE
        self.rate = rate
        self.num_requests, self.duration = self.parse_rate(rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": request.user.api_key.prefix}


class ManagementTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <management token>` (SPEC §8); sets request.user to the
    Manager. Partner and engine keys are refused (401)."""

    def authenticate(self, request):
        raw = _bearer(request, "a management token", "token", "invalid_token")
        manager = manager_authenticate(raw)
        return manager, manager.token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="manage"'
