"""Standard Webhooks signing and the meaning of a partner's answer (SPEC §5).

Pure Python: no network, no ORM, no settings.
"""

from __future__ import annotations

import base64
import json
import math
import secrets as _secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum

from standardwebhooks.webhooks import Webhook


class Outcome(StrEnum):
    """What one attempt means for its delivery (SPEC §5)."""

    SUCCESS = "success"
    RETRY = "retry"
    DEAD = "dead"


# --- signing -------------------------------------------------------------------------------


def generate_secret() -> str:
    """Return a new Standard Webhooks signing secret: "whsec_" + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(_secrets.token_bytes(32)).decode("ascii")


def sign_headers(
    *, msg_id: str, body: bytes, secrets: Sequence[str], timestamp: datetime | None = None
) -> dict[str, str]:
    """Build the Standard Webhooks headers for `body`, one v1 signature per secret.

    Several secrets (a rotation in progress) give space-separated signatures, so a receiver
    holding either secret verifies. A naive `timestamp` is taken as UTC; default now.
    Raises ValueError with no secret, a secret without the "whsec_" prefix or an undecodable
    one, or a body that is not UTF-8.
    """
    if isinstance(secrets, str) or not secrets:
        raise ValueError("sign_headers needs a non-empty sequence of whsec_ secrets")
    moment = timestamp or datetime.now(UTC)
    # Webhook.sign() *replaces* tzinfo with UTC, so hand it a UTC wall-clock time.
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    text = body.decode("utf-8")
    signatures = []
    for secret in secrets:
        if not secret.startswith("whsec_"):
            raise ValueError("signing secrets must start with 'whsec_'")
        try:
            signatures.append(Webhook(secret).sign(msg_id, moment, text))
        except Exception as exc:  # binascii.Error, EmptyWebhookSecretError, ...
            raise ValueError(f"unusable signing secret: {exc}") from exc
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(math.floor(moment.timestamp())),  # as Webhook.sign()
        "webhook-signature": " ".join(signatures),
    }


# --- answers -------------------------------------------------------------------------------

_RETRY_AFTER_MAX = 365 * 24 * 3600.0  # keeps timedelta arithmetic finite; callers cap lower


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date).

    Returns None when absent or invalid (including negative numbers); a date in the past
    gives 0.0; the result is never negative and never above one year.
    """
    text = (value or "").strip()
    if not text:
        return None
    if text.isdigit():
        return min(float(text), _RETRY_AFTER_MAX)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)  # HTTP-dates are GMT
    reference = now or datetime.now(UTC)
    reference = reference if reference.tzinfo else reference.replace(tzinfo=UTC)
    return min(max((when - reference).total_seconds(), 0.0), _RETRY_AFTER_MAX)


def classify(status_code: int | None, body: bytes, content_type: str | None) -> Outcome:
    """Map one answer to an outcome per SPEC §5.

    None (no answer) -> RETRY; 2xx -> SUCCESS unless the body is a JSON object whose "status"
    is not exactly "success" (-> RETRY); 408, 429, 5xx -> RETRY; everything else (1xx, 3xx,
    other 4xx incl. 410, nonsense codes) -> DEAD. `content_type` is deliberately not trusted:
    partners answer JSON as text/plain often enough that the body alone decides.
    """
    if status_code is None or status_code in (408, 429) or 500 <= status_code <= 599:
        return Outcome.RETRY
    if not 200 <= status_code <= 299:
        return Outcome.DEAD
    if body.lstrip()[:1] == b"{":
        try:
            document = json.loads(body)
        except ValueError:  # truncated or not JSON after all: the 2xx stands
            return Outcome.SUCCESS
        if isinstance(document, dict) and "status" in document:
            return Outcome.SUCCESS if document["status"] == "success" else Outcome.RETRY
    return Outcome.SUCCESS
