"""Secrets stay secret, and the production settings pass Django's deployment checks.

Promises: API keys, signing secrets, the engine token and Authorization headers never appear
in any log (web, worker, beat, this process; DEBUG level, JSON lines, every line parsed,
during a full flow with failures)
nor in what is stored about attempts; `manage.py check --deploy` is clean with the
production settings documented in .env.example.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import subprocess
import sys

import pytest
import requests

from integrations.models import ApiKey, Delivery, DeliveryAttempt, Partner, SigningSecret
from integrations.services.accounts import api_key_create, api_key_revoke
from integrations.services.operations import partner_send_test_event
from integrations.services.partners import partner_create, signing_secret_rotate
from tests.conftest import command_body, incoming_body, outgoing_body
from tests.reliability.conftest import sizes
from tests.support.partner import fail_during, first_try_per_id, ok
from tests.support.processes import REPO, json_log_lines, wait_for, wait_ready

IN, OUT, CMD = "/api/v1/engine/incoming", "/api/v1/outgoing", "/api/v1/command"


def _settled() -> bool:
    return not Delivery.objects.exclude(status__in=Delivery.FINAL_STATUSES).exists()


@pytest.mark.parametrize("size", sizes(ci={"events": 3}, full={"events": 30}, scaled=("events",)))
def test_secrets_never_appear_in_logs_or_stored_attempts(
    size, web, workers, engine_api, tenant, fault_server, caplog, figures
):
    caplog.set_level(logging.DEBUG)
    # given partners with keys (current, extra, revoked) and a rotated signing secret, one
    # partner reached with Basic credentials in its URL, one at a refused address, and an
    # engine relay with a bearer token
    for path, behaviour in {
        "/incoming": fail_during(1.0),
        "/send": ok(),
        "/basic": ok(),
        "/engine/m": first_try_per_id(503),
        "/engine/c": ok(),
    }.items():
        fault_server.routes[path] = behaviour
    host = fault_server.url.removeprefix("http://")
    basic_password = "basic-" + secrets.token_urlsafe(16)
    desk, desk_key, _ = partner_create(
        tenant=tenant,
        name="desk",
        base_url=fault_server.url,
        incoming_message_path="/incoming",
        send_message_path="/send",
    )
    _, extra_key = api_key_create(kind=ApiKey.Kind.PARTNER, partner=desk, name="extra")
    revoked, revoked_key = api_key_create(kind=ApiKey.Kind.PARTNER, partner=desk, name="old")
    api_key_revoke(key=revoked)
    signing_secret_rotate(partner=desk)
    basic, basic_key, _ = partner_create(
        tenant=tenant,
        name="basic",
        base_url=f"http://portal-user:{basic_password}@{host}",
        incoming_message_path="/basic",
        send_message_path="/basic",
    )
    blocked, blocked_key, _ = partner_create(
        tenant=tenant,
        name="blocked",
        base_url="http://blocked.example",
        incoming_message_path="/i",
        send_message_path="/s",
    )
    # (saving refuses that address: it is put there behind the rules' back, as a name that
    # resolved to it would be)
    Partner.objects.filter(pk=blocked.pk).update(base_url="http://169.254.169.254")
    tenant.engine_base_url = f"{fault_server.url}/engine"
    tenant.engine_send_message_path = "/m"
    tenant.engine_command_path = "/c"
    tenant.engine_token = "engine-token-" + secrets.token_urlsafe(24)
    tenant.save()
    workers.loglevel = "DEBUG"
    workers.extra_env.update({"LOG_LEVEL": "DEBUG", "PORTAL_LOG_FORMAT": "json"})
    workers.quiet = True
    workers.start_worker("w")
    workers.start_beat()
    wait_ready(workers, "w")

    def call(path: str, key: str, body: dict, scheme: str = "Bearer") -> int:
        auth = f"{scheme} {key}"
        return requests.post(
            f"{web.url}{path}", json=body, timeout=30, headers={"Authorization": auth}
        ).status_code

    # when a full flow runs over the real server, failures included
    statuses = []
    for i in range(size.events):
        ticket = f"sec-{i}"
        statuses.append(call(IN, engine_api.key, incoming_body(ticketNumber=ticket)))
        statuses.append(call(OUT, desk_key, outgoing_body(ticketNumber=ticket)))
        statuses.append(call(CMD, extra_key, command_body(ticketNumber=ticket)))
    wrong_secret = desk_key.split(".")[0] + "." + secrets.token_urlsafe(32)
    basic_credentials = base64.b64encode(f"{desk_key}:".encode()).decode()
    refused = [
        call(OUT, revoked_key, outgoing_body()),
        call(OUT, wrong_secret, outgoing_body()),
        call(OUT, basic_credentials, outgoing_body(), scheme="Basic"),
        call(OUT, desk_key, outgoing_body(), scheme="Token"),
        call(OUT, engine_api.key, outgoing_body()),
        call(IN, desk_key, incoming_body()),
        call(OUT, basic_key, outgoing_body(owner="not-mine")),
    ]
    probe = partner_send_test_event(partner=desk)
    wait_for(_settled, 60 if not size.full else 300, "every delivery to settle", workers.logs)
    # then none of the secrets is in any log or in what is stored about attempts
    raw_keys = [
        desk_key,
        extra_key,
        revoked_key,
        basic_key,
        blocked_key,
        engine_api.key,
        wrong_secret,
    ]
    signing = [s.secret for s in SigningSecret.objects.all()] + [tenant.engine_signing_secret]
    needles = [
        *((f"API key {k.split('.')[0]}", k.split(".", 1)[1]) for k in raw_keys),
        *((f"signing secret {s[:10]}…", s.removeprefix("whsec_")) for s in signing),
        ("engine token", tenant.engine_token),
        ("basic password", basic_password),
        ("basic credentials", basic_credentials),
    ]
    logs = {
        "gunicorn": web.log_text(),
        **{p.name: p.read_text(errors="replace") for p in workers.tmp.glob("*.log")},
        "pytest": caplog.text,
    }
    stored = json.dumps(
        [
            list(DeliveryAttempt.objects.values()),
            list(Delivery.objects.values("last_error")),
            list(Partner.objects.values("last_error", "state_reason")),
        ],
        default=str,
    )
    # (every line web, worker and beat wrote is a JSON object, parsed: so a secret is not
    # hidden from the search by an escape either)
    parsed = {where: json_log_lines(text) for where, text in logs.items() if where != "pytest"}
    assert all(parsed.values()), {where: len(lines) for where, lines in parsed.items()}
    logs.update({f"{where} (parsed)": repr(lines) for where, lines in parsed.items()})
    found = [
        f"{what} in {where}"
        for what, needle in needles
        for where, text in {**logs, "stored attempts": stored}.items()
        if needle in text
    ]
    engine_requests = [r for r in fault_server.receipts if r.path.startswith("/engine")]
    basic_requests = fault_server.on("/basic")
    figures.record(
        size,
        "secrets",
        secrets_checked=len(needles),
        log_bytes={k: len(v) for k, v in logs.items()},
        found=len(found),
        api_statuses=sorted(set(statuses)),
        refusals=refused,
    )
    assert found == [], found
    # and the flow really did exercise what was searched for
    assert set(statuses) == {200, 202} and all(400 <= s < 500 for s in refused)
    assert probe.status_code in (200, 500)  # it reached the partner (inside its outage or not)
    assert engine_requests and all(
        r.headers["authorization"] == f"Bearer {tenant.engine_token}" for r in engine_requests
    )
    assert basic_requests and all(
        r.headers["authorization"].startswith("Basic ") for r in basic_requests
    )
    assert DeliveryAttempt.objects.filter(response_status=503).exists()
    assert DeliveryAttempt.objects.filter(error_class="blocked_destination").exists()
    for attempt in DeliveryAttempt.objects.exclude(request_headers={}):
        authorization = attempt.request_headers.get("Authorization")
        assert authorization in (None, "Bearer ***", "Basic ***"), authorization


@pytest.mark.parametrize("size", sizes(ci={}, full={}))
def test_deploy_check_is_clean_with_production_settings(size, tmp_path, figures):
    # given the production settings as .env.example documents them
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PORTAL_VAR_DIR": str(tmp_path),
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "portal.example.com",
        "CSRF_TRUSTED_ORIGINS": "https://portal.example.com",
        "DATABASE_URL": "postgres://portal:portal@postgres.invalid:5432/portal",
        "REDIS_URL": "redis://redis.invalid:6379/0",
        "SECURE_SSL_REDIRECT": "true",
        "SESSION_COOKIE_SECURE": "true",
        "CSRF_COOKIE_SECURE": "true",
        "SECURE_HSTS_SECONDS": "31536000",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
        "SECURE_HSTS_PRELOAD": "true",
    }
    # when Django's deployment checks run
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "DEBUG"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # then there is nothing to report
    figures.record(
        size,
        "check_deploy",
        exit_code=result.returncode,
        output=(result.stdout + result.stderr).strip()[-300:],
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
