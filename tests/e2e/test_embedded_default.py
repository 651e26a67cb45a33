"""The embedded default as `make run` starts it (SQLite, file-system broker, web + worker +
beat): a signed delivery that fails twice, then arrives, in order."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import requests
from standardwebhooks.webhooks import Webhook

from tests.conftest import incoming_body
from tests.support.partner import PartnerServer
from tests.support.processes import REPO, wait_for

OK = (200, b'{"status":"success"}', {})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_banner(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline:
        chunk = proc.stdout.readline()
        if chunk:
            lines.append(chunk)
            if "Press Ctrl-C to stop." in chunk:
                return "".join(lines)
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.1)
    raise AssertionError("make run did not come up:\n" + "".join(lines)[-4000:])


def _check_health_and_admin_login(port: int, banner: str) -> None:
    """/healthz answers 200 and the printed demo login opens /admin/."""
    base = f"http://127.0.0.1:{port}"
    assert requests.get(f"{base}/healthz", timeout=10).status_code == 200
    username, password = re.search(r"Login:\s+(\S+) / (\S+)", banner).groups()
    session = requests.Session()
    session.get(f"{base}/admin/login/", timeout=10)
    response = session.post(
        f"{base}/admin/login/?next=/admin/",
        timeout=10,
        allow_redirects=True,
        data={
            "username": username,
            "password": password,
            "next": "/admin/",
            "csrfmiddlewaretoken": session.cookies["csrftoken"],
        },
    )
    assert response.status_code == 200 and response.url == f"{base}/admin/"
    assert "Log out" in response.text or "logout" in response.text


def _read_until(proc: subprocess.Popen, pattern: str, timeout: float) -> re.Match:
    """Read make run's output (non-blocking, as _wait_for_banner set it) until `pattern`."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        else:
            time.sleep(0.1)
    raise AssertionError(f"no {pattern!r} in make run's output:\n" + "".join(seen)[-4000:])


def _post_incoming(port: int, engine_key: str, body: dict) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/engine/incoming",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {engine_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 202


def test_embedded_default_delivers_signed_in_order_after_two_failures(tmp_path):
    # given the embedded default started the way `make run` starts it
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "DATABASE_URL",
            "REDIS_URL",
            "CELERY_BROKER_URL",
            "DEBUG",
            "SECRET_KEY",
            "PROMETHEUS_MULTIPROC_DIR",  # its own, var/metrics, as make run has it
        )
    }
    env.update(
        {
            "PORT": str(port),
            "PORTAL_VAR_DIR": str(tmp_path / "var"),
            "PORTAL_RETRY_SCHEDULE": "0,1,1,1,1",
            "PORTAL_DISPATCH_INTERVAL_MS": "300",
            "PYTHONUNBUFFERED": "1",
        }
    )
    # and metric files a previous run left (make run empties them; nothing else goes)
    metrics_dir = tmp_path / "var" / "metrics"
    metrics_dir.mkdir(parents=True)
    (metrics_dir / "counter_old-1.db").write_bytes(b"stale")
    (metrics_dir / "notes.txt").write_text("the operator's")
    proc = subprocess.Popen(
        [sys.executable, "scripts/run.py"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    server = PartnerServer(lambda r, n: (500, b"", {}) if n <= 2 else OK)
    try:
        banner = _wait_for_banner(proc, 120)
        assert re.search(r"Signing secret:\s+whsec_", banner), banner
        assert not (metrics_dir / "counter_old-1.db").exists()
        assert (metrics_dir / "notes.txt").exists()
        _check_health_and_admin_login(port, banner)
        engine_key = re.search(r"Engine key:\s+(\S+)", banner).group(1)
        owner = re.search(r"Demo owner:\s+(\S+)", banner).group(1)
        created = subprocess.run(
            [
                sys.executable,
                "manage.py",
                "create_partner",
                "--owner",
                owner,
                "--name",
                "E2E",
                "--base-url",
                server.url,
                "--incoming-path",
                "/in",
                "--send-path",
                "/out",
            ],
            cwd=REPO,
            env={**env, "DEBUG": "true"},
            capture_output=True,
            text=True,
            check=True,
        )
        secret = json.loads(created.stdout)["signingSecret"]
        # when three messages of one ticket arrive
        for i in range(3):
            body = incoming_body(owner=owner, ticketNumber="EMB-1", message=f"m{i}")
            _post_incoming(port, engine_key, body)
        # then the partner gets all three, in order, signed, after two failed tries
        wait_for(
            lambda: sum(r.status == 200 for r in server.received) == 3,
            90,
            "three acknowledged deliveries",
        )
        assert [r.status for r in server.received] == [500, 500, 200, 200, 200]
        accepted = [r.json["message"] for r in server.received if r.status == 200]
        assert accepted == ["m0", "m1", "m2"]
        for item in server.received:
            Webhook(secret).verify(item.body, item.headers)

        # when the worker dies (SIGKILL, as the kernel's OOM killer would)
        worker_pid = int(re.search(r"started worker \(pid (\d+)\)", banner).group(1))
        os.killpg(worker_pid, signal.SIGKILL)
        # then make run starts it again, and web keeps answering meanwhile
        restarted = _read_until(proc, r"started worker \(pid (\d+)\)", 60)
        assert int(restarted.group(1)) != worker_pid and proc.poll() is None
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        # and a message sent now is delivered by the new worker
        _post_incoming(
            port, engine_key, incoming_body(owner=owner, ticketNumber="EMB-1", message="m3")
        )
        wait_for(
            lambda: sum(r.status == 200 for r in server.received) == 4,
            90,
            "the fourth delivery, after the worker restart",
        )
        assert [r.json["message"] for r in server.received if r.status == 200][-1] == "m3"
        # and /metrics sums web and worker: four events accepted, three attempts failed or not
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert 'portal_events_accepted_total{kind="incoming",source="engine"} 4.0' in text
        assert 'portal_delivery_attempts_total{outcome="success"}' in text
    finally:
        server.close()
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
