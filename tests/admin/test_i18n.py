"""The admin in English and Bahasa Indonesia: chosen by the browser (Accept-Language) or by
the user (the language switch posts to Django's set_language); our strings live in
locale/id/LC_MESSAGES/django.po, compiled to the committed django.mo."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import translation

from integrations.models import Delivery, Partner

PO_FILE = Path(settings.BASE_DIR) / "locale" / "id" / "LC_MESSAGES" / "django.po"
MO_FILE = PO_FILE.with_suffix(".mo")

# Our strings on the dashboard, in English and as translated.
DASHBOARD = {
    "Dashboard": "Dasbor",
    "Queue": "Antrean",
    "waiting (pending or retrying)": "menunggu (dalam antrean atau mencoba ulang)",
    "No deliveries in the last 24 hours.": "Tidak ada pengiriman dalam 24 jam terakhir.",
    "Integration Portal": "Portal Integrasi",
}


@pytest.fixture
def superuser(db):
    return get_user_model().objects.create_superuser("root", "root@example.com", "pw-unused")


# --- a .po parser: enough for what makemessages writes ----------------------------------
def _unquote(text: str) -> str:
    text = text.strip()
    assert text.startswith('"') and text.endswith('"'), text
    return re.sub(
        r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), text[1:-1]
    )


def parse_po(path: Path) -> list[dict]:
    """Entries as {"msgid", "msgid_plural", "msgstr": [..], "flags": set, "line"}; obsolete
    (#~) entries are skipped; multi-line strings are joined."""
    entries: list[dict] = []
    entry: dict | None = None
    field: tuple[str, int] | None = None  # ("msgid" | "msgid_plural" | "msgstr", index)

    def start():
        nonlocal entry
        if entry is None or "msgid" in entry:
            entry = {"flags": set(), "msgstr": {}, "line": lineno}
            entries.append(entry)

    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#~"):
            field = None
            continue
        if line.startswith("#,"):
            start()
            entry["flags"] |= {f.strip() for f in line[2:].split(",")}
        elif line.startswith("#"):
            continue
        elif line.startswith("msgctxt "):
            start()
            entry["msgctxt"] = _unquote(line[len("msgctxt ") :])
            field = ("msgctxt", 0)
        elif line.startswith("msgid_plural "):
            entry["msgid_plural"] = _unquote(line[len("msgid_plural ") :])
            field = ("msgid_plural", 0)
        elif line.startswith("msgid "):
            if entry is None or "msgid" in entry:
                start()
            entry["msgid"] = _unquote(line[len("msgid ") :])
            field = ("msgid", 0)
        elif line.startswith("msgstr"):
            match = re.match(r'msgstr(?:\[(\d+)\])? (".*")$', line)
            assert match, f"{path}:{lineno}: {raw}"
            index = int(match.group(1) or 0)
            entry["msgstr"][index] = _unquote(match.group(2))
            field = ("msgstr", index)
        elif line.startswith('"'):
            assert field is not None, f"{path}:{lineno}: continuation without a field"
            name, index = field
            if name == "msgstr":
                entry["msgstr"][index] += _unquote(line)
            else:
                entry[name] += _unquote(line)
        else:
            raise AssertionError(f"{path}:{lineno}: unexpected line {raw!r}")
    for item in entries:
        item["msgstr"] = [item["msgstr"][i] for i in sorted(item["msgstr"])]
    return entries


def _placeholders(text: str) -> list[str]:
    return sorted(re.findall(r"%\(\w+\)[sd]|\{\w*\}", text))


def our_entries() -> list[dict]:
    return [e for e in parse_po(PO_FILE) if e["msgid"]]  # without the header


# --- (a) the browser's language -------------------------------------------------------
def test_dashboard_in_indonesian_for_a_browser_that_asks_for_it(superuser):
    # Given a superuser whose browser prefers Bahasa Indonesia
    client = Client(HTTP_ACCEPT_LANGUAGE="id")
    client.force_login(superuser)

    # When they open the dashboard
    response = client.get("/admin/")

    # Then it is in Indonesian: our strings, the model names and the app name
    assert response.status_code == 200
    assert response["Content-Language"] == "id"
    html = response.content.decode()
    for english, indonesian in DASHBOARD.items():
        assert indonesian in html
        assert english not in html
    assert "Integrasi" in html
    assert "Mitra" in html and ">Partners<" not in html
    assert "Pengiriman" in html and ">Deliveries<" not in html
    # (and the language switch shows the current language as selected, every language in
    # its own name, so "English" is still there for someone who cannot read Indonesian)
    assert re.search(r'<option value="id"[^>]*\sselected>Bahasa Indonesia</option>', html)
    assert re.search(r'<option value="en"[^>]*>English</option>', html)


def test_dashboard_stays_english_for_an_english_browser(superuser):
    # Given a superuser whose browser prefers English
    client = Client(HTTP_ACCEPT_LANGUAGE="en-US,en;q=0.9")
    client.force_login(superuser)

    # When they open the dashboard
    html = client.get("/admin/").content.decode()

    # Then it is in English
    for english, indonesian in DASHBOARD.items():
        assert english in html
        assert indonesian not in html


# --- (b) the user's choice -------------------------------------------------------------
def test_language_switch_sets_indonesian_for_an_english_browser(superuser):
    # Given a superuser whose browser says English, looking at the English dashboard
    client = Client(HTTP_ACCEPT_LANGUAGE="en")
    client.force_login(superuser)
    assert "Dashboard" in client.get("/admin/").content.decode()

    # When they choose Bahasa Indonesia in the header's language switch
    response = client.post("/i18n/setlang/", {"language": "id", "next": "/admin/"})

    # Then they go back to the dashboard, the choice is remembered in the language cookie
    # and the admin answers in Indonesian although the browser still says English
    assert response.status_code == 302
    assert response["Location"] == "/admin/"
    assert client.cookies[settings.LANGUAGE_COOKIE_NAME].value == "id"
    html = client.get("/admin/").content.decode()
    assert "Dasbor" in html and "Antrean" in html
    assert "Dashboard" not in html

    # When they switch back to English
    client.post("/i18n/setlang/", {"language": "en", "next": "/admin/"})

    # Then the admin is English again
    assert "Dashboard" in client.get("/admin/").content.decode()


def test_translated_messages_and_labels_on_a_partner_page(superuser, partner_with_key):
    # Given a partner and a superuser who chose Indonesian
    partner, _, _ = partner_with_key
    client = Client(HTTP_ACCEPT_LANGUAGE="id")
    client.force_login(superuser)

    # When they open the partner's page
    html = client.get(f"/admin/integrations/partner/{partner.pk}/change/").content.decode()

    # Then our buttons, health labels and choice labels are Indonesian; ids are unchanged
    assert 'id="send-test-event"' in html
    assert "Kirim event uji" in html and "Send test event" not in html
    assert "Status dan kesehatan" in html
    assert "Aktif" in html


# --- (c) the catalog is complete ---------------------------------------------------------
def test_every_msgid_is_translated_and_none_is_fuzzy():
    # Given the Indonesian catalog
    entries = parse_po(PO_FILE)
    assert len(our_entries()) > 100

    # Then no entry (header included) is fuzzy
    fuzzy = [e.get("msgid") for e in entries if "fuzzy" in e["flags"]]
    assert fuzzy == []

    # And every msgid has a non-empty translation (every plural form, too) that keeps the
    # msgid's placeholders
    for entry in our_entries():
        where = f"{PO_FILE.name}:{entry['line']} {entry['msgid']!r}"
        assert entry["msgstr"], where
        assert all(s.strip() for s in entry["msgstr"]), f"untranslated: {where}"
        for translated in entry["msgstr"]:
            assert _placeholders(translated) == _placeholders(entry["msgid"]), where


def test_po_parser_joins_multi_line_strings(tmp_path):
    # Given a .po entry written over several lines, an obsolete one and a fuzzy one
    po = tmp_path / "x.po"
    po.write_text(
        'msgid ""\nmsgstr ""\n"Language: id\\n"\n\n'
        '#: a.py:1\nmsgid ""\n"Hello, "\n"\\"world\\""\nmsgstr ""\n"Halo, "\n'
        '"\\"dunia\\""\n\n'
        '#, fuzzy, python-format\nmsgid "%(n)d x"\nmsgstr ""\n\n'
        '#~ msgid "gone"\n#~ msgstr "hilang"\n',
        encoding="utf-8",
    )

    # When it is parsed
    header, hello, fuzzy = parse_po(po)

    # Then the pieces are joined and unescaped, and flags are read
    assert header["msgstr"] == ["Language: id\n"]
    assert (hello["msgid"], hello["msgstr"]) == ('Hello, "world"', ['Halo, "dunia"'])
    assert fuzzy["flags"] == {"fuzzy", "python-format"} and fuzzy["msgstr"] == [""]


# --- (d) the compiled catalog is what Django loads, and matches the .po -------------------
def test_compiled_catalog_translates_our_strings():
    # Given the committed .mo
    assert MO_FILE.exists(), "run: manage.py compilemessages --ignore=.venv"

    # When Django translates with the Indonesian catalog
    with translation.override("id"):
        # Then a known string of ours, model labels and choices come out in Indonesian
        assert translation.gettext("Send test event") == "Kirim event uji"
        assert str(Delivery.Status.DEAD.label) == "Gagal permanen"
        assert str(Delivery.Status.RETRYING.label) == "Mencoba ulang"
        assert str(Partner._meta.verbose_name_plural) == "mitra"
        # And every entry of the .po, so the .mo is not older than the .po content
        stale = []
        for entry in our_entries():
            if "msgid_plural" in entry:
                got = translation.ngettext(entry["msgid"], entry["msgid_plural"], 1)
            elif "msgctxt" in entry:
                got = translation.pgettext(entry["msgctxt"], entry["msgid"])
            else:
                got = translation.gettext(entry["msgid"])
            if got != entry["msgstr"][0]:
                stale.append((entry["msgid"], got, entry["msgstr"][0]))
        assert stale == [], "the .mo is stale: run manage.py compilemessages --ignore=.venv"

    # And English stays English
    with translation.override("en"):
        assert translation.gettext("Send test event") == "Send test event"
