"""The portal behind PgBouncer in transaction mode (issue #17): web, worker and beat reach
PostgreSQL only through it, and every event is delivered, in order, once."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest
import requests
from django.db import connection

from integrations.models import Delivery
from tests.conftest import incoming_body
from tests.support.processes import free_port, gunicorn_cmd, http_ok, wait_for

OK = (200, b'{"status":"success"}', {})


def _pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(found).exists():
        pytest.skip("pgbouncer is not installed (make test installs it as root)")
    return found


def _start_pgbouncer(workers, port: int, home: Path) -> str:
    """PgBouncer in transaction mode in front of the test database; returns its URL."""
    s = connection.settings_dict
    run_as = os.environ.get("TEST_PG_RUN_AS", "")
    (home / "users.txt").write_text(f'"{s["USER"]}" ""\n')
    (home / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"{s['NAME']} = host={s['HOST']} port={s['PORT']} dbname={s['NAME']}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {home / 'users.txt'}\n"
        "pool_mode = transaction\nmax_client_conn = 200\ndefault_pool_size = 8\n"
        "ignore_startup_parameters = extra_float_digits,options\n"
        f"logfile = {home / 'pgbouncer.log'}\n"
    )
    if run_as:
        shutil.chown(home, run_as)
        for child in home.iterdir():
            shutil.chown(child, run_as)
    cmd = [_pgbouncer_binary(), str(home / "pgbouncer.ini")]
    if run_as:
        cmd = ["runuser", "-u", run_as, "--", *cmd]
    workers.start("pgbouncer", cmd, env=dict(os.environ))
    url = f"postgres://{s['USER']}:@127.0.0.1:{port}/{s['NAME']}"
    wait_for(lambda: _answers(url), 30, "pgbouncer to accept", workers.logs)
    return url


def _answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url.replace("postgres://", "postgresql://"), connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def test_deliveries_in_order_through_pgbouncer_in_transaction_mode(
    workers, engine_api, partner, partner_server_factory
):
    # given web, a worker and beat that reach PostgreSQL only through PgBouncer
    server = partner_server_factory(lambda r, n: (503, b"", {}) if n <= 3 else OK)
    partner.base_url = server.url
    partner.save()
    # (in a folder the server's OS user may use: pytest's tmp_path is root's only, 0700)
    home = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    try:
        _deliver_through(workers, engine_api, server, _start_pgbouncer(workers, free_port(), home))
        # (and the portal's processes did log in through PgBouncer)
        logins = (home / "pgbouncer.log").read_text().count("login attempt")
        assert logins >= 3, (home / "pgbouncer.log").read_text()[-2000:]
    finally:
        workers.stop_all(grace=0)
        shutil.rmtree(home, ignore_errors=True)


def _deliver_through(workers, engine_api, server, bouncer: str) -> None:
    workers.extra_env.update({"DATABASE_URL": bouncer, "PORTAL_PGBOUNCER": "true"})
    web_port = free_port()
    workers.start(
        "gunicorn",
        gunicorn_cmd("portal.wsgi:application", web_port, workers=2, threads=4),
        env={**workers.env(), "ALLOWED_HOSTS": "127.0.0.1"},
    )
    web = f"http://127.0.0.1:{web_port}"
    wait_for(lambda: http_ok(f"{web}/healthz"), 30, "gunicorn", workers.logs)
    workers.start_worker(concurrency=2)
    workers.start_beat()
    # when 4 tickets x 5 messages are posted to web
    expected: dict[str, list[str]] = defaultdict(list)
    for m in range(5):
        for t in range(4):
            text = f"t{t}-m{m}"
            response = requests.post(
                f"{web}/api/v1/engine/incoming",
                json=incoming_body(ticketNumber=f"B{t}", message=text),
                headers={"Authorization": f"Bearer {engine_api.key}"},
                timeout=30,
            )
            assert response.status_code == 202, response.text
            expected[f"B{t}"].append(text)
    # then every delivery succeeds, once, each ticket in order, after the partner's failures
    wait_for(
        lambda: (
            not Delivery.objects.exclude(status__in=Delivery.FINAL_STATUSES).exists()
            and Delivery.objects.count() == 20
        ),
        120,
        "every delivery final",
        workers.logs,
    )
    assert set(Delivery.objects.values_list("status", flat=True)) == {"succeeded"}
    seen: dict[str, list[str]] = defaultdict(list)
    for item in server.received:
        if item.status == 200:
            seen[item.json["ticketNumber"]].append(item.json["message"])
    assert seen == expected
    # and nothing failed on the pooled connections along the way
    logs = workers.logs()
    assert "prepared statement" not in logs and "server-side cursor" not in logs.lower()
    assert "OperationalError" not in logs and "InterfaceError" not in logs
