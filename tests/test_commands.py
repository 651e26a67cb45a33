"""Management commands: JSON out, secrets shown once, clear errors with non-zero exit."""

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from integrations.models import ApiKey, Partner, SigningSecret, Tenant, TenantMembership
from integrations.services.accounts import principal_authenticate


def run(*args) -> dict:
    out = StringIO()
    call_command(*args, stdout=out)
    return json.loads(out.getvalue())


@pytest.mark.django_db
def test_create_tenant_prints_json():
    result = run("create_tenant", "--owner", "acme01", "--name", "Acme")
    assert result == {"owner": "acme01", "name": "Acme", "timeZone": "Asia/Jakarta"}
    tenant = Tenant.objects.get(owner="acme01")
    assert tenant.engine_signing_secret.startswith("whsec_")


@pytest.mark.django_db
def test_create_tenant_duplicate_owner_fails():
    run("create_tenant", "--owner", "acme01", "--name", "Acme")
    with pytest.raises(CommandError, match="exists already"):
        run("create_tenant", "--owner", "acme01", "--name", "Acme 2")


@pytest.mark.django_db
def test_create_tenant_unknown_time_zone_fails():
    with pytest.raises(CommandError, match="time zone"):
        run("create_tenant", "--owner", "x", "--name", "X", "--time-zone", "Mars/Olympus")


@pytest.mark.django_db
def test_create_partner_prints_key_and_secret_once(tenant):
    result = run(
        "create_partner",
        "--owner",
        tenant.owner,
        "--name",
        "Desk",
        "--base-url",
        "https://desk.example/hooks/",
        "--incoming-path",
        "/in",
        "--send-path",
        "/out",
        "--channels",
        "whatsapp, Telegram",
    )
    partner = Partner.objects.get(pk=result["partnerId"])
    assert partner.base_url == "https://desk.example/hooks"
    assert partner.channels == ["telegram", "whatsapp"]
    assert principal_authenticate(result["apiKey"]).partner.pk == partner.pk
    key = ApiKey.objects.get(partner=partner)
    assert result["apiKey"] not in key.key_hash and key.prefix == result["apiKey"].split(".")[0]
    assert SigningSecret.objects.get(partner=partner).secret == result["signingSecret"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--owner", "nobody"], "No tenant"),
        (["--base-url", "not a url"], "base_url: Not an absolute"),
        (["--base-url", "ftp://x.example"], "base_url: Not an absolute"),
        (["--incoming-path", "in"], "incoming_message_path: Must start with '/'"),
    ],
)
def test_create_partner_bad_arguments_fail(tenant, args, message):
    base = {
        "--owner": tenant.owner,
        "--name": "Desk",
        "--base-url": "https://d.example",
        "--incoming-path": "/in",
        "--send-path": "/out",
    }
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    with pytest.raises(CommandError, match=message):
        run("create_partner", *[x for kv in base.items() for x in kv])
    assert not Partner.objects.exists()


@pytest.mark.django_db
def test_create_partner_duplicate_name_fails(tenant):
    args = [
        "create_partner",
        "--owner",
        tenant.owner,
        "--name",
        "Desk",
        "--base-url",
        "https://d.example",
        "--incoming-path",
        "/in",
        "--send-path",
        "/out",
    ]
    run(*args)
    with pytest.raises(CommandError, match="already has a partner"):
        run(*args)


@pytest.mark.django_db
def test_create_engine_key_for_named_and_all_tenants(tenant):
    named = run("create_engine_key", "--owner", tenant.owner)
    everyone = run("create_engine_key")
    assert named["owners"] == [tenant.owner] and everyone["owners"] == "all"
    assert principal_authenticate(named["apiKey"]).tenant_ids == frozenset({tenant.pk})
    assert principal_authenticate(everyone["apiKey"]).tenant_ids is None


@pytest.mark.django_db
def test_create_user_prints_password_once(tenant):
    from django.contrib.auth import get_user_model

    result = run("create_user", "--owner", tenant.owner, "--username", "sari", "--role", "support")
    user = get_user_model().objects.get(username="sari")
    assert user.check_password(result["password"]) and user.is_staff
    assert TenantMembership.objects.get(user__username="sari").role == "support"


@pytest.mark.django_db
def test_create_user_duplicate_fails(tenant):
    run("create_user", "--owner", tenant.owner, "--username", "sari", "--role", "admin")
    with pytest.raises(CommandError, match="exists already"):
        run("create_user", "--owner", tenant.owner, "--username", "sari", "--role", "admin")


@pytest.mark.django_db
def test_seed_demo_is_idempotent_and_its_credentials_work(settings, tmp_path):
    from django.contrib.auth import get_user_model

    settings.VAR_DIR = tmp_path
    first = run("seed_demo")
    second = run("seed_demo")
    assert first["password"] == second["password"] and first["apiKey"] == second["apiKey"]
    assert Tenant.objects.count() == 1 and Partner.objects.count() == 1
    user = get_user_model().objects.get(username=first["username"])
    assert user.check_password(first["password"]) and user.is_staff
    assert principal_authenticate(first["apiKey"]).partner.name == "Demo Partner"
    assert principal_authenticate(first["engineApiKey"]).is_engine


@pytest.mark.django_db
def test_seed_demo_run_by_hand_keeps_the_running_port(settings, tmp_path, monkeypatch):
    # given `make run` on port 8123 seeded the demo (it passes PORT)
    settings.VAR_DIR = tmp_path
    monkeypatch.setenv("PORT", "8123")
    settings.PORT = 8123
    assert run("seed_demo")["adminUrl"] == "http://127.0.0.1:8123/admin/"
    # when seed_demo is run again by hand, with no PORT (settings fall back to 8000)
    monkeypatch.delenv("PORT")
    settings.PORT = 8000
    again = run("seed_demo")
    # then the demo partner and engine relay still point at the running portal
    assert again["adminUrl"] == "http://127.0.0.1:8123/admin/"
    assert Partner.objects.get().base_url == "http://127.0.0.1:8123/demo/partner"
    assert Tenant.objects.get().engine_base_url == "http://127.0.0.1:8123/demo/engine"
    assert again["signingSecret"].startswith("whsec_")


def test_command_exit_status_is_non_zero_on_error(tmp_path):
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path}/x.sqlite3",
        "PORTAL_VAR_DIR": str(tmp_path),
    }
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], env=env, check=True)
    proc = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "create_partner",
            "--owner",
            "ghost",
            "--name",
            "n",
            "--base-url",
            "https://x.example",
            "--incoming-path",
            "/i",
            "--send-path",
            "/s",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert "No tenant with owner 'ghost'" in proc.stderr and proc.stdout == ""
