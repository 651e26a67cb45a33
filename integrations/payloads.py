"""The wire formats of SPEC §3: parse, validate, normalize and render.

No ORM here. Parsers take the decoded JSON object and return frozen dataclasses or raise
`PayloadError` with every problem found, keyed by the wire field name, so the API can answer
one 400 that lists them all. Renderers build the normalized payloads that are stored with the
event and sent on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

MESSAGE_TYPES = ("text", "image", "video", "audio", "file", "location")
MEDIA_TYPES = frozenset({"image", "video", "audio", "file"})
STICKER = "sticker"
COMMAND_EVENTS = ("close",)

MAX_TICKET_NUMBER = 100
MAX_ID = 255
MAX_NAME = 500
MAX_CHANNEL = 50
MAX_MESSAGE = 4096
MAX_MEDIA_LINK = 2048
MAX_OPTIONAL = 255
MAX_IDEMPOTENCY_KEY = 255
# createdDate years that survive the conversion between any time zone and UTC.
MIN_CREATED_YEAR = 2
MAX_CREATED_YEAR = 9998
MAX_JSON_DEPTH = 32

CREATED_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"
CREATED_DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}$"
_CREATED_DATE_RE = re.compile(CREATED_DATE_PATTERN)
CHANNEL_PATTERN = r"^[a-z][a-z0-9_.-]*$"
_CHANNEL_RE = re.compile(CHANNEL_PATTERN)
_WHITESPACE_RE = re.compile(r"\s")
_LOCATION_RE = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*,\s*([+-]?\d+(?:\.\d+)?)\s*$")
# Valid JSON can carry "\u0000" and unpaired surrogates ("\ud800"), but neither can be stored
# (PostgreSQL text refuses NUL) nor encoded as UTF-8 to be sent on.
_UNSTORABLE_RE = re.compile("[\x00\ud800-\udfff]")
UNSTORABLE_RE = _UNSTORABLE_RE  # (the services' field rules and the management API use it)


def whole(raw: str) -> bool:
    """A whole number `int()` takes and a database column holds (not "²", not 5,000 digits)."""
    return raw.isascii() and raw.isdigit() and len(raw) <= 18


class PayloadError(Exception):
    """The body is not acceptable; `errors` maps each wire field to its problems."""

    def __init__(
        self,
        errors: dict[str, list[str]],
        *,
        code: str = "validation_error",
        message: str = "The request body is not valid.",
    ) -> None:
        super().__init__(message)
        self.errors = errors
        self.code = code
        self.message = message


# --- JSON -------------------------------------------------------------------------------------


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a decoded JSON value, stopping as soon as it passes ``limit``."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, level + 1) for child in item)
    return deepest


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a request body that must be one UTF-8 JSON object.

    Raises PayloadError (code `invalid_json`) for bad UTF-8, bad JSON, duplicate keys, NaN or
    Infinity, numbers too long to convert, nesting deeper than MAX_JSON_DEPTH; and (code
    `invalid_body`) when the JSON is valid but not an object.
    """
    try:
        text = raw.decode("utf-8")
        data = json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except UnicodeDecodeError:
        raise PayloadError(
            {}, code="invalid_json", message="The body is not valid UTF-8."
        ) from None
    except (ValueError, RecursionError) as exc:
        detail = str(exc) if isinstance(exc, ValueError) else "nesting too deep"
        raise PayloadError(
            {}, code="invalid_json", message=f"The body is not valid JSON: {detail[:200]}."
        ) from None
    if not isinstance(data, dict):
        raise PayloadError({}, code="invalid_body", message="The body must be a JSON object.")
    if _depth(data, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise PayloadError(
            {}, code="invalid_json", message=f"The body nests deeper than {MAX_JSON_DEPTH} levels."
        )
    return data


# --- Field checks -----------------------------------------------------------------------------


class _Checker:
    """Collects problems per field while reading values out of a decoded body."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.errors: dict[str, list[str]] = {}

    def fail(self, field: str, problem: str) -> None:
        self.errors.setdefault(field, []).append(problem)

    def string(
        self,
        field: str,
        *,
        required: bool = True,
        blank: bool = False,
        max_length: int = MAX_ID,
        aliases: tuple[str, ...] = (),
    ) -> str:
        for name in (field, *aliases):
            if name in self.data:
                value = self.data[name]
                break
        else:
            if required:
                self.fail(field, "This field is required.")
            return ""
        if value is None and not required:
            return ""
        if not isinstance(value, str):
            self.fail(field, "Must be a string.")
            return ""
        if _UNSTORABLE_RE.search(value):
            self.fail(field, "May not contain NUL characters or unpaired surrogates.")
            return ""
        if not blank and not value.strip():
            self.fail(field, "May not be blank.")
            return ""
        if len(value) > max_length:
            self.fail(field, f"Ensure this field has no more than {max_length} characters.")
            return ""
        return value

    def raise_if_failed(self) -> None:
        if self.errors:
            raise PayloadError(self.errors)


def _check_ticket_number(c: _Checker) -> str:
    value = c.string("ticketNumber", max_length=MAX_TICKET_NUMBER)
    if value and _WHITESPACE_RE.search(value):
        c.fail("ticketNumber", "May not contain whitespace.")
    return value


def _check_channel(c: _Checker) -> str:
    value = c.string("channel", max_length=MAX_CHANNEL)
    if value and not _CHANNEL_RE.match(value):
        c.fail("channel", "Must be a lower-case channel name such as whatsapp or telegram.")
    return value


def _check_message(c: _Checker, *, allow_sticker: bool) -> tuple[str, str, str]:
    """Check messageType, message and mediaLink together; return them normalized."""
    raw_type = c.string("messageType", max_length=32)
    message = c.string("message", blank=True, max_length=MAX_MESSAGE)
    media_link = c.string("mediaLink", blank=True, max_length=MAX_MEDIA_LINK)
    message_type = raw_type.lower()
    allowed = (*MESSAGE_TYPES, STICKER) if allow_sticker else MESSAGE_TYPES
    if raw_type and message_type not in allowed:
        c.fail("messageType", f"Must be one of: {', '.join(allowed)}.")
        return message_type, message, media_link
    if "message" not in c.errors and "messageType" not in c.errors:
        if message_type == "text" and not message.strip():
            c.fail("message", "A text message may not be blank.")
        elif message_type == "location" and not _valid_location(message):
            c.fail("message", "A location must be 'latitude,longitude' in decimal degrees.")
    if "mediaLink" not in c.errors and "messageType" not in c.errors and raw_type:
        if message_type in MEDIA_TYPES:
            if not _valid_media_url(media_link):
                c.fail("mediaLink", f"Must be an absolute http(s) URL for {message_type}.")
        elif message_type != STICKER and media_link != "":
            c.fail("mediaLink", f"Must be empty for {message_type}.")
    return message_type, message, media_link


def _valid_location(value: str) -> bool:
    match = _LOCATION_RE.match(value)
    if not match:
        return False
    try:
        lat, lon = Decimal(match.group(1)), Decimal(match.group(2))
    except InvalidOperation:
        return False
    return -90 <= lat <= 90 and -180 <= lon <= 180


def _valid_media_url(value: str) -> bool:
    if not value or _WHITESPACE_RE.search(value):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _check_created_date(c: _Checker, *, required: bool) -> datetime | None:
    value = c.string("createdDate", required=required, max_length=32)
    if not value:
        return None
    if not _CREATED_DATE_RE.match(value):
        c.fail(
            "createdDate",
            "Must be exactly yyyy-MM-dd'T'HH:mm:ss.SSS, e.g. 2021-04-28T15:39:37.945.",
        )
        return None
    try:
        parsed = datetime.strptime(value, CREATED_DATE_FORMAT)
    except ValueError:  # 2021-02-30, 24:00, a leap second (23:59:60)
        c.fail("createdDate", "Is not a real date and time.")
        return None
    if not MIN_CREATED_YEAR <= parsed.year <= MAX_CREATED_YEAR:
        # Read in the tenant's zone (up to ±26 h from UTC), years 1 and 9999 would overflow
        # Python's datetime on the way to UTC and back.
        c.fail(
            "createdDate",
            f"Must be from {MIN_CREATED_YEAR:04d}-01-01 to {MAX_CREATED_YEAR}-12-31.",
        )
        return None
    return parsed


# --- Parsed messages --------------------------------------------------------------------------


@dataclass(frozen=True)
class MessagePayload:
    """An incoming or outgoing message as validated; `created_date` is naive local time."""

    ticket_number: str
    channel: str
    message_type: str
    message: str
    media_link: str
    customer_name: str
    owner: str
    created_date: datetime | None
    account_id: str = ""
    contact_id: str = ""
    group_id: str = ""
    language: str = ""

    def with_sticker_converted(self, sticker_text: str) -> MessagePayload:
        """A sticker becomes a text message carrying the tenant's sticker text (SPEC §3.1)."""
        if self.message_type != STICKER:
            return self
        from dataclasses import replace

        return replace(self, message_type="text", message=sticker_text, media_link="")


@dataclass(frozen=True)
class CommandPayload:
    ticket_number: str
    channel: str
    owner: str
    event: str


def parse_incoming(data: dict[str, Any]) -> MessagePayload:
    """Validate an engine incoming event (SPEC §3.1). Raises PayloadError."""
    c = _Checker(data)
    ticket_number = _check_ticket_number(c)
    channel = _check_channel(c)
    account_id = c.string("accountId")
    contact_id = c.string("contactId")
    message_type, message, media_link = _check_message(c, allow_sticker=True)
    customer_name = c.string("customerName", max_length=MAX_NAME)
    created_date = _check_created_date(c, required=True)
    owner = c.string("owner")
    group_id = c.string(
        "groupId", required=False, blank=True, max_length=MAX_OPTIONAL, aliases=("GroupId",)
    )
    language = c.string(
        "language", required=False, blank=True, max_length=MAX_OPTIONAL, aliases=("Language",)
    )
    c.raise_if_failed()
    return MessagePayload(
        ticket_number=ticket_number,
        channel=channel,
        message_type=message_type,
        message=message,
        media_link=media_link,
        customer_name=customer_name,
        owner=owner,
        created_date=created_date,
        account_id=account_id,
        contact_id=contact_id,
        group_id=group_id,
        language=language,
    )


def parse_outgoing(data: dict[str, Any], *, from_engine: bool) -> MessagePayload:
    """Validate an outgoing event (SPEC §3.2); stickers only from the engine.

    Raises PayloadError.
    """
    c = _Checker(data)
    ticket_number = _check_ticket_number(c)
    channel = _check_channel(c)
    message_type, message, media_link = _check_message(c, allow_sticker=from_engine)
    customer_name = c.string("customerName", max_length=MAX_NAME)
    created_date = _check_created_date(c, required=False)
    owner = c.string("owner")
    c.raise_if_failed()
    return MessagePayload(
        ticket_number=ticket_number,
        channel=channel,
        message_type=message_type,
        message=message,
        media_link=media_link,
        customer_name=customer_name,
        owner=owner,
        created_date=created_date,
    )


def parse_command(data: dict[str, Any]) -> CommandPayload:
    """Validate a command event (SPEC §3.3); `event` is case-insensitive. Raises PayloadError."""
    c = _Checker(data)
    ticket_number = _check_ticket_number(c)
    channel = _check_channel(c)
    owner = c.string("owner")
    event = c.string("event", max_length=32).lower()
    if event and event not in COMMAND_EVENTS:
        c.fail("event", f"Must be one of: {', '.join(COMMAND_EVENTS)}.")
    c.raise_if_failed()
    return CommandPayload(ticket_number=ticket_number, channel=channel, owner=owner, event=event)


# --- Rendering --------------------------------------------------------------------------------


def format_created_date(value: datetime, time_zone: str) -> str:
    """Render an aware datetime as the tenant's local `yyyy-MM-dd'T'HH:mm:ss.SSS`."""
    local = value.astimezone(ZoneInfo(time_zone))
    return local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond // 1000:03d}"


def localize_created_date(value: datetime, time_zone: str) -> datetime:
    """Read a naive `createdDate` as local time of the tenant's zone; return the instant, in
    UTC. A local time in a daylight-saving gap is read with the offset before the change
    (fold=0), so it renders back one gap later (02:30 -> 03:30), as every later event of the
    ticket renders it from the stored instant."""
    return value.replace(tzinfo=ZoneInfo(time_zone)).astimezone(UTC)


def render_incoming(msg: MessagePayload, *, created_date: str) -> dict[str, str]:
    """The SPEC §3.1 body a partner receives at its incoming-message path."""
    return {
        "ticketNumber": msg.ticket_number,
        "channel": msg.channel,
        "accountId": msg.account_id,
        "contactId": msg.contact_id,
        "messageType": msg.message_type,
        "message": msg.message,
        "mediaLink": msg.media_link,
        "customerName": msg.customer_name,
        "createdDate": created_date,
        "owner": msg.owner,
        "groupId": msg.group_id,
        "language": msg.language,
    }


def render_outgoing(msg: MessagePayload, *, created_date: str) -> dict[str, str]:
    """The SPEC §3.2 body (partner send-message path, or the engine relay)."""
    return {
        "ticketNumber": msg.ticket_number,
        "channel": msg.channel,
        "messageType": msg.message_type,
        "message": msg.message,
        "mediaLink": msg.media_link,
        "customerName": msg.customer_name,
        "createdDate": created_date,
        "owner": msg.owner,
    }


def render_command(cmd: CommandPayload) -> dict[str, str]:
    """The SPEC §3.3 body relayed to the engine."""
    return {
        "ticketNumber": cmd.ticket_number,
        "channel": cmd.channel,
        "owner": cmd.owner,
        "event": cmd.event,
    }


def canonical_json(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent for a payload: compact, key order kept, UTF-8 (not \\u-escaped)."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
