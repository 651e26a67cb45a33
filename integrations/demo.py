"""Stand-ins for a partner and an engine, so the embedded demo delivers somewhere real.

Only mounted when DEBUG is on or PORTAL_DEMO_ENDPOINTS is set; they answer the guide's
webhook reply `{"status": "success"}` and log what they received.
"""

import logging

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

logger = logging.getLogger(__name__)


@csrf_exempt
@require_POST
def demo_receiver(request, role: str, path: str) -> JsonResponse:
    logger.info(
        "demo %s received /%s webhook-id=%s: %s",
        role,
        path,
        request.headers.get("webhook-id"),
        request.body[:500],
    )
    return JsonResponse({"status": "success"})
