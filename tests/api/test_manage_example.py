"""docs/examples/manage_partners.py, run as documented against a live server: it creates a
partner, sends it a test event and lists the tenant's dead deliveries."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from integrations.models import Delivery, Partner
from integrations.services.management import management_token_create
from tests.conftest import incoming_body
from tests.support.outbox import send_one
from tests.support.processes import REPO

SCRIPT = REPO / "docs/examples/manage_partners.py"


@pytest.mark.django_db(transaction=True)
def test_the_documented_example_runs(
    live_server, tenant, engine_api, partner, partner_server_factory
):
    # given a dead delivery, and a partner endpoint that answers
    refusing = partner_server_factory(lambda r, n: (400, b"", {}))
    Partner.objects.filter(pk=partner.pk).update(base_url=refusing.url)
    engine_api.post("/api/v1/engine/incoming", incoming_body(ticketNumber="EX-1"))
    dead = Delivery.objects.get()
    assert send_one(delivery_id=dead.pk) == "dead"
    desk = partner_server_factory(lambda r, n: (200, b'{"status":"success"}', {}))
    _, token = management_token_create(tenant=tenant, role="admin", name="docs")
    # when the script runs as docs/API.md says
    env = {**os.environ, "PORTAL_URL": live_server.url, "PORTAL_MANAGEMENT_TOKEN": token}
    run = subprocess.run(
        [sys.executable, str(SCRIPT), desk.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # then it created the partner, its test event reached it, and the dead one is listed
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "API key (shown once):        prt_" in out
    assert "test event: success, HTTP 200" in out
    assert f"dead: delivery {dead.pk} ticket EX-1" in out and "1 dead deliveries" in out
    assert Partner.objects.filter(name="Example desk", base_url=desk.url).exists()
    assert len(desk.received) == 1
