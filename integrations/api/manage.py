"""The management API (SPEC §8): everything a tenant admin does in the admin, scriptable with
a management token. One APIView per resource; bodies are checked here (names and types),
settings by the same services the admin calls, reads by integrations/selectors.py. Every
change is recorded in the admin's history (services/management.change_record).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from django.contrib.admin.models import ADDITION
from django.db.models import Max
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from integrations import payloads, selectors
from integrations.api import manage_schemas as schemas
from integrations.api.auth import ManagementTokenAuthentication
from integrations.api.schemas import ErrorSerializer
from integrations.api.views import read_json_body
from integrations.delivery import redact_url
from integrations.errors import PortalError
from integrations.models import ApiKey, Delivery, Partner, SigningSecret
from integrations.services import operations
from integrations.services.accounts import api_key_create, api_key_revoke, tenant_update
from integrations.services.management import Manager, change_record, owned
from integrations.services.partners import (
    keep_stored_password,
    partner_create,
    partner_update,
    signing_secret_rotate,
)
from integrations.services.portal import portal_link_create

TAG = ["management"]
_READ_ERRORS = {code: ErrorSerializer for code in (400, 401, 403, 404)}
_WRITE_ERRORS = {code: ErrorSerializer for code in (400, 401, 403, 404, 409, 411, 413, 415)}

# Partner fields of the API and the service settings they are.
PARTNER_FIELDS = {
    "name": ("name", str),
    "baseUrl": ("base_url", str),
    "incomingMessagePath": ("incoming_message_path", str),
    "sendMessagePath": ("send_message_path", str),
    "channels": ("channels", list),
    "connectTimeout": ("connect_timeout", float),
    "timeout": ("timeout", float),
    "retrySchedule": ("retry_schedule", str),
    "rateLimit": ("rate_limit", str),
}
PARTNER_REQUIRED = ("name", "baseUrl", "incomingMessagePath", "sendMessagePath")


def _invalid(
    errors: dict[str, list[str]], message: str = "The request is not valid."
) -> PortalError:
    return PortalError(message, code="validation_error", errors=errors)


def _body(request: Request, *, required: bool = True) -> dict[str, Any]:
    """The JSON object sent (SPEC §3.4 checks: 415, 413, 411, 400); {} for an empty body
    when the operation takes none."""
    if not required and not int(request.META.get("CONTENT_LENGTH") or 0):
        return {}
    return payloads.parse_json_object(read_json_body(request))


def _typed(body: dict[str, Any], fields: dict[str, tuple[str, type]]) -> dict[str, Any]:
    """`body` with API names turned into service names, each value of its type; unknown
    names and wrong types are one 400 naming every problem."""
    errors: dict[str, list[str]] = {}
    values: dict[str, Any] = {}
    for name, value in body.items():
        if name not in fields:
            errors[name] = ["Unknown field."]
            continue
        target, kind = fields[name]
        if kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif kind is list:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            ok = isinstance(value, kind)
        if ok and _unstorable(value):
            errors[name] = ["May not contain NUL characters or unpaired surrogates."]
            continue
        if not ok:
            expected = {float: "a number", list: "a list of strings", str: "a string"}[kind]
            errors[name] = [f"Must be {expected}."]
            continue
        values[target] = value
    if errors:
        raise _invalid(errors)
    return values


def _unstorable(value: Any) -> bool:
    """Text no database column takes (NUL, an unpaired surrogate), anywhere in `value`."""
    if isinstance(value, str):
        return bool(payloads.UNSTORABLE_RE.search(value))
    return isinstance(value, list) and any(_unstorable(v) for v in value)


def _when(value: Any, name: str) -> datetime:
    """An ISO 8601 time with its offset; 400 otherwise."""
    try:
        parsed = parse_datetime(value) if isinstance(value, str) else None
        # in UTC: PostgreSQL takes offsets up to 15:59 only (+23:42 is valid ISO 8601)
        utc = parsed.astimezone(UTC) if parsed is not None and parsed.tzinfo else None
    except (ValueError, OverflowError):  # no such time (12:99), or out of range in UTC
        utc = None
    if utc is None:
        raise _invalid({name: ["An ISO 8601 time with its offset (e.g. 2026-12-01T10:00:00Z)."]})
    return utc


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", str(selectors.MANAGE_DEFAULT_LIMIT))
    if not payloads.whole(raw) or not 1 <= int(raw) <= selectors.MANAGE_MAX_LIMIT:
        raise _invalid({"limit": [f"A whole number from 1 to {selectors.MANAGE_MAX_LIMIT}."]})
    return int(raw)


def _next_url(request: Request, cursor: int | None) -> str | None:
    if cursor is None:
        return None
    query = {k: v for k, v in request.query_params.items() if k != "cursor"}
    query["cursor"] = str(cursor)
    return request.build_absolute_uri(f"{request.path}?{urlencode(query)}")


class ManageView(APIView):
    """A management-API operation: a management token; the methods in `admin_only` need
    the admin role (403 for support)."""

    authentication_classes = [ManagementTokenAuthentication]
    permission_classes: list = []
    throttle_classes: list = []
    admin_only: frozenset[str] = frozenset()

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        if request.method in self.admin_only:
            self.manager(request).require_admin()

    @staticmethod
    def manager(request: Request) -> Manager:
        return request.user  # type: ignore[return-value]

    def partner(self, request: Request, partner_id: int) -> Partner:
        return owned(
            Partner.objects.select_related("tenant"), self.manager(request), partner_id, "partner"
        )


PARTNER_PARAM = OpenApiParameter("partner_id", OpenApiTypes.INT, OpenApiParameter.PATH)


class PartnersView(ManageView):
    admin_only = frozenset({"POST"})

    @extend_schema(
        tags=TAG,
        summary="List the tenant's partners",
        operation_id="manage_partners_list",
        parameters=[
            OpenApiParameter("limit", OpenApiTypes.INT),
            OpenApiParameter("cursor", OpenApiTypes.INT),
        ],
        responses={200: schemas.PartnerListSerializer, **_READ_ERRORS},
    )
    def get(self, request: Request) -> Response:
        limit = _limit(request)
        partners = Partner.objects.filter(tenant=self.manager(request).tenant).order_by("-id")
        cursor = request.query_params.get("cursor", "")
        if cursor:
            if not payloads.whole(cursor):
                raise _invalid({"cursor": ["Use the `next` URL of the previous page."]})
            partners = partners.filter(pk__lt=int(cursor))
        page = list(partners[: limit + 1])
        more = len(page) > limit
        page = page[:limit]
        return Response(
            {
                "results": [selectors.manage_partner(p) for p in page],
                "next": _next_url(request, page[-1].pk if more else None),
            }
        )

    @extend_schema(
        tags=TAG,
        summary="Create a partner (its API key and signing secret are shown once)",
        request=schemas.PartnerWriteSerializer,
        responses={201: schemas.PartnerCreatedSerializer, **_WRITE_ERRORS},
        examples=[
            OpenApiExample(
                "A partner",
                value={
                    "name": "Helpdesk",
                    "baseUrl": "https://desk.example.com/hooks",
                    "incomingMessagePath": "/incoming",
                    "sendMessagePath": "/send",
                    "channels": ["whatsapp"],
                },
                request_only=True,
            )
        ],
    )
    def post(self, request: Request) -> Response:
        values = _typed(_body(request), PARTNER_FIELDS)
        missing = [n for n in PARTNER_REQUIRED if PARTNER_FIELDS[n][0] not in values]
        if missing:
            raise _invalid({n: ["This field is required."] for n in missing})
        manager = self.manager(request)
        partner, api_key, secret = partner_create(tenant=manager.tenant, **values)
        change_record(manager=manager, obj=partner, message="Created.", action=ADDITION)
        shown = selectors.manage_partner(partner)
        return Response({**shown, "apiKey": api_key, "signingSecret": secret}, status=201)


class PartnerView(ManageView):
    admin_only = frozenset({"PATCH"})

    @extend_schema(
        tags=TAG,
        summary="A partner with its state and health",
        parameters=[PARTNER_PARAM],
        responses={200: schemas.PartnerDetailSerializer, **_READ_ERRORS},
    )
    def get(self, request: Request, partner_id: int) -> Response:
        return Response(selectors.manage_partner(self.partner(request, partner_id), health=True))

    @extend_schema(
        tags=TAG,
        summary="Change a partner's name, URL, paths, channels or delivery settings",
        parameters=[PARTNER_PARAM],
        request=schemas.PartnerPatchSerializer,
        examples=[
            OpenApiExample(
                "New paths and a longer timeout",
                value={"incomingMessagePath": "/v2/incoming", "timeout": 20},
                request_only=True,
            )
        ],
        responses={200: schemas.PartnerDetailSerializer, **_WRITE_ERRORS},
    )
    def patch(self, request: Request, partner_id: int) -> Response:
        partner = self.partner(request, partner_id)
        body = _body(request)
        values = _typed(body, PARTNER_FIELDS)
        if values:
            partner_update(partner=partner, **values)
            changed = ", ".join(sorted(body))
            change_record(manager=self.manager(request), obj=partner, message=f"Changed {changed}.")
        return Response(selectors.manage_partner(partner, health=True))


class _PartnerAction(ManageView):
    admin_only = frozenset({"POST"})

    def act(self, request: Request, partner: Partner) -> str:
        raise NotImplementedError

    def post(self, request: Request, partner_id: int) -> Response:
        partner = self.partner(request, partner_id)
        message = self.act(request, partner)
        change_record(manager=self.manager(request), obj=partner, message=message)
        partner.refresh_from_db()
        return Response(selectors.manage_partner(partner, health=True))


class PartnerDisableView(_PartnerAction):
    @extend_schema(
        tags=TAG,
        summary="Disable a partner: its API calls get 403 and nothing is sent to it",
        parameters=[PARTNER_PARAM],
        request=None,
        responses={200: schemas.PartnerDetailSerializer, **_WRITE_ERRORS},
    )
    def post(self, request: Request, partner_id: int) -> Response:
        return super().post(request, partner_id)

    def act(self, request: Request, partner: Partner) -> str:
        body = _typed(_body(request, required=False), {"reason": ("reason", str)})
        operations.partner_disable(partner=partner, reason=body.get("reason", "")[:500])
        return "Disabled."


class PartnerResumeView(_PartnerAction):
    @extend_schema(
        tags=TAG,
        summary="Resume a paused or disabled partner; its waiting deliveries go out in order",
        parameters=[PARTNER_PARAM],
        request=None,
        responses={200: schemas.PartnerDetailSerializer, **_WRITE_ERRORS},
    )
    def post(self, request: Request, partner_id: int) -> Response:
        return super().post(request, partner_id)

    def act(self, request: Request, partner: Partner) -> str:
        operations.partner_resume(partner=partner)
        return "Resumed."


class KeysView(ManageView):
    admin_only = frozenset({"POST"})

    @extend_schema(
        tags=TAG,
        summary="A partner's API keys (prefixes only)",
        parameters=[PARTNER_PARAM],
        responses={200: schemas.KeyListSerializer, **_READ_ERRORS},
    )
    def get(self, request: Request, partner_id: int) -> Response:
        partner = self.partner(request, partner_id)
        keys = ApiKey.objects.filter(partner=partner).order_by("-created_at", "-id")
        return Response({"results": [selectors.manage_key(k) for k in keys], "next": None})

    @extend_schema(
        tags=TAG,
        summary="A new API key for the partner (shown once); the others stay valid",
        parameters=[PARTNER_PARAM],
        request=schemas.KeyWriteSerializer,
        examples=[
            OpenApiExample(
                "A key for a year",
                value={"name": "production 2027", "expiresAt": "2027-12-01T00:00:00Z"},
                request_only=True,
            )
        ],
        responses={201: schemas.KeyCreatedSerializer, **_WRITE_ERRORS},
    )
    def post(self, request: Request, partner_id: int) -> Response:
        partner = self.partner(request, partner_id)
        body = _typed(
            _body(request, required=False),
            {"name": ("name", str), "expiresAt": ("expires_at", str)},
        )
        expires_at = _when(body["expires_at"], "expiresAt") if "expires_at" in body else None
        if expires_at is not None and expires_at <= timezone.now():
            raise _invalid({"expiresAt": ["Must be in the future."]})
        key, raw = api_key_create(
            kind=ApiKey.Kind.PARTNER,
            partner=partner,
            name=body.get("name", "")[:200],
            expires_at=expires_at,
        )
        change_record(
            manager=self.manager(request), obj=partner, message=f"Added API key {key.prefix}."
        )
        return Response({**selectors.manage_key(key), "apiKey": raw}, status=201)


class KeyView(ManageView):
    admin_only = frozenset({"DELETE"})

    @extend_schema(
        tags=TAG,
        summary="Revoke an API key: it fails at once",
        parameters=[
            PARTNER_PARAM,
            OpenApiParameter("prefix", OpenApiTypes.STR, OpenApiParameter.PATH),
        ],
        responses={204: None, **_READ_ERRORS},
    )
    def delete(self, request: Request, partner_id: int, prefix: str) -> Response:
        partner = self.partner(request, partner_id)
        key = (
            ApiKey.objects.filter(partner=partner, prefix=prefix).first()
            if selectors.storable(prefix)
            else None
        )
        if key is None:
            raise PortalError(f"No key {prefix!r}.", code="key_not_found").with_status(404)
        api_key_revoke(key=key)
        change_record(
            manager=self.manager(request), obj=partner, message=f"Revoked API key {prefix}."
        )
        return Response(status=204)


class SecretsView(ManageView):
    admin_only = frozenset({"POST"})

    @extend_schema(
        tags=TAG,
        summary="Rotate the signing secret (the old one signs too for 24 h)",
        parameters=[PARTNER_PARAM],
        request=None,
        responses={201: schemas.SecretCreatedSerializer, **_WRITE_ERRORS},
    )
    def post(self, request: Request, partner_id: int) -> Response:
        partner = self.partner(request, partner_id)
        secret = signing_secret_rotate(partner=partner)
        previous = (
            SigningSecret.objects.filter(partner=partner)
            .exclude(pk=secret.pk)
            .aggregate(at=Max("expires_at"))["at"]
        )
        change_record(
            manager=self.manager(request), obj=partner, message="Rotated the signing secret."
        )
        return Response(
            {"signingSecret": secret.secret, "previousExpiresAt": selectors._iso(previous)},
            status=201,
        )


class TestEventView(ManageView):
    @extend_schema(
        tags=TAG,
        summary="Send a signed test event to the partner now and show its answer",
        parameters=[PARTNER_PARAM],
        request=None,
        responses={200: schemas.ProbeSerializer, **_WRITE_ERRORS},
    )
    def post(self, request: Request, partner_id: int) -> Response:
        probe = operations.partner_send_test_event(partner=self.partner(request, partner_id))
        return Response(
            {
                "statusCode": probe.status_code,
                "outcome": probe.outcome,
                "latencyMs": probe.latency_ms,
                "responseExcerpt": probe.response_excerpt,
                "error": probe.error,
            }
        )


class RecoverView(ManageView):
    @extend_schema(
        tags=TAG,
        summary="Send again every dead delivery of the partner created in [since, until)",
        parameters=[PARTNER_PARAM],
        request=schemas.WindowSerializer,
        examples=[
            OpenApiExample(
                "Last night's outage",
                value={"since": "2026-12-01T00:00:00+07:00", "until": "2026-12-01T06:00:00+07:00"},
                request_only=True,
            )
        ],
        responses={200: schemas.QueuedSerializer, **_WRITE_ERRORS},
    )
    def post(self, request: Request, partner_id: int) -> Response:
        partner = self.partner(request, partner_id)
        body = _typed(_body(request), {"since": ("since", str), "until": ("until", str)})
        errors: dict[str, list[str]] = {}
        window: dict[str, datetime] = {}
        for name in ("since", "until"):
            if name not in body:
                errors[name] = ["This field is required."]
                continue
            try:
                window[name] = _when(body[name], name)
            except PortalError as exc:
                errors.update(exc.errors)
        if errors:
            raise _invalid(errors)
        since, until = window["since"], window["until"]
        if since >= until:
            raise _invalid({"until": ["Must be after `since`."]})
        queued = operations.deliveries_recover(partner=partner, since=since, until=until)
        change_record(
            manager=self.manager(request),
            obj=partner,
            message=f"Recovered {queued} dead deliveries created in [{since}, {until}).",
        )
        return Response({"queued": queued})


class PortalLinksView(ManageView):
    admin_only = frozenset({"POST"})

    @extend_schema(
        tags=TAG,
        summary="A single-use sign-in link to the partner portal (SPEC §9)",
        parameters=[PARTNER_PARAM],
        request=None,
        responses={201: schemas.PortalLinkSerializer, **_WRITE_ERRORS},
    )
    def post(self, request: Request, partner_id: int) -> Response:
        partner = self.partner(request, partner_id)
        manager = self.manager(request)
        path, expires_at = portal_link_create(partner=partner, created_by=manager.token.created_by)
        change_record(manager=manager, obj=partner, message="Partner portal sign-in link given.")
        return Response(
            {"url": request.build_absolute_uri(path), "expiresAt": selectors._iso(expires_at)},
            status=201,
        )


# --- deliveries and tickets -------------------------------------------------------------------

DELIVERY_PARAM = OpenApiParameter("delivery_id", OpenApiTypes.INT, OpenApiParameter.PATH)


class DeliveriesView(ManageView):
    @extend_schema(
        tags=TAG,
        summary="The tenant's deliveries, newest first",
        operation_id="manage_deliveries_list",
        examples=[
            OpenApiExample(
                "A partner's dead deliveries",
                value={
                    "results": [
                        {
                            "deliveryId": 4211,
                            "eventId": "3be851eb-8cac-4b42-a7fd-8d1dfd902e11",
                            "ticketNumber": "294c9ea88f7e649f8c37ae895ebab247",
                            "target": "partner:7",
                            "partnerId": 7,
                            "endpoint": "incoming",
                            "status": "dead",
                            "attempts": 8,
                            "nextAttemptAt": None,
                            "lastStatusCode": 503,
                            "lastError": "HTTP 503",
                            "createdAt": "2026-12-01T03:12:44.120000Z",
                            "deliveredAt": None,
                        }
                    ],
                    "next": "https://portal.example.com/api/v1/manage/deliveries?status=dead&partnerId=7&cursor=4211",
                },
                response_only=True,
            )
        ],
        parameters=[
            OpenApiParameter("status", OpenApiTypes.STR, enum=Delivery.Status.values),
            OpenApiParameter("partnerId", OpenApiTypes.INT),
            OpenApiParameter("ticketNumber", OpenApiTypes.STR),
            OpenApiParameter("eventId", OpenApiTypes.UUID),
            OpenApiParameter("since", OpenApiTypes.DATETIME),
            OpenApiParameter("until", OpenApiTypes.DATETIME),
            OpenApiParameter("limit", OpenApiTypes.INT),
            OpenApiParameter("cursor", OpenApiTypes.INT),
        ],
        responses={200: schemas.DeliveryListSerializer, **_READ_ERRORS},
    )
    def get(self, request: Request) -> Response:
        import uuid

        q = request.query_params
        errors: dict[str, list[str]] = {}
        status = q.get("status", "")
        if status and status not in Delivery.Status.values:
            errors["status"] = [f"One of {', '.join(Delivery.Status.values)}."]
        partner_id = q.get("partnerId", "")
        if partner_id and not payloads.whole(partner_id):
            errors["partnerId"] = ["A partner id (a whole number)."]
        event_id = None
        if q.get("eventId"):
            try:
                event_id = uuid.UUID(q["eventId"])
            except ValueError:
                errors["eventId"] = ["An event id (a UUID)."]
        cursor = q.get("cursor", "")
        if cursor and not payloads.whole(cursor):
            errors["cursor"] = ["Use the `next` URL of the previous page."]
        if errors:
            raise _invalid(errors)
        filters = selectors.DeliveryFilters(
            status=status,
            partner_id=int(partner_id) if partner_id else None,
            ticket_number=q.get("ticketNumber", ""),
            event_id=event_id,
            since=_when(q["since"], "since") if q.get("since") else None,
            until=_when(q["until"], "until") if q.get("until") else None,
        )
        results, more = selectors.manage_deliveries(
            tenant=self.manager(request).tenant,
            filters=filters,
            before=int(cursor) if cursor else None,
            limit=_limit(request),
        )
        return Response({"results": results, "next": _next_url(request, more)})


class _DeliveryMixin(ManageView):
    def delivery(self, request: Request, delivery_id: int) -> Delivery:
        return owned(
            Delivery.objects.select_related("tenant", "ticket"),
            self.manager(request),
            delivery_id,
            "delivery",
        )


class DeliveryView(_DeliveryMixin):
    @extend_schema(
        tags=TAG,
        summary="A delivery and its attempt log",
        parameters=[DELIVERY_PARAM],
        responses={200: schemas.DeliveryDetailSerializer, **_READ_ERRORS},
    )
    def get(self, request: Request, delivery_id: int) -> Response:
        return Response(selectors.manage_delivery_detail(self.delivery(request, delivery_id)))


class RedeliverView(_DeliveryMixin):
    @extend_schema(
        tags=TAG,
        summary="Send a finished delivery again (same webhook-id, fresh retry schedule)",
        parameters=[DELIVERY_PARAM],
        request=None,
        responses={200: schemas.DeliveryDetailSerializer, **_WRITE_ERRORS},
    )
    def post(self, request: Request, delivery_id: int) -> Response:
        delivery = operations.delivery_redeliver(delivery=self.delivery(request, delivery_id))
        change_record(manager=self.manager(request), obj=delivery, message="Redelivered.")
        return Response(selectors.manage_delivery_detail(delivery))


class CancelView(_DeliveryMixin):
    admin_only = frozenset({"POST"})

    @extend_schema(
        tags=TAG,
        summary="Stop a waiting delivery for good (the next one of its ticket goes on)",
        parameters=[DELIVERY_PARAM],
        request=None,
        responses={200: schemas.DeliveryDetailSerializer, **_WRITE_ERRORS},
    )
    def post(self, request: Request, delivery_id: int) -> Response:
        delivery = operations.delivery_cancel(delivery=self.delivery(request, delivery_id))
        change_record(manager=self.manager(request), obj=delivery, message="Cancelled.")
        return Response(selectors.manage_delivery_detail(delivery))


class TicketView(ManageView):
    @extend_schema(
        tags=TAG,
        summary="A ticket and its timeline: every event in order with its deliveries",
        parameters=[OpenApiParameter("ticket_number", OpenApiTypes.STR, OpenApiParameter.PATH)],
        responses={200: schemas.TicketSerializer, **_READ_ERRORS},
    )
    def get(self, request: Request, ticket_number: str) -> Response:
        return Response(
            selectors.manage_ticket(
                tenant=self.manager(request).tenant, ticket_number=ticket_number
            )
        )


class TenantView(ManageView):
    admin_only = frozenset({"PATCH"})

    def shown(self, manager: Manager) -> dict[str, Any]:
        tenant = manager.tenant
        return {
            "owner": tenant.owner,
            "name": tenant.name,
            "timeZone": tenant.time_zone,
            "operationsUrl": redact_url(tenant.operations_url),
            "role": manager.role,
        }

    @extend_schema(
        tags=TAG,
        summary="The token's tenant and role",
        responses={200: schemas.TenantSerializer, **_READ_ERRORS},
    )
    def get(self, request: Request) -> Response:
        return Response(self.shown(self.manager(request)))

    @extend_schema(
        tags=TAG,
        summary="Set the operations URL (SPEC §10); a new operations signing secret is shown once",
        request=schemas.TenantPatchSerializer,
        examples=[
            OpenApiExample(
                "Operations webhooks to the on-call tool",
                value={"operationsUrl": "https://oncall.example.com/hooks/portal"},
                request_only=True,
            )
        ],
        responses={200: schemas.TenantPatchedSerializer, **_WRITE_ERRORS},
    )
    def patch(self, request: Request) -> Response:
        manager = self.manager(request)
        values = _typed(_body(request), {"operationsUrl": ("operations_url", str)})
        tenant = manager.tenant
        if "operations_url" in values:  # the URL as GET shows it keeps its stored password
            values["operations_url"] = keep_stored_password(
                values["operations_url"], tenant.operations_url
            )
        had_secret = bool(tenant.operations_signing_secret)
        shown: dict[str, Any] = {}
        if values:
            tenant_update(tenant=tenant, **values)
            change_record(manager=manager, obj=tenant, message="Changed operationsUrl.")
            if tenant.operations_signing_secret and not had_secret:
                shown["operationsSigningSecret"] = str(tenant.operations_signing_secret)
        return Response({**self.shown(manager), **shown})
