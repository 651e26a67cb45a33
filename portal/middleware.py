"""A request id for every request (SPEC §10): the caller's X-Request-ID when it is a sensible
one, else a new one; bound to the request's log lines, stored with the event the request
accepts (so the worker's lines about its deliveries carry it too) and echoed back."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from integrations import logs

HEADER = "X-Request-ID"


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = logs.request_id_from(request.headers.get(HEADER))
        # also on the request: Django logs a 4xx or 5xx answer ("Unauthorized: /api/…") after
        # this returns, with the request on the record (integrations.logs.ContextFilter)
        request.request_id = request_id  # type: ignore[attr-defined]
        token = logs.bind(request_id=request_id)
        try:
            response = self.get_response(request)
        finally:
            logs.unbind(token)
        response[HEADER] = request_id
        return response
