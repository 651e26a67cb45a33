"""How log rows read in lists and on detail pages (issue 14): short ids with the full one on
hover and a copy button (integrations/static/portal/copy.js), coloured status badges, errors
in words with the technical detail below."""

from __future__ import annotations

from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import pgettext

from integrations import explain
from integrations.models import Delivery, DeliveryAttempt

SHORT = 8


def short_id(value, *, url: str | None = None):
    """The first 8 characters of an id (a UUID, a 32-digit ticket number), the whole of it on
    hover and on the copy button beside it."""
    full = str(value)
    short = full if len(full) <= SHORT + 2 else f"{full[:SHORT]}…"
    if url:
        return format_html(
            '<a href="{}" class="short-id" title="{}" data-full="{}">{}</a>', url, full, full, short
        )
    return format_html(
        '<span class="short-id" title="{}" data-full="{}">{}</span>', full, full, short
    )


def status_badge(delivery: Delivery):
    return format_html(
        '<span class="badge status-{}">{}</span>', delivery.status, delivery.get_status_display()
    )


def readable_error(summary: str, technical: str):
    """The sentence, then the stored detail (library text, HTTP status) under it."""
    if not summary and not technical:
        return "—"
    if not summary or summary == technical:
        return format_html('<span class="error-summary">{}</span>', technical)
    if not technical:
        return format_html('<span class="error-summary">{}</span>', summary)
    return format_html(
        '<span class="error-summary">{}</span><details class="error-detail"><summary>{}</summary>'
        "<code>{}</code></details>",
        summary,
        _("Technical detail"),
        technical,
    )


def attempt_error(attempt: DeliveryAttempt):
    """An attempt's error in words, the stored detail (or its HTTP status) below."""
    if attempt.outcome == "success":
        return "—"
    status = f"HTTP {attempt.response_status}" if attempt.response_status else ""
    return readable_error(explain.attempt_summary(attempt), attempt.error_message or status)


def delivery_error(delivery: Delivery):
    summary, technical = explain.delivery_error_text(delivery)
    return readable_error(summary, technical)


def message_type_label(kind: str) -> str:
    labels = {
        "image": pgettext("message type", "image"),
        "video": pgettext("message type", "video"),
        "audio": pgettext("message type", "audio"),
        "file": pgettext("message type", "file"),
        "location": pgettext("message type", "location"),
        "sticker": pgettext("message type", "sticker"),
        "text": pgettext("message type", "text"),
    }
    return labels.get(kind, kind)
