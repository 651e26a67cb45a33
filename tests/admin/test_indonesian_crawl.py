"""Every admin page a tenant user can reach, crawled in Bahasa Indonesia, shows no English UI
text, and its form labels start with a capital (issue 14).

The crawl starts at the dashboard as a tenant admin and as support staff, with the language
cookie set to Indonesian, and follows every /admin/ link (each path once, each list filter
once) on a tenant holding one of everything: partners in every state, deliveries in every
status with attempts, tickets, contacts, keys, tokens, a membership. On each page the visible
text (not the data in <pre>/<code>, not what users typed) is split into words; a word that
occurs in the English of a catalog the pages are translated from (ours, Django's admin and
core) and in none of its Indonesian translations is English UI text, reported with its page.
"""

from __future__ import annotations

import gettext
import re
from collections import deque
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import django
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from integrations.models import Delivery, DeliveryAttempt, TenantMembership
from integrations.services.accounts import api_key_create
from integrations.services.management import management_token_create
from integrations.services.partners import partner_create
from tests.conftest import command_body, incoming_body, outgoing_body
from tests.support.outbox import send_one

DJANGO = Path(django.__file__).parent
CATALOGS = [
    Path(settings.BASE_DIR) / "locale" / "id" / "LC_MESSAGES" / "django.mo",
    DJANGO / "contrib" / "admin" / "locale" / "id" / "LC_MESSAGES" / "django.mo",
    DJANGO / "contrib" / "auth" / "locale" / "id" / "LC_MESSAGES" / "django.mo",
    DJANGO / "conf" / "locale" / "id" / "LC_MESSAGES" / "django.mo",
]
# A word: letters only, not part of an id or a key ("prt_66add4…" holds no word "add").
WORD = re.compile(r"(?<![\w-])[A-Za-z]{3,}(?![\w-])")
# Words that are the same in both languages' UI (names, protocols, loanwords used as is).
SHARED = {"http", "https", "json", "url", "api", "id", "webhook", "whatsapp", "telegram", "english"}
# Data the fixtures below type in, and the values the engine sends (never UI text).
DATA = {"halo", "desk", "mitra", "sari", "ayu", "budi", "pelanggan", "satu", "dua", "tiga"}
# Text that is data whatever the language: a partner's path or URL, a JSON document.
DATA_TEXT = re.compile(r"^(/|\{|https?://)")
MAX_PAGES = 400
SKIP = ("/admin/logout/", "/admin/password_change/", "/admin/jsi18n/")


def _english_words() -> set[str]:
    english, indonesian = set(), set()
    for path in CATALOGS:
        with path.open("rb") as f:
            catalog = gettext.GNUTranslations(f)._catalog  # type: ignore[attr-defined]
        for msgid, msgstr in catalog.items():
            if isinstance(msgid, tuple):  # (msgid_plural, n)
                msgid = msgid[0]
            if not msgid or not msgstr:
                continue
            msgid = msgid.split("\x04")[-1]  # (a context)
            english |= {w.lower() for w in WORD.findall(re.sub(r"%\(\w+\)\w", " ", msgid))}
            indonesian |= {w.lower() for w in WORD.findall(msgstr)}
    return english - indonesian - SHARED - DATA


class _Text(HTMLParser):
    """Visible text and same-site links of a page."""

    SKIPPED = {"script", "style", "pre", "code", "textarea", "noscript"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.texts: list[str] = []
        self.links: list[str] = []
        self.labels: list[str] = []  # the text of each form field's <label>
        self.depth = 0
        self.in_label = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in self.SKIPPED:
            self.depth += 1
        if tag == "label":
            self.in_label = True
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "input" and attrs.get("type") in ("submit", "button") and attrs.get("value"):
            self.texts.append(attrs["value"])
        for name in ("placeholder", "aria-label"):
            if attrs.get(name):
                self.texts.append(attrs[name])

    def handle_endtag(self, tag):
        if tag == "label":
            self.in_label = False
        if tag in self.SKIPPED and self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if not self.depth and data.strip():
            self.texts.append(data.strip())
            if self.in_label:
                self.labels.append(data.strip())


def _key(url: str) -> tuple[str, tuple[str, ...]]:
    """Pages that differ only in values of the same query parameters count once, so every
    list filter is crawled once, not once per value combination."""
    parts = urlsplit(url)
    return parts.path, tuple(sorted(k for k, _ in parse_qsl(parts.query)))


@pytest.fixture
def world(tenant, engine_api, partner_api, partner, partner_server_factory):
    """One of everything a tenant user can look at."""
    sink = partner_server_factory(lambda r, n: (503, b"sibuk", {}) if n % 2 else (200, b"{}", {}))
    partner.base_url = sink.url
    partner.name = "Mitra Satu"
    partner.save()
    paused, _, _ = partner_create(
        tenant=tenant,
        name="Mitra Dua",
        base_url=sink.url,
        incoming_message_path="/in",
        send_message_path="/out",
    )
    paused.state = paused.State.PAUSED
    paused.save()
    api_key_create(kind="partner", partner=paused, name="kunci cadangan")
    engine_api.post("/api/v1/engine/incoming", incoming_body(message="Halo satu"))
    engine_api.post(
        "/api/v1/engine/incoming",
        incoming_body(
            message="Halo dua", messageType="image", mediaLink="https://cdn.example.com/a.jpg"
        ),
    )
    partner_api.post("/api/v1/outgoing", outgoing_body(message="Halo tiga"))
    partner_api.post("/api/v1/command", command_body())
    first, *rest = Delivery.objects.filter(partner=partner).order_by("id")
    send_one(delivery_id=first.pk)  # retrying (503)
    if rest:
        Delivery.objects.filter(pk=rest[-1].pk).update(status="dead", last_error="HTTP 404")
    admin = get_user_model().objects.create_user("ayu", is_staff=True)
    TenantMembership.objects.create(user=admin, tenant=tenant, role="admin")
    support = get_user_model().objects.create_user("sari", is_staff=True)
    TenantMembership.objects.create(user=support, tenant=tenant, role="support")
    management_token_create(tenant=tenant, name="otomasi", role="admin", created_by=admin)
    assert DeliveryAttempt.objects.exists()
    return {"admin": admin, "support": support}


def _crawl(user) -> dict[str, list[str]]:
    client = Client()
    client.force_login(user)
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "id"
    english = _english_words()
    found: dict[str, list[str]] = {}
    seen: set = set()
    todo = deque(["/admin/"])
    pages = 0
    while todo and pages < MAX_PAGES:
        url = todo.popleft()
        if _key(url) in seen:
            continue
        seen.add(_key(url))
        response = client.get(url)
        assert response.status_code < 500, url
        if response.status_code != 200 or "html" not in response.get("Content-Type", ""):
            continue
        pages += 1
        page = _Text()
        page.feed(response.content.decode())
        assert 'lang="id"' in response.content.decode()[:300], url
        for text in page.texts:
            if DATA_TEXT.match(text):
                continue
            words = {w for w in WORD.findall(text) if w.lower() in english}
            if words:
                found.setdefault(url, []).append(f"{text!r} ({', '.join(sorted(words))})")
        for label in page.labels:  # "Nama pengguna:", not "nama pengguna:"
            letters = [c for c in label if c.isalpha()]
            if letters and letters[0].islower():
                found.setdefault(url, []).append(f"label {label!r} starts in lower case")
        for link in page.links:
            parts = urlsplit(link)
            if parts.netloc or not parts.path:
                if not parts.netloc and parts.query:  # "?status__exact=dead" on this page
                    link = urlsplit(url).path + link
                else:
                    continue
            if link.startswith("/admin/") and not link.startswith(SKIP):
                todo.append(link)
    assert pages > 20, f"only {pages} pages crawled"
    return found


@pytest.mark.parametrize("role", ["admin", "support"])
def test_every_page_a_tenant_user_reaches_is_indonesian(world, role):
    found = _crawl(world[role])
    report = "\n".join(f"{url}\n  " + "\n  ".join(texts) for url, texts in found.items())
    assert not found, f"English UI text on {len(found)} pages:\n{report}"
