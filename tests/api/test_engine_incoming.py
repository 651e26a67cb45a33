"""POST /api/v1/engine/incoming: storing, upserts, deliveries, and every SPEC §3.1 rule."""

import json

import pytest

from integrations.models import Contact, Delivery, Event, Partner, Ticket
from integrations.services.partners import partner_create
from tests.conftest import OWNER, incoming_body

URL = "/api/v1/engine/incoming"


def test_engine_incoming_stores_event_ticket_contact_and_delivery(engine_api, partner):
    # given a tenant with one partner
    raw = json.dumps(incoming_body())
    # when the engine posts the guide's example
    response = engine_api.post(URL, raw)
    # then it is accepted with an event id, and everything is stored
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "success"
    event = Event.objects.get(pk=body["eventId"])
    assert bytes(event.raw_body) == raw.encode()
    assert event.kind == "incoming" and event.source == "engine" and event.sequence == 1
    assert event.payload == incoming_body()
    ticket = Ticket.objects.get(ticket_number="294c9ea88f7e649f8c37ae895ebab247")
    assert ticket.status == "open" and ticket.customer_name == "Farhan Akbar"
    contact = Contact.objects.get(contact_id="d61d77735f3fe08bcf6d6b96fa06ba9d")
    assert ticket.contact == contact and contact.account_id == "628128778222"
    delivery = Delivery.objects.get(event=event)
    assert delivery.partner == partner and delivery.endpoint == "incoming"
    assert delivery.status == "pending" and delivery.target == f"partner:{partner.pk}"


def test_engine_incoming_reads_created_date_in_tenant_time_zone(engine_api, tenant, partner):
    # given a tenant in Asia/Jakarta (UTC+7)
    # when an event with a local createdDate arrives
    engine_api.post(URL, incoming_body(createdDate="2021-04-28T15:39:37.945"))
    # then it is stored as the right instant and rendered back unchanged
    ticket = Ticket.objects.get()
    assert ticket.created_date.isoformat() in ("2021-04-28T08:39:37.945000+00:00",)
    assert Event.objects.get().payload["createdDate"] == "2021-04-28T15:39:37.945"


def test_engine_incoming_converts_sticker_to_tenant_sticker_text(engine_api, tenant, partner):
    tenant.sticker_text = "Stiker lucu"
    tenant.save()
    engine_api.post(
        URL,
        incoming_body(messageType="STICKER", message="", mediaLink="https://cdn.example/s.webp"),
    )
    payload = Event.objects.get().payload
    assert (payload["messageType"], payload["message"], payload["mediaLink"]) == (
        "text",
        "Stiker lucu",
        "",
    )


def test_engine_incoming_accepts_aliases_and_emits_camel_case(engine_api, partner):
    body = incoming_body(groupId=..., language=..., GroupId="room-7", Language="id")
    engine_api.post(URL, body)
    payload = Event.objects.get().payload
    assert payload["groupId"] == "room-7" and payload["language"] == "id"
    assert "GroupId" not in payload


def test_engine_incoming_keeps_the_longest_allowed_group_and_language(engine_api, partner):
    # both may be 255 characters (payloads.MAX_OPTIONAL); the ticket stores them whole
    # (a 65-character language once ended in a 500 from a varchar(64) column)
    body = incoming_body(groupId="g" * 255, language="l" * 255)
    response = engine_api.post(URL, body)
    assert response.status_code == 202, response.content
    ticket = Ticket.objects.get()
    assert ticket.group_id == "g" * 255 and ticket.language == "l" * 255
    too_long = engine_api.post(URL, incoming_body(language="l" * 256))
    assert too_long.status_code == 400 and "language" in too_long.json()["errors"]


def test_engine_incoming_message_type_is_case_insensitive(engine_api, partner):
    response = engine_api.post(
        URL,
        incoming_body(
            messageType="Image", message="photo.jpg", mediaLink="https://cdn.example/p.jpg"
        ),
    )
    assert response.status_code == 202
    assert Event.objects.get().payload["messageType"] == "image"


def test_engine_incoming_reopens_a_closed_ticket(engine_api, partner):
    engine_api.post(URL, incoming_body())
    Ticket.objects.update(status="closed", closed_by="Desk")
    engine_api.post(URL, incoming_body(message="Halo lagi"))
    ticket = Ticket.objects.get()
    assert ticket.status == "open" and ticket.closed_by == ""
    assert list(Event.objects.order_by("sequence").values_list("sequence", flat=True)) == [1, 2]


def test_engine_incoming_only_subscribed_enabled_partners_get_deliveries(engine_api, tenant):
    # given partners: all channels, telegram only, whatsapp only but disabled, paused
    p_all, _, _ = partner_create(
        tenant=tenant,
        name="All",
        base_url="http://127.0.0.1:9",
        incoming_message_path="/i",
        send_message_path="/s",
    )
    partner_create(
        tenant=tenant,
        name="Tg",
        base_url="http://127.0.0.1:9",
        incoming_message_path="/i",
        send_message_path="/s",
        channels=["telegram"],
    )
    p_off, _, _ = partner_create(
        tenant=tenant,
        name="Off",
        base_url="http://127.0.0.1:9",
        incoming_message_path="/i",
        send_message_path="/s",
    )
    p_paused, _, _ = partner_create(
        tenant=tenant,
        name="Paused",
        base_url="http://127.0.0.1:9",
        incoming_message_path="/i",
        send_message_path="/s",
        channels=["whatsapp"],
    )
    Partner.objects.filter(pk=p_off.pk).update(state="disabled")
    Partner.objects.filter(pk=p_paused.pk).update(state="paused")
    # when a whatsapp message arrives
    engine_api.post(URL, incoming_body())
    # then the all-channel partner and the paused one (waiting) get a delivery
    targets = set(Delivery.objects.values_list("partner__name", flat=True))
    assert targets == {"All", "Paused"}


def test_engine_incoming_wakes_the_partners_pump_on_commit(
    engine_api, partner, request, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        engine_api.post(URL, incoming_body())
    # one pump for the partner's target, no message naming the delivery
    assert request.node.queued_pumps == [f"partner:{partner.pk}"]
    assert request.node.queued_deliveries == []
    assert Delivery.objects.get().dispatched_at is not None  # the dispatcher waits for it


VALID_MEDIA = {"messageType": "image", "message": "", "mediaLink": "https://cdn.example/a.png"}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"ticketNumber": ...}, "ticketNumber"),
        ({"ticketNumber": ""}, "ticketNumber"),
        ({"ticketNumber": "a b"}, "ticketNumber"),
        ({"ticketNumber": "x" * 101}, "ticketNumber"),
        ({"ticketNumber": 123}, "ticketNumber"),
        ({"channel": ...}, "channel"),
        ({"channel": "WhatsApp"}, "channel"),
        ({"accountId": ""}, "accountId"),
        ({"accountId": ...}, "accountId"),
        ({"contactId": ...}, "contactId"),
        ({"contactId": "  "}, "contactId"),
        ({"messageType": ...}, "messageType"),
        ({"messageType": "gif"}, "messageType"),
        ({"message": ...}, "message"),
        ({"message": ""}, "message"),
        ({"message": "x" * 4097}, "message"),
        ({"messageType": "location", "message": "-6.2,106.8,1"}, "message"),
        ({"messageType": "location", "message": "91,106.8"}, "message"),
        ({"messageType": "location", "message": "-6.2,181"}, "message"),
        ({"messageType": "location", "message": "north,east"}, "message"),
        ({"mediaLink": ...}, "mediaLink"),
        ({"mediaLink": "https://cdn.example/a.png"}, "mediaLink"),
        ({**VALID_MEDIA, "mediaLink": ""}, "mediaLink"),
        ({**VALID_MEDIA, "mediaLink": "ftp://cdn.example/a.png"}, "mediaLink"),
        ({**VALID_MEDIA, "mediaLink": "/relative/a.png"}, "mediaLink"),
        ({**VALID_MEDIA, "mediaLink": "https://cdn.example/" + "a" * 2048}, "mediaLink"),
        (
            {"messageType": "location", "message": "-6.2,106.8", "mediaLink": "https://x.y/z"},
            "mediaLink",
        ),
        ({"customerName": ...}, "customerName"),
        ({"createdDate": ...}, "createdDate"),
        ({"createdDate": "2021-04-28 15:39:37.945"}, "createdDate"),
        ({"createdDate": "2021-04-28T15:39:37"}, "createdDate"),
        ({"createdDate": "2021-04-28T15:39:37.945Z"}, "createdDate"),
        ({"createdDate": "2021-13-28T15:39:37.945"}, "createdDate"),
        ({"owner": ...}, "owner"),
        ({"owner": None}, "owner"),
        ({"groupId": 5}, "groupId"),
    ],
)
def test_engine_incoming_rejects_invalid_field(engine_api, partner, overrides, field):
    # when a body breaks one rule
    response = engine_api.post(URL, incoming_body(**overrides))
    # then one 400 names the field, and nothing is stored
    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "error" and body["code"] == "validation_error"
    assert field in body["errors"], body
    assert not Event.objects.exists()


@pytest.mark.parametrize(
    "overrides",
    [
        {"messageType": "location", "message": "-6.200000,106.816666"},
        {"messageType": "location", "message": "90,-180"},
        {"messageType": "video", "message": "", "mediaLink": "http://cdn.example/v.mp4"},
        {"messageType": "audio", "message": "voice.ogg", "mediaLink": "https://a.b/v.ogg"},
        {"messageType": "file", "message": "invoice.pdf", "mediaLink": "https://a.b/i.pdf"},
        {"ticketNumber": "x" * 100, "message": "x" * 4096},
        {"groupId": ..., "language": ...},
        {"owner": OWNER, "unknownKey": {"kept": "in raw log"}},
    ],
)
def test_engine_incoming_accepts_valid_variants(engine_api, partner, overrides):
    response = engine_api.post(URL, incoming_body(**overrides))
    assert response.status_code == 202, response.json()


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_body"),
        (b'"text"', "invalid_body"),
        (b"", "invalid_json"),
        (b"\xff\xfe{}", "invalid_json"),
        (b'{"a": 1, "a": 2}', "invalid_json"),
        (b'{"a": NaN}', "invalid_json"),
        (b'{"a": ' + b"1" * 5000 + b"}", "invalid_json"),
        (b"[" * 100000 + b"]" * 100000, "invalid_json"),
        (b'{"a":' * 50 + b"1" + b"}" * 50, "invalid_json"),
    ],
)
def test_engine_incoming_rejects_malformed_body(engine_api, raw, code):
    response = engine_api.post(URL, raw)
    assert response.status_code == 400
    assert response.json()["code"] == code


def test_engine_incoming_rejects_non_json_content_type(engine_api):
    response = engine_api.client.post(
        URL, data="a=b", content_type="text/plain", HTTP_AUTHORIZATION=f"Bearer {engine_api.key}"
    )
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


def test_engine_incoming_rejects_non_utf8_charset(engine_api):
    response = engine_api.client.post(
        URL,
        data=json.dumps(incoming_body()),
        content_type="application/json; charset=utf-16",
        HTTP_AUTHORIZATION=f"Bearer {engine_api.key}",
    )
    assert response.status_code == 415


def test_engine_incoming_rejects_body_over_256_kib(engine_api):
    response = engine_api.post(URL, incoming_body(message="x" * (257 * 1024)))
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


def test_engine_incoming_rejects_owner_outside_key(engine_api, other_tenant):
    response = engine_api.post(URL, incoming_body(owner=other_tenant.owner))
    assert response.status_code == 403
    assert response.json()["code"] == "owner_forbidden"
    assert not Event.objects.exists()


def test_engine_incoming_rejects_unknown_owner(engine_api):
    response = engine_api.post(URL, incoming_body(owner="nobody"))
    assert response.status_code == 403


def test_engine_incoming_rejects_partner_key(partner_api):
    response = partner_api.post(URL, incoming_body())
    assert response.status_code == 403
    assert response.json()["code"] == "engine_key_required"


def test_engine_incoming_wrong_method_gets_envelope(engine_api):
    response = engine_api.get(URL)
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


def test_engine_incoming_unknown_keys_are_kept_raw_only(engine_api, partner):
    engine_api.post(URL, incoming_body(extra="x"))
    event = Event.objects.get()
    assert "extra" not in event.payload and b'"extra"' in bytes(event.raw_body)


def test_engine_incoming_same_owner_string_any_length(engine_api, tenant, partner):
    tenant.owner = "t"
    tenant.save()
    response = engine_api.post(URL, incoming_body(owner="t"))
    assert response.status_code == 202


@pytest.mark.parametrize(
    ("created", "zone", "status"),
    [
        ("0001-01-01T00:00:00.000", "Asia/Jakarta", 400),  # was a 500 (OverflowError)
        ("9999-12-31T23:59:59.999", "America/Los_Angeles", 400),
        ("0002-01-01T00:00:00.000", "Pacific/Kiritimati", 202),
        ("9998-12-31T23:59:59.999", "Pacific/Pago_Pago", 202),
    ],
)
def test_created_date_edges_are_a_400_or_stored_never_a_500(
    engine_api, tenant, created, zone, status
):
    tenant.time_zone = zone
    tenant.save()
    response = engine_api.post(URL, incoming_body(createdDate=created))
    assert response.status_code == status, response.content
    if status == 400:
        assert list(response.json()["errors"]) == ["createdDate"]
    else:
        assert Ticket.objects.get().created_date is not None


def test_created_date_in_a_daylight_saving_gap_is_read_before_the_change(engine_api, tenant):
    # given a tenant in a zone that springs forward at 02:00 (2021-03-14, New York)
    tenant.time_zone = "America/New_York"
    tenant.save()
    # when the engine sends a local time inside the gap
    response = engine_api.post(URL, incoming_body(createdDate="2021-03-14T02:30:00.000"))
    # then it is accepted and sent on as the instant it names, in the zone's real time
    assert response.status_code == 202
    event = Event.objects.get(pk=response.json()["eventId"])
    assert event.payload["createdDate"] == "2021-03-14T03:30:00.000"
