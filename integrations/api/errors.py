"""The one error envelope (SPEC §3.4) for every failure the API can answer."""

from __future__ import annotations

import logging
import math

from django.core.exceptions import RequestDataTooBig
from django.http import Http404, JsonResponse
from django.views import csrf, defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions
from rest_framework.response import Response

from integrations.errors import PortalError
from integrations.payloads import PayloadError

logger = logging.getLogger(__name__)

_DRF_CODES = {
    exceptions.ParseError: "invalid_json",
    exceptions.AuthenticationFailed: "invalid_key",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.PermissionDenied: "forbidden",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "rate_limited",
    exceptions.ValidationError: "validation_error",
}


def envelope(code: str, message: str, errors: dict | None = None) -> dict:
    return {"status": "error", "code": code, "message": message, "errors": errors or {}}


def _drf_errors(detail) -> dict[str, list[str]]:
    if isinstance(detail, dict):
        return {
            str(k): [str(v) for v in (vs if isinstance(vs, list) else [vs])]
            for k, vs in detail.items()
        }
    if isinstance(detail, list):
        return {"non_field_errors": [str(v) for v in detail]}
    return {}


def api_exception_handler(exc, context) -> Response:
    """DRF's EXCEPTION_HANDLER: map every exception to the envelope; never an HTML 500."""
    if isinstance(exc, PayloadError):
        return Response(envelope(exc.code, exc.message, exc.errors), status=400)
    if isinstance(exc, PortalError):
        headers = {"WWW-Authenticate": 'Bearer realm="api"'} if exc.status_code == 401 else None
        return Response(
            envelope(exc.code, exc.message, exc.errors), status=exc.status_code, headers=headers
        )
    if isinstance(exc, RequestDataTooBig):
        return Response(
            envelope("payload_too_large", "The body is larger than 256 KiB."), status=413
        )
    if isinstance(exc, Http404):
        return Response(envelope("not_found", "Not found."), status=404)
    if isinstance(exc, exceptions.APIException):
        code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
        headers = {}
        if isinstance(exc, exceptions.Throttled):
            wait = math.ceil(exc.wait or 1)
            headers["Retry-After"] = str(wait)
            message = f"Too many requests; retry in {wait} s."
        else:
            message = (
                str(exc.detail)
                if not isinstance(exc.detail, (dict, list))
                else ("The request is not valid.")
            )
        return Response(
            envelope(code, message, _drf_errors(exc.detail)),
            status=exc.status_code,
            headers=headers,
        )
    logger.exception("unhandled API error", exc_info=exc)
    return Response(
        envelope("internal_error", "An unexpected error occurred; it was logged."), status=500
    )


def handler404(request, exception=None):
    """JSON envelope for API paths, so a wrong URL still gets it; HTML elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse(envelope("not_found", f"No endpoint at {request.path}."), status=404)
    return defaults.page_not_found(request, exception)


@csrf_exempt
def api_not_found(request, *args, **kwargs):
    """Every other path under /api/, whatever the method: the JSON 404 envelope (exempt from
    CSRF, which would otherwise answer a POST with an HTML 403 first)."""
    return handler404(request)


def csrf_failure(request, reason: str = ""):
    """CSRF_FAILURE_VIEW: the envelope under /api/ (the API's own views are exempt; this is
    a safety net), Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse(
            envelope("csrf_failed", "This endpoint takes bearer keys, not browser sessions."),
            status=403,
        )
    return csrf.csrf_failure(request, reason)


def handler500(request):
    if request.path.startswith("/api/"):
        return JsonResponse(
            envelope("internal_error", "An unexpected error occurred; it was logged."), status=500
        )
    return defaults.server_error(request)
