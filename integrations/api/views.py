"""One APIView per operation (SPEC §4). Parsing in payloads, writes in services, reads in
selectors; the views only glue them to HTTP."""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlencode

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from integrations import payloads, selectors
from integrations.api import schemas
from integrations.api.auth import (
    ApiKeyAuthentication,
    IsEngine,
    IsPartner,
    PartnerRateThrottle,
)
from integrations.errors import PortalError
from integrations.services import events as event_services
from integrations.services.accounts import Principal, principal_checked
from integrations.services.events import Route
from integrations.services.idempotency import IdempotencyRequest, request_fingerprint

logger = logging.getLogger(__name__)

_ERRORS = {code: schemas.ErrorSerializer for code in (400, 401, 403, 404, 409, 411, 413, 415, 429)}
_GET_ERRORS = {code: schemas.ErrorSerializer for code in (400, 401, 403, 404, 429)}
IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    required=False,
    description="Up to 255 characters; a repeat within 24 h returns the first answer.",
)


class PortalView(APIView):
    authentication_classes = [ApiKeyAuthentication]
    throttle_classes = [PartnerRateThrottle]


class _IngestView(PortalView):
    """POST an event: content checks, parse and validate everything, then one service call
    that accepts it (transaction, Idempotency-Key) and says what to answer."""

    success_status = 200
    route: Route

    def parse(self, data: dict) -> payloads.MessagePayload | payloads.CommandPayload:
        raise NotImplementedError

    def post(self, request: Request) -> Response:
        raw = read_json_body(request)
        key = request.META.get("HTTP_IDEMPOTENCY_KEY", "")
        if len(key) > payloads.MAX_IDEMPOTENCY_KEY:
            raise PortalError(
                "Idempotency-Key may have at most 255 characters.",
                code="validation_error",
                errors={"Idempotency-Key": ["Too long (max 255)."]},
            )
        payload = self.parse(payloads.parse_json_object(raw))
        principal, idempotency = request.user, None
        if key:  # a replay answers at once: the key's row is read first
            principal = principal_checked(principal)
            idempotency = IdempotencyRequest(
                holder=principal.holder,
                key=key,
                fingerprint=request_fingerprint(request.method, request.path, raw),
            )
        answer = event_services.event_accept(
            route=self.route,
            principal=principal,
            payload=payload,
            raw_body=raw,
            status=self.success_status,
            idempotency=idempotency,
        )
        headers = {"Idempotent-Replayed": "true"} if answer.replayed else None
        return Response(answer.body, status=answer.status, headers=headers)

    def handle_exception(self, exc: Exception) -> Response:
        """An engine key taken unchecked from the cache (`key_checked_later`) is checked
        before any error is answered: a revoked key gets its 401, not the body's 400."""
        principal = self.request.__dict__.get("_user") if self.request is not None else None
        if isinstance(principal, Principal) and not principal.checked:
            try:
                principal_checked(principal)
            except PortalError as refused:
                exc = refused
            except Exception:  # the key could not be read (database down): the first error
                logger.warning("could not check the API key again", exc_info=True)
        return super().handle_exception(exc)


def read_json_body(request: Request) -> bytes:
    """The raw body, after the checks SPEC §3.4 answers with 415 and 413."""
    content_type = request.META.get("CONTENT_TYPE", "")
    media_type, _, params = content_type.partition(";")
    if media_type.strip().lower() != "application/json":
        raise PortalError(
            "Send the body as Content-Type: application/json.", code="unsupported_media_type"
        ).with_status(415)
    charset = next(
        (
            p.split("=", 1)[1].strip().strip('"').lower()
            for p in params.split(";")
            if p.strip().lower().startswith("charset=")
        ),
        "utf-8",
    )
    if charset not in ("utf-8", "utf8"):
        raise PortalError(
            "The body must be UTF-8 JSON.", code="unsupported_media_type"
        ).with_status(415)
    if "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
        # WSGI gives Django no length for a chunked body, so it would read as empty and be
        # refused as "not JSON"; say what is actually wrong instead.
        raise PortalError(
            "Send the body with a Content-Length header (chunked request bodies are not accepted).",
            code="length_required",
        ).with_status(411)
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > settings.PORTAL_MAX_BODY_BYTES:
        raise PortalError("The body is larger than 256 KiB.", code="payload_too_large").with_status(
            413
        )
    try:
        return request.body
    except RequestDataTooBig:
        raise PortalError("The body is larger than 256 KiB.", code="payload_too_large").with_status(
            413
        ) from None


def _ingest_schema(request_serializer, example, status: int, summary: str) -> Callable:
    return extend_schema(
        summary=summary,
        request=request_serializer,
        examples=[example],
        parameters=[IDEMPOTENCY_HEADER],
        responses={status: schemas.AcceptedSerializer, **_ERRORS},
    )


class EngineIncomingView(_IngestView):
    permission_classes = [IsEngine]
    success_status = 202
    route = Route.ENGINE_INCOMING
    # the hot path: a known engine key's row is read with the event's tenant, one SELECT
    # (Principal.tenant_targets_for_owner)
    key_checked_later = True

    @_ingest_schema(
        schemas.IncomingEventSerializer,
        schemas.INCOMING_EXAMPLE,
        202,
        "Engine: a customer's message (incoming event)",
    )
    def post(self, request: Request) -> Response:
        return super().post(request)

    def parse(self, data: dict) -> payloads.MessagePayload:
        return payloads.parse_incoming(data)


class EngineOutgoingView(_IngestView):
    permission_classes = [IsEngine]
    success_status = 202
    route = Route.ENGINE_OUTGOING

    @_ingest_schema(
        schemas.EngineOutgoingEventSerializer,
        schemas.OUTGOING_EXAMPLE,
        202,
        "Engine: a message the platform sent (mirrored to partners)",
    )
    def post(self, request: Request) -> Response:
        return super().post(request)

    def parse(self, data: dict) -> payloads.MessagePayload:
        return payloads.parse_outgoing(data, from_engine=True)


class PartnerOutgoingView(_IngestView):
    permission_classes = [IsPartner]
    route = Route.PARTNER_OUTGOING

    @_ingest_schema(
        schemas.PartnerOutgoingEventSerializer,
        schemas.OUTGOING_EXAMPLE,
        200,
        "Partner: reply to the customer on a ticket",
    )
    def post(self, request: Request) -> Response:
        return super().post(request)

    def parse(self, data: dict) -> payloads.MessagePayload:
        return payloads.parse_outgoing(data, from_engine=False)


class PartnerCommandView(_IngestView):
    permission_classes = [IsPartner]
    route = Route.COMMAND

    @_ingest_schema(
        schemas.CommandEventSerializer,
        schemas.COMMAND_EXAMPLE,
        200,
        "Partner: ticket command (close)",
    )
    def post(self, request: Request) -> Response:
        return super().post(request)

    def parse(self, data: dict) -> payloads.CommandPayload:
        return payloads.parse_command(data)


def _int_param(request: Request, name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if not minimum <= value <= maximum:
        raise PortalError(
            f"{name} must be a whole number from {minimum} to {maximum}.",
            code="validation_error",
            errors={name: [f"Must be from {minimum} to {maximum}."]},
        )
    return value


class TicketMessagesView(PortalView):
    permission_classes = [IsPartner]

    @extend_schema(
        summary="Partner: a ticket's conversation history, oldest first",
        parameters=[
            OpenApiParameter("limit", int, description="1 to 100, default 50."),
            OpenApiParameter("after", int, description="Cursor: from the `next` URL."),
        ],
        responses={200: schemas.HistorySerializer, **_GET_ERRORS},
    )
    def get(self, request: Request, ticket_number: str) -> Response:
        limit = _int_param(
            request,
            "limit",
            selectors.HISTORY_DEFAULT_LIMIT,
            minimum=1,
            maximum=selectors.HISTORY_MAX_LIMIT,
        )
        after = _int_param(request, "after", 0, minimum=0, maximum=2**62)
        page = selectors.ticket_history(
            principal=request.user, ticket_number=ticket_number, after=after, limit=limit
        )
        next_url = None
        if page.next_after is not None:
            query = urlencode({"limit": limit, "after": page.next_after})
            next_url = request.build_absolute_uri(f"{request.path}?{query}")
        return Response({"results": page.results, "next": next_url})


class ContactView(PortalView):
    permission_classes = [IsPartner]

    @extend_schema(
        summary="Partner: a contact and its tickets",
        responses={200: schemas.ContactSerializer, **_GET_ERRORS},
    )
    def get(self, request: Request, contact_id: str) -> Response:
        return Response(selectors.contact_detail(principal=request.user, contact_id=contact_id))


class EventDetailView(PortalView):
    permission_classes = []

    @extend_schema(
        summary="One event and the status of its deliveries",
        responses={200: schemas.EventDetailSerializer, **_GET_ERRORS},
    )
    def get(self, request: Request, event_id: str) -> Response:
        return Response(selectors.event_detail(principal=request.user, event_id=event_id))
