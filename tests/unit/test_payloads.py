"""Unit tests of the wire formats of SPEC §3 (integrations/payloads.py).

Pure functions, no database: each parser is called with a decoded body and the test asserts
the returned dataclass, or the `PayloadError` and its problems keyed by wire field. The same
rules seen through the HTTP API (status codes, nothing stored) are in tests/api/.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from integrations.payloads import (
    MAX_JSON_DEPTH,
    CommandPayload,
    MessagePayload,
    PayloadError,
    canonical_json,
    format_created_date,
    localize_created_date,
    parse_command,
    parse_incoming,
    parse_json_object,
    parse_outgoing,
    render_command,
    render_incoming,
    render_outgoing,
)
from tests.conftest import OWNER, command_body, incoming_body, outgoing_body

REQUIRED = "This field is required."
NOT_A_STRING = "Must be a string."
BLANK = "May not be blank."
UNSTORABLE = "May not contain NUL characters or unpaired surrogates."
BAD_LOCATION = "A location must be 'latitude,longitude' in decimal degrees."
BAD_CHANNEL = "Must be a lower-case channel name such as whatsapp or telegram."
TYPES = "text, image, video, audio, file, location"
BAD_DATE_FORMAT = "Must be exactly yyyy-MM-dd'T'HH:mm:ss.SSS, e.g. 2021-04-28T15:39:37.945."
MEDIA = {"messageType": "image", "message": "", "mediaLink": "https://cdn.example/a.png"}


def too_long(limit: int) -> str:
    return f"Ensure this field has no more than {limit} characters."


def errors_of(parse: Any, *args: Any, **kwargs: Any) -> dict[str, list[str]]:
    """Call a parser that must refuse its input; return PayloadError's errors."""
    with pytest.raises(PayloadError) as refused:
        parse(*args, **kwargs)
    assert refused.value.code == "validation_error"
    return refused.value.errors


def message(**overrides: Any) -> MessagePayload:
    fields: dict[str, Any] = {
        "ticket_number": "t-1",
        "channel": "whatsapp",
        "message_type": "text",
        "message": "Halo",
        "media_link": "",
        "customer_name": "Farhan Akbar",
        "owner": OWNER,
        "created_date": None,
    }
    return MessagePayload(**{**fields, **overrides})


# --- parse_json_object -----------------------------------------------------------------------


def test_parse_json_object_returns_the_decoded_object() -> None:
    # given
    raw = '{"message": "héllo", "nested": {"list": [1, 2.5, null, true]}}'.encode()
    # when
    data = parse_json_object(raw)
    # then
    assert data == {"message": "héllo", "nested": {"list": [1, 2.5, None, True]}}


@pytest.mark.parametrize(
    ("raw", "code", "message_start"),
    [
        (b"{not json", "invalid_json", "The body is not valid JSON"),
        (b"", "invalid_json", "The body is not valid JSON"),
        (b"\xff\xfe{}", "invalid_json", "The body is not valid UTF-8."),
        (b'{"a": 1, "a": 2}', "invalid_json", "The body is not valid JSON: duplicate key 'a'"),
        (b'{"a": NaN}', "invalid_json", "The body is not valid JSON: NaN is not valid JSON"),
        (b'{"a": -Infinity}', "invalid_json", "The body is not valid JSON: -Infinity"),
        (b'{"a": ' + b"1" * 5000 + b"}", "invalid_json", "The body is not valid JSON"),
        (b"[" * 100000 + b"]" * 100000, "invalid_json", "The body is not valid JSON"),
        (b"[1, 2]", "invalid_body", "The body must be a JSON object."),
        (b'"text"', "invalid_body", "The body must be a JSON object."),
        (b"null", "invalid_body", "The body must be a JSON object."),
    ],
)
def test_parse_json_object_refuses_what_is_not_one_json_object(
    raw: bytes, code: str, message_start: str
) -> None:
    # when
    with pytest.raises(PayloadError) as refused:
        parse_json_object(raw)
    # then the whole body is refused: a code and a message, no field errors
    assert refused.value.code == code
    assert refused.value.message.startswith(message_start)
    assert refused.value.errors == {}


def test_parse_json_object_accepts_nesting_up_to_the_limit() -> None:
    # given objects nested so that the innermost value sits at level MAX_JSON_DEPTH
    levels = MAX_JSON_DEPTH - 1
    raw = b'{"a":' * levels + b"1" + b"}" * levels
    # when
    data = parse_json_object(raw)
    # then
    for _ in range(levels):
        data = data["a"]
    assert data == 1


def test_parse_json_object_refuses_nesting_past_the_limit() -> None:
    # given one level more than allowed
    levels = MAX_JSON_DEPTH
    raw = b'{"a":' * levels + b"1" + b"}" * levels
    # when
    with pytest.raises(PayloadError) as refused:
        parse_json_object(raw)
    # then
    assert refused.value.code == "invalid_json"
    assert refused.value.message == f"The body nests deeper than {MAX_JSON_DEPTH} levels."


# --- parse_incoming (SPEC §3.1) ----------------------------------------------------------------


def test_parse_incoming_reads_the_guides_example() -> None:
    # when
    msg = parse_incoming(incoming_body())
    # then every field is read, and createdDate is naive local time
    assert msg == MessagePayload(
        ticket_number="294c9ea88f7e649f8c37ae895ebab247",
        channel="whatsapp",
        message_type="text",
        message="Halo",
        media_link="",
        customer_name="Farhan Akbar",
        owner=OWNER,
        created_date=datetime(2021, 4, 28, 15, 39, 37, 945000),
        account_id="628128778222",
        contact_id="d61d77735f3fe08bcf6d6b96fa06ba9d",
        group_id="",
        language="",
    )
    assert msg.created_date is not None and msg.created_date.tzinfo is None


def test_parse_incoming_lists_every_missing_field_at_once() -> None:
    # when nothing at all is sent
    errors = errors_of(parse_incoming, {})
    # then one error names each required field; groupId and language are optional
    required = ["ticketNumber", "channel", "accountId", "contactId", "messageType", "message"]
    required += ["mediaLink", "customerName", "createdDate", "owner"]
    assert errors == {field: [REQUIRED] for field in required}


def test_parse_incoming_collects_problems_of_several_fields() -> None:
    # given three broken fields
    body = incoming_body(ticketNumber="a b", channel="WhatsApp", message="  ")
    # when
    errors = errors_of(parse_incoming, body)
    # then each is named with its own problem
    assert errors == {
        "ticketNumber": ["May not contain whitespace."],
        "channel": [BAD_CHANNEL],
        "message": ["A text message may not be blank."],
    }


@pytest.mark.parametrize(
    ("overrides", "field", "problem"),
    [
        ({"ticketNumber": ...}, "ticketNumber", REQUIRED),
        ({"ticketNumber": ""}, "ticketNumber", BLANK),
        ({"ticketNumber": "a\tb"}, "ticketNumber", "May not contain whitespace."),
        ({"ticketNumber": "x" * 101}, "ticketNumber", too_long(100)),
        ({"ticketNumber": 123}, "ticketNumber", NOT_A_STRING),
        ({"channel": "9gag"}, "channel", BAD_CHANNEL),
        ({"channel": "x" * 51}, "channel", too_long(50)),
        ({"accountId": ""}, "accountId", BLANK),
        ({"accountId": "x" * 256}, "accountId", too_long(255)),
        ({"contactId": "  "}, "contactId", BLANK),
        ({"messageType": "gif"}, "messageType", f"Must be one of: {TYPES}, sticker."),
        ({"messageType": ["text"]}, "messageType", NOT_A_STRING),
        ({"message": ...}, "message", REQUIRED),
        ({"message": ""}, "message", "A text message may not be blank."),
        ({"message": "x" * 4097}, "message", too_long(4096)),
        ({"message": "Ha\x00lo"}, "message", UNSTORABLE),
        ({"message": "\ud800"}, "message", UNSTORABLE),
        ({"contactId": "x\udfffy"}, "contactId", UNSTORABLE),
        ({"customerName": "x" * 501}, "customerName", too_long(500)),
        ({"customerName": "Far\x00han"}, "customerName", UNSTORABLE),
        ({"owner": None}, "owner", NOT_A_STRING),
        ({"owner": ""}, "owner", BLANK),
        ({"groupId": 5}, "groupId", NOT_A_STRING),
        ({"language": "l" * 256}, "language", too_long(255)),
    ],
)
def test_parse_incoming_names_the_field_and_its_problem(
    overrides: dict[str, Any], field: str, problem: str
) -> None:
    # when a body breaks one rule
    errors = errors_of(parse_incoming, incoming_body(**overrides))
    # then exactly that field is named, with that problem
    assert errors == {field: [problem]}


def test_parse_incoming_message_type_is_case_insensitive_and_normalized() -> None:
    # when
    msg = parse_incoming(incoming_body(**{**MEDIA, "messageType": "Image"}))
    # then
    assert msg.message_type == "image"


def test_parse_incoming_reads_capitalized_aliases_of_group_and_language() -> None:
    # given the engine's GroupId / Language spelling
    body = incoming_body(groupId=..., language=..., GroupId="room-7", Language="id")
    # when
    msg = parse_incoming(body)
    # then
    assert (msg.group_id, msg.language) == ("room-7", "id")


@pytest.mark.parametrize("overrides", [{"groupId": None, "language": None}, {"groupId": ...}])
def test_parse_incoming_optional_group_and_language_default_to_empty(
    overrides: dict[str, Any],
) -> None:
    # when
    msg = parse_incoming(incoming_body(**overrides))
    # then
    assert (msg.group_id, msg.language) == ("", "")


def test_parse_incoming_keeps_the_longest_allowed_values() -> None:
    # when every length limit is met exactly
    body = incoming_body(
        ticketNumber="x" * 100, message="m" * 4096, groupId="g" * 255, language="l" * 255
    )
    msg = parse_incoming(body)
    # then nothing is cut
    assert len(msg.ticket_number) == 100 and len(msg.message) == 4096
    assert (msg.group_id, msg.language) == ("g" * 255, "l" * 255)


def test_parse_incoming_ignores_unknown_keys() -> None:
    # given an extra key (kept only in the raw body by the API), holding even a NUL
    msg = parse_incoming(incoming_body(extra="a\x00b", unknownKey={"kept": "raw"}))
    # then it is not an error and is not part of the result
    assert msg == parse_incoming(incoming_body())


def test_parse_incoming_accepts_a_surrogate_pair_as_one_character() -> None:
    # given a valid surrogate pair escape, decoded by parse_json_object
    raw = json.dumps(incoming_body(message="PLACEHOLDER")).replace(
        '"PLACEHOLDER"', '"\\ud83d\\ude00"'
    )
    # when
    msg = parse_incoming(parse_json_object(raw.encode()))
    # then
    assert msg.message == "\U0001f600"


# --- location and mediaLink rules ------------------------------------------------------------


@pytest.mark.parametrize(
    "location", ["-6.200000,106.816666", "90,-180", "-90,180", "+1.5,-2", " -6.2 , 106.8 ", "0,0"]
)
def test_parse_incoming_accepts_location_in_decimal_degrees(location: str) -> None:
    # when
    msg = parse_incoming(incoming_body(messageType="location", message=location))
    # then it is kept as sent
    assert (msg.message_type, msg.message) == ("location", location)


@pytest.mark.parametrize(
    "location",
    ["-6.2,106.8,1", "91,106.8", "-90.0001,0", "-6.2,181", "north,east", "-6.2", "1e1,2", ""],
)
def test_parse_incoming_refuses_location_outside_decimal_degrees(location: str) -> None:
    # when
    errors = errors_of(parse_incoming, incoming_body(messageType="location", message=location))
    # then
    assert errors == {"message": [BAD_LOCATION]}


@pytest.mark.parametrize(
    ("message_type", "link"),
    [
        ("image", "https://cdn.example/a.png"),
        ("video", "http://cdn.example/v.mp4"),
        ("audio", "https://a.b:8443/v.ogg?sig=1"),
        ("file", "HTTPS://CDN.EXAMPLE/I.PDF"),
    ],
)
def test_parse_incoming_media_needs_an_absolute_http_url(message_type: str, link: str) -> None:
    # when a media message (whose message may be a blank caption) carries a link
    msg = parse_incoming(incoming_body(messageType=message_type, message="", mediaLink=link))
    # then
    assert (msg.message_type, msg.message, msg.media_link) == (message_type, "", link)


@pytest.mark.parametrize(
    "link",
    [
        "",
        "ftp://cdn.example/a.png",
        "/relative/a.png",
        "https:///a.png",
        "https://cdn.example/a b.png",
        "http://cdn.example:99999/a.png",
        "javascript:alert(1)",
    ],
)
def test_parse_incoming_media_refuses_other_links(link: str) -> None:
    # when
    errors = errors_of(parse_incoming, incoming_body(**{**MEDIA, "mediaLink": link}))
    # then
    assert errors == {"mediaLink": ["Must be an absolute http(s) URL for image."]}


def test_parse_incoming_media_link_longer_than_the_limit_is_refused() -> None:
    # when
    long_link = "https://cdn.example/" + "a" * 2048
    errors = errors_of(parse_incoming, incoming_body(**{**MEDIA, "mediaLink": long_link}))
    # then
    assert errors == {"mediaLink": [too_long(2048)]}


@pytest.mark.parametrize(("message_type", "text"), [("text", "Halo"), ("location", "-6.2,106.8")])
def test_parse_incoming_non_media_must_have_empty_media_link(message_type: str, text: str) -> None:
    # when
    body = incoming_body(messageType=message_type, message=text, mediaLink="https://x.y/z")
    errors = errors_of(parse_incoming, body)
    # then
    assert errors == {"mediaLink": [f"Must be empty for {message_type}."]}


def test_parse_incoming_media_link_is_required_even_when_empty() -> None:
    # when
    errors = errors_of(parse_incoming, incoming_body(mediaLink=...))
    # then
    assert errors == {"mediaLink": [REQUIRED]}


def test_parse_incoming_sticker_keeps_its_link_and_blank_message() -> None:
    # when
    body = incoming_body(messageType="STICKER", message="", mediaLink="https://cdn.example/s.webp")
    msg = parse_incoming(body)
    # then
    assert (msg.message_type, msg.message, msg.media_link) == (
        "sticker",
        "",
        "https://cdn.example/s.webp",
    )


# --- created date ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("2021-04-28 15:39:37.945", BAD_DATE_FORMAT),
        ("2021-04-28T15:39:37", BAD_DATE_FORMAT),
        ("2021-04-28T15:39:37.945Z", BAD_DATE_FORMAT),
        ("2021-04-28T15:39:37.945+07:00", BAD_DATE_FORMAT),
        ("2021-04-28T15:39:37.94", BAD_DATE_FORMAT),
        ("2021-13-28T15:39:37.945", "Is not a real date and time."),
        ("2021-02-29T10:00:00.000", "Is not a real date and time."),
        ("2021-04-28T24:00:00.000", "Is not a real date and time."),
        ("2016-12-31T23:59:60.000", "Is not a real date and time."),
        ("0001-01-01T00:00:00.000", "Must be from 0002-01-01 to 9998-12-31."),
        ("9999-12-31T23:59:59.999", "Must be from 0002-01-01 to 9998-12-31."),
        ("", BLANK),
    ],
)
def test_parse_incoming_created_date_must_be_the_exact_local_format(
    value: str, problem: str
) -> None:
    # when
    errors = errors_of(parse_incoming, incoming_body(createdDate=value))
    # then
    assert errors == {"createdDate": [problem]}


def test_parse_incoming_created_date_keeps_milliseconds() -> None:
    # when
    msg = parse_incoming(incoming_body(createdDate="2024-02-29T23:59:59.001"))
    # then
    assert msg.created_date == datetime(2024, 2, 29, 23, 59, 59, 1000)


def test_localize_created_date_reads_naive_time_in_the_tenant_zone() -> None:
    # given the guide's createdDate, local to a tenant in Asia/Jakarta (UTC+7)
    naive = datetime(2021, 4, 28, 15, 39, 37, 945000)
    # when
    aware = localize_created_date(naive, "Asia/Jakarta")
    # then it is the instant seven hours earlier, in UTC
    assert aware == datetime(2021, 4, 28, 8, 39, 37, 945000, tzinfo=UTC)
    assert aware.utcoffset() == timedelta(0)


def test_localize_created_date_reads_a_daylight_saving_gap_with_the_earlier_offset() -> None:
    # given 02:30 on the night New York springs forward from 02:00 to 03:00
    naive = datetime(2021, 3, 14, 2, 30)
    # when
    aware = localize_created_date(naive, "America/New_York")
    # then it is read at UTC-5 and renders as the real local time one hour on
    assert aware == datetime(2021, 3, 14, 7, 30, tzinfo=UTC)
    assert format_created_date(aware, "America/New_York") == "2021-03-14T03:30:00.000"


def test_format_created_date_renders_the_tenant_local_time() -> None:
    # given an instant in another zone
    moment = datetime(2021, 4, 28, 10, 39, 37, 945000, tzinfo=timezone(timedelta(hours=2)))
    # when
    text = format_created_date(moment, "Asia/Jakarta")
    # then
    assert text == "2021-04-28T15:39:37.945"


def test_format_created_date_truncates_to_milliseconds() -> None:
    # when
    text = format_created_date(datetime(2030, 1, 1, 0, 0, 0, 999999, tzinfo=UTC), "UTC")
    # then the last millisecond is kept, never rounded into the next second
    assert text == "2030-01-01T00:00:00.999"


def test_created_date_round_trips_through_parse_localize_and_format() -> None:
    # given
    msg = parse_incoming(incoming_body(createdDate="2021-04-28T15:39:37.945"))
    assert msg.created_date is not None
    # when
    aware = localize_created_date(msg.created_date, "Asia/Jakarta")
    # then
    assert format_created_date(aware, "Asia/Jakarta") == "2021-04-28T15:39:37.945"


# --- parse_outgoing (SPEC §3.2) ----------------------------------------------------------------


def test_parse_outgoing_reads_a_partner_reply_without_created_date() -> None:
    # when
    msg = parse_outgoing(outgoing_body(), from_engine=False)
    # then the fields of SPEC §3.1 only are left empty
    assert msg == MessagePayload(
        ticket_number="294c9ea88f7e649f8c37ae895ebab247",
        channel="whatsapp",
        message_type="text",
        message="Halo, ada yang bisa dibantu?",
        media_link="",
        customer_name="Farhan Akbar",
        owner=OWNER,
        created_date=None,
    )


def test_parse_outgoing_reads_an_optional_created_date() -> None:
    # when
    msg = parse_outgoing(outgoing_body(createdDate="2021-04-28T15:40:00.000"), from_engine=True)
    # then
    assert msg.created_date == datetime(2021, 4, 28, 15, 40)


def test_parse_outgoing_lists_every_missing_field_at_once() -> None:
    # when
    errors = errors_of(parse_outgoing, {}, from_engine=False)
    # then createdDate and the incoming-only fields are not required
    fields = ["ticketNumber", "channel", "messageType", "message", "mediaLink"]
    fields += ["customerName", "owner"]
    assert errors == {field: [REQUIRED] for field in fields}


def test_parse_outgoing_refuses_sticker_from_a_partner() -> None:
    # when
    errors = errors_of(parse_outgoing, outgoing_body(messageType="sticker"), from_engine=False)
    # then the allowed types are listed, without sticker
    assert errors == {"messageType": [f"Must be one of: {TYPES}."]}


def test_parse_outgoing_accepts_sticker_from_the_engine() -> None:
    # when
    msg = parse_outgoing(outgoing_body(messageType="Sticker", message=""), from_engine=True)
    # then
    assert (msg.message_type, msg.message) == ("sticker", "")


def test_parse_outgoing_applies_the_message_rules() -> None:
    # when
    body = outgoing_body(messageType="video", message="", mediaLink="")
    errors = errors_of(parse_outgoing, body, from_engine=True)
    # then
    assert errors == {"mediaLink": ["Must be an absolute http(s) URL for video."]}


def test_parse_outgoing_refuses_a_malformed_created_date() -> None:
    # when
    body = outgoing_body(createdDate="2021-04-28T15:40:00")
    errors = errors_of(parse_outgoing, body, from_engine=True)
    # then
    assert errors == {"createdDate": [BAD_DATE_FORMAT]}


# --- stickers --------------------------------------------------------------------------------


def test_with_sticker_converted_turns_a_sticker_into_the_tenants_text() -> None:
    # given
    sticker = message(message_type="sticker", message="", media_link="https://cdn.example/s")
    # when
    converted = sticker.with_sticker_converted("Stiker lucu")
    # then
    assert converted == message(message_type="text", message="Stiker lucu", media_link="")
    assert sticker.message_type == "sticker"  # frozen: the original is unchanged


@pytest.mark.parametrize("message_type", ["text", "image", "location"])
def test_with_sticker_converted_leaves_other_messages_alone(message_type: str) -> None:
    # given
    msg = message(message_type=message_type)
    # when / then
    assert msg.with_sticker_converted("Stiker") is msg


# --- parse_command (SPEC §3.3) -----------------------------------------------------------------


def test_parse_command_reads_close_case_insensitively() -> None:
    # when
    cmd = parse_command(command_body(event="CLOSE"))
    # then
    assert cmd == CommandPayload(
        ticket_number="294c9ea88f7e649f8c37ae895ebab247",
        channel="whatsapp",
        owner=OWNER,
        event="close",
    )


def test_parse_command_refuses_an_unknown_event_listing_the_allowed() -> None:
    # when
    errors = errors_of(parse_command, command_body(event="reopen"))
    # then
    assert errors == {"event": ["Must be one of: close."]}


def test_parse_command_lists_every_missing_field_at_once() -> None:
    # when
    errors = errors_of(parse_command, {})
    # then
    assert errors == {field: [REQUIRED] for field in ("ticketNumber", "channel", "owner", "event")}


def test_parse_command_checks_ticket_number_and_channel_like_messages() -> None:
    # when
    errors = errors_of(parse_command, command_body(ticketNumber="a b", channel="LINE"))
    # then
    assert list(errors) == ["ticketNumber", "channel"]


# --- rendering -------------------------------------------------------------------------------


def test_render_incoming_gives_the_guides_example_back() -> None:
    # given the guide's example, parsed
    msg = parse_incoming(incoming_body())
    # when
    payload = render_incoming(msg, created_date="2021-04-28T15:39:37.945")
    # then it is the same body, keys in the order of SPEC §3.1
    assert payload == incoming_body()
    assert list(payload) == list(incoming_body())


def test_render_incoming_emits_camel_case_for_aliases() -> None:
    # given
    msg = parse_incoming(incoming_body(groupId=..., language=..., GroupId="g", Language="id"))
    # when
    payload = render_incoming(msg, created_date="2021-04-28T15:39:37.945")
    # then
    assert (payload["groupId"], payload["language"]) == ("g", "id")
    assert "GroupId" not in payload and "Language" not in payload


def test_render_outgoing_has_exactly_the_spec_fields() -> None:
    # given
    msg = parse_outgoing(outgoing_body(), from_engine=False)
    # when
    payload = render_outgoing(msg, created_date="2021-04-28T15:40:00.000")
    # then
    assert payload == {**outgoing_body(), "createdDate": "2021-04-28T15:40:00.000"}
    assert list(payload) == [
        "ticketNumber",
        "channel",
        "messageType",
        "message",
        "mediaLink",
        "customerName",
        "createdDate",
        "owner",
    ]


def test_render_command_gives_the_normalized_command() -> None:
    # given
    cmd = parse_command(command_body(event="Close"))
    # when
    payload = render_command(cmd)
    # then
    assert payload == command_body(event="close")
    assert list(payload) == ["ticketNumber", "channel", "owner", "event"]


def test_canonical_json_is_compact_ordered_utf8() -> None:
    # given
    payload = {"z": 1, "a": "héllo 😀", "m": [True, None]}
    # when
    raw = canonical_json(payload)
    # then keys keep their order, no spaces, non-ASCII is not \u-escaped
    assert raw == '{"z":1,"a":"héllo 😀","m":[true,null]}'.encode()
    assert json.loads(raw) == payload
