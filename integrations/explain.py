"""What happened to a delivery, in words a support agent can act on (issue 14).

The technical detail (the library's exception text, the HTTP status) stays stored and shown
below these sentences; this module only reads. Used by the admin and the partner portal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from django.db.models import Min, Q
from django.utils.formats import date_format
from django.utils.timezone import localtime
from django.utils.translation import get_language, gettext_noop
from django.utils.translation import gettext as _

from integrations.models import Delivery, DeliveryAttempt

# What the stored message of a delivery (last_error) says when only it is at hand (lists do
# not read the attempts): patterns from the exception texts `integrations.delivery` stores.
_MESSAGE_CLASSES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), name)
    for pattern, name in (
        (r"^refused to connect to .*address$", "blocked_destination"),
        (r"^not an absolute http\(s\) URL", "invalid_url"),
        (r"no complete answer before the delivery deadline|^answer too slow$", "deadline_exceeded"),
        (
            r"NameResolution|Name or service not known|getaddrinfo|resolved to no address",
            "dns_error",
        ),
        (
            r"SSLError|SSL:|CERTIFICATE_VERIFY|WRONG_VERSION_NUMBER"
            # the curl client's: "pycurl.error (60): SSL certificate problem: ..."
            r"|^pycurl\.error \((?:35|51|53|54|58|59|60|64|66|77|80|82|83|90|91|98)\)",
            "tls_error",
        ),
        (r"Connection refused|ConnectionRefused", "connect_error"),
        (
            r"ConnectionReset|Connection reset|BrokenPipe|RemoteDisconnected"
            r"|^pycurl\.error \(52\)",  # curl: "Empty reply from server"
            "connection_reset",
        ),
        (r"timed out|Timeout", "timeout"),
        (
            r"ChunkedEncoding|ContentDecoding|InvalidChunkLength"
            r"|^pycurl\.error \((?:8|18|61)\)",  # curl: a broken header, a short body
            "protocol_error",
        ),
        (r"^no usable signing secret|signing secret", "configuration_error"),
        (r"^HTTP \d{3}$", ""),
    )
)
_BLOCK_RE = re.compile(r"^refused to connect to (?P<host>.*) \((?P<address>[^)]*)\): (?P<why>.*)$")


# Messages the portal itself stores as a delivery's last error (English in the database):
# shown in the reader's language.
PORTAL_MESSAGES = {
    gettext_noop("No engine relay is configured."),
    gettext_noop("Cancelled by an operator."),
}


def portal_message(message: str) -> str | None:
    """A stored message of the portal's own, translated; None for anything else."""
    return _(message) if message in PORTAL_MESSAGES else None


def target_name(target: str, partner_name: str | None) -> str:
    """What a delivery's target is called: its partner's name, or the tenant's engine relay
    or operations URL."""
    if partner_name is not None:
        return partner_name
    if target == Delivery.OPERATIONS_TARGET:
        return _("Operations URL")
    return _("Engine relay")


def error_class_of(message: str) -> str:
    """The error class a stored message most likely came from ("" when none fits)."""
    for pattern, name in _MESSAGE_CLASSES:
        if pattern.search(message):
            return name
    return ""  # a message of the portal's own ("Cancelled by an operator."): shown as it is


def _seconds(ms: int | None) -> str:
    return f"{(ms or 0) / 1000:.1f}".rstrip("0").rstrip(".")


def error_summary(
    *,
    error_class: str = "",
    message: str = "",
    status_code: int | None = None,
    duration_ms: int | None = None,
) -> str:
    """One sentence on why an attempt (or a delivery's last one) did not succeed; "" for
    nothing to say."""
    if not error_class and status_code is None:
        error_class = error_class_of(message)
    if error_class == "blocked_destination":
        found = _BLOCK_RE.match(message)
        if found:
            return _(
                "Blocked by the outbound address policy: %(host)s is %(address)s, a %(why)s. "
                "Point the partner at a public address, or ask the portal's operators to "
                "allow this one."
            ) % {"host": found["host"], "address": found["address"], "why": found["why"]}
        return _("Blocked by the outbound address policy: the address is not a public one.")
    sentences = {
        "invalid_url": _("The partner's URL is not a valid http:// or https:// address."),
        "dns_error": _(
            "The partner's host name was not found (DNS). Check the spelling of the URL."
        ),
        "tls_error": _(
            "The secure connection (TLS) failed. Does the partner's server speak HTTPS on "
            "that port, with a valid certificate? An http:// address may be meant."
        ),
        "connect_error": _(
            "The partner's server refused the connection: nothing is listening at that "
            "address and port."
        ),
        "connection_reset": _("The partner's server closed the connection before answering."),
        "protocol_error": _("The partner's answer was broken (not valid HTTP)."),
        "network_error": _("A network error stopped the request before an answer came."),
        "configuration_error": _(
            "The partner has no usable signing secret: roll a new one on its page."
        ),
        "unexpected_error": _("An unexpected error stopped the request (details below)."),
    }
    if error_class == "timeout":
        if not duration_ms:  # (a delivery's stored error: its attempt's time is not at hand)
            return _("No answer: the request timed out.")
        return _("No answer: the request timed out after %(s)s s.") % {"s": _seconds(duration_ms)}
    if error_class == "deadline_exceeded":
        if not duration_ms:
            return _(
                "The partner did not finish answering within the response deadline. It may "
                "be slow or overloaded."
            )
        return _(
            "The partner did not finish answering within the response deadline "
            "(%(s)s s). It may be slow or overloaded."
        ) % {"s": _seconds(duration_ms)}
    if error_class in sentences:
        return sentences[error_class]
    if status_code is None:
        found = re.match(r"^HTTP (\d{3})$", message)
        status_code = int(found[1]) if found else None
    if status_code is None:
        return ""
    try:  # the reason phrase is English: shown to English readers only
        phrase = HTTPStatus(status_code).phrase if get_language().startswith("en") else ""
    except ValueError:
        phrase = ""
    code = f"{status_code} {phrase}".strip()
    if 200 <= status_code <= 299:
        return _(
            'The partner answered HTTP %(code)s, but its body did not say "status": "success".'
        ) % {"code": code}
    if 300 <= status_code <= 399:
        return _(
            "The partner answered with a redirect (HTTP %(code)s). Redirects are not "
            "followed: set the partner's final URL."
        ) % {"code": code}
    if status_code in (408, 429) or status_code >= 500:
        return _("The partner answered HTTP %(code)s: a temporary failure, retried.") % {
            "code": code
        }
    if status_code == 410:
        return _("The partner answered HTTP 410 Gone: it was paused; resume it when ready.")
    return _(
        "The partner answered HTTP %(code)s: it refused the request, which is not retried."
    ) % {"code": code}


def attempt_summary(attempt: DeliveryAttempt) -> str:
    if attempt.outcome == "success":
        return ""
    return error_summary(
        error_class=attempt.error_class,
        message=attempt.error_message,
        status_code=attempt.response_status,
        duration_ms=attempt.duration_ms,
    )


OUTCOME_LABELS = {
    "success": gettext_noop("Succeeded"),
    "retry": gettext_noop("Failed: retried later"),
    "dead": gettext_noop("Failed: not retried"),
}


def outcome_label(outcome: str) -> str:
    """An attempt's stored outcome in words (without knowing whether it was the last)."""
    return _(OUTCOME_LABELS[outcome]) if outcome in OUTCOME_LABELS else outcome


def attempt_outcome(attempt: DeliveryAttempt, delivery: Delivery) -> str:
    """The outcome of one attempt, the final one of a dead delivery labelled as such."""
    final = attempt.number == delivery.attempts and delivery.status == Delivery.Status.DEAD
    if attempt.outcome == "success":
        return _("Succeeded")
    if final:
        return _("Failed: final attempt, not retried")
    if attempt.outcome == "dead":
        return _("Failed: not retried")
    return _("Failed: retried later")


@dataclass(frozen=True)
class Holdup:
    """Why a waiting delivery has not gone yet."""

    text: str
    blocker: Delivery | None = None  # the earlier delivery of the same ticket it waits for


def holdup(delivery: Delivery, *, now: Any) -> Holdup | None:
    """For a waiting delivery (pending or retrying), what it waits for; None otherwise."""
    if delivery.status not in Delivery.WAITING_STATUSES:
        return None
    blocker = blockers([delivery]).get(delivery.pk)
    if blocker is not None:
        return Holdup(
            _("Waiting for message #%(n)s of this ticket, which has not been delivered yet.")
            % {"n": blocker.event.sequence},
            blocker,
        )
    partner = delivery.partner
    if partner is not None and partner.state != partner.State.ACTIVE:
        return Holdup(
            _("Held: the partner is %(state)s. It goes when the partner is active again.")
            % {"state": partner.get_state_display().lower()}
        )
    if delivery.next_attempt_at is None or delivery.next_attempt_at <= now:
        return Holdup(_("Due now: a worker sends it within seconds."))
    return Holdup(
        _("Next attempt at %(time)s, on the retry schedule.")
        % {"time": date_format(localtime(delivery.next_attempt_at), "DATETIME_FORMAT")}
    )


def blockers(deliveries: list[Delivery]) -> dict[int, Delivery]:
    """For each waiting delivery of a page, what ticket order (SPEC §5) holds it behind, in
    two queries whatever the page holds: {delivery id: the earliest open delivery before it
    to the same target, same ticket}.

    A waiting delivery is held exactly when the first open delivery of its (target, ticket)
    is an older one, so the first of each pair is all there is to find (MIN over the partial
    index of open deliveries), however long the backlog behind it.
    """
    waiting = [d for d in deliveries if d.status in Delivery.WAITING_STATUSES]
    if not waiting:
        return {}
    pairs = Q()
    for d in waiting:
        pairs |= Q(target=d.target, ticket_id=d.ticket_id)
    firsts = (
        Delivery.objects.filter(pairs)
        .exclude(status__in=Delivery.FINAL_STATUSES)
        .values("target", "ticket_id")
        .annotate(first=Min("id"))
        .order_by()
    )
    first = {(row["target"], row["ticket_id"]): row["first"] for row in firsts}
    # (a row that went final since the page was read may have no open pair left)
    held = {d.pk: first.get((d.target, d.ticket_id), d.pk) for d in waiting}
    held = {pk: first_id for pk, first_id in held.items() if first_id < pk}
    if not held:
        return {}
    found = Delivery.objects.select_related("event").in_bulk(set(held.values()))
    return {pk: found[first_id] for pk, first_id in held.items() if first_id in found}


def delivery_error_text(delivery: Delivery) -> tuple[str, str]:
    """(the sentence, the stored detail) for a delivery's last error; ("", "") for none."""
    if delivery.status == Delivery.Status.SUCCEEDED or not delivery.last_error:
        return "", ""
    own = portal_message(delivery.last_error)
    if own is not None:
        return own, ""
    summary = error_summary(
        message=delivery.last_error,
        status_code=delivery.last_status_code if delivery.last_error.startswith("HTTP ") else None,
    )
    return summary, delivery.last_error
