"""Settings: defaults, and bad values fail loudly at start."""

import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from portal import env


def load_settings(**overrides) -> subprocess.CompletedProcess:
    """Import the settings in a fresh interpreter with the given environment."""
    environment = {k: v for k, v in os.environ.items() if k not in overrides}
    environment.update({k: v for k, v in overrides.items() if v is not None})
    for name, value in overrides.items():
        if value is None:
            environment.pop(name, None)
    code = (
        "import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE','portal.settings');"
        "from django.conf import settings; print(settings.PORTAL_RETRY_SCHEDULE,"
        " settings.PORTAL_PARTNER_RATE, settings.DATABASES['default']['ENGINE'],"
        " settings.CELERY_BROKER_URL)"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PORTAL_RETRY_SCHEDULE", "0,5,soon", "comma-separated whole seconds"),
        ("PORTAL_RETRY_SCHEDULE", "0,-5", "none negative"),
        ("PORTAL_PARTNER_RATE", "fast", "must look like"),
        ("PORTAL_PARTNER_RATE", "0/second", "must look like"),
        ("PORTAL_OUTBOUND_ALLOWLIST", "10.0.0.0/33", "neither a network"),
        ("PORTAL_OUTBOUND_ALLOWLIST", "10.0.0.1/8", "host bits set"),
        ("PORTAL_PARTNER_PAUSE_AFTER", "five days", "duration"),
        ("PORTAL_ENGINE_BASE_URL", "engine.local", "not an http"),
        ("DEBUG", "maybe", "not a boolean"),
        ("PORT", "eighty", "not a whole number"),
        ("DATABASE_URL", "nosuch://x", "not a database URL"),
        ("PORTAL_LOG_FORMAT", "xml", "PORTAL_LOG_FORMAT must be one of plain, json"),
        ("PORTAL_DELIVERY_CLIENT", "httpx", "must be one of curl, requests"),
    ],
)
def test_settings_bad_value_fails_loudly(name, value, message):
    proc = load_settings(**{name: value})
    assert proc.returncode != 0
    assert "ImproperlyConfigured" in proc.stderr and message in proc.stderr


def test_settings_empty_boolean_means_default():
    # a copied .env.example leaves SESSION_COOKIE_SECURE= empty: secure cookies stay on
    code = "from django.conf import settings; print(settings.SESSION_COOKIE_SECURE)"
    environment = {
        **os.environ,
        "SECRET_KEY": "x",
        "SESSION_COOKIE_SECURE": "",
        "DJANGO_SETTINGS_MODULE": "portal.settings",
    }
    proc = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True
    )
    assert proc.stdout.strip() == "True", proc.stderr


def test_settings_secret_key_required_without_debug():
    proc = load_settings(SECRET_KEY=None, DEBUG="false")
    assert proc.returncode != 0 and "SECRET_KEY is required" in proc.stderr


def test_settings_embedded_defaults(tmp_path):
    proc = load_settings(
        SECRET_KEY="x",
        DATABASE_URL=None,
        REDIS_URL=None,
        CELERY_BROKER_URL=None,
        PORTAL_RETRY_SCHEDULE=None,
        PORTAL_PARTNER_RATE=None,
        PORTAL_VAR_DIR=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        "(0,",
        "5,",
        "300,",
        "1800,",
        "7200,",
        "18000,",
        "36000,",
        "36000)",
        "50/second",
        "django.db.backends.sqlite3",
        "portalfs://",
    ]


def test_settings_sqlite_uses_wal_immediate_and_busy_timeout(tmp_path):
    code = (
        "from django.conf import settings; o=settings.DATABASES['default']['OPTIONS'];"
        "print(o['transaction_mode'], o['timeout'], 'WAL' in o['init_command'])"
    )
    environment = {
        **os.environ,
        "SECRET_KEY": "x",
        "PORTAL_VAR_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "portal.settings",
    }
    environment.pop("DATABASE_URL", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True
    )
    assert proc.stdout.split() == ["IMMEDIATE", "30", "True"], proc.stderr


def test_parse_duration_units():
    assert [env.parse_duration(v, name="X") for v in ("90", "90s", "5m", "2h", "5d")] == [
        90,
        90,
        300,
        7200,
        432000,
    ]


def test_parse_allowlist_accepts_cidrs_and_hosts():
    assert env.parse_allowlist("127.0.0.0/8, ::1,partner.local") == [
        "127.0.0.0/8",
        "::1",
        "partner.local",
    ]
    with pytest.raises(ImproperlyConfigured):
        env.parse_allowlist("bad host!")
