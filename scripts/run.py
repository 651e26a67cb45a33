"""Start the Integration Portal in its embedded default mode (`make run`).

One command, no servers to install: SQLite and the file-system Celery broker (portalfs://,
portal/broker.py) unless the environment says otherwise (DATABASE_URL, REDIS_URL /
CELERY_BROKER_URL and every other setting are passed through untouched).

Steps:
1. defaults for the variables not already set: DEBUG=true, PORT=8000,
   PORTAL_OUTBOUND_ALLOWLIST=127.0.0.0/8,::1 (so a partner on this machine can be reached);
2. `manage.py migrate`, `collectstatic` and `seed_demo` (idempotent; prints the demo
   credentials as JSON);
3. gunicorn (web), a Celery worker (concurrency 2: SQLite allows one writer at a time) and
   Celery beat, each in its own process group, their output prefixed with their name;
4. waits for /healthz and for the worker and beat to report ready, then prints the admin URL,
   the demo login and keys and the API docs URL;
5. runs until Ctrl-C / SIGTERM, or until web exits: then stops the others (SIGTERM,
   SIGKILL to the whole process group after 10 s) and exits, non-zero if web died. A worker
   or beat that exits is started again (after 1 s, doubling to 30 s while it keeps dying)
   while web keeps serving: their work is in the database, nothing is lost.

HOST (default 127.0.0.1) is the address gunicorn binds to. Pure standard library.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = {
    "DEBUG": "true",
    "PORT": "8000",
    "PORTAL_OUTBOUND_ALLOWLIST": "127.0.0.0/8,::1",
}
STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
# A worker or beat that exits is started again (web keeps serving); see supervise().
RESTARTABLE = ("worker", "beat")
RESTART_DELAY_S = 1.0
RESTART_DELAY_MAX_S = 30.0
# A line each service logs once it is up; web is checked through /healthz instead.
READY_MARKERS = {"worker": " ready.", "beat": "beat: Starting"}


class Shutdown(Exception):
    """Raised by the signal handler to leave whatever we are waiting on."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    ready: threading.Event = field(default_factory=threading.Event)
    relay: threading.Thread | None = None

    @property
    def pgid(self) -> int:
        # start_new_session=True made the child the leader of a group with its own pid.
        return self.proc.pid


def log(message: str) -> None:
    print(f"run: {message}", flush=True)


# --- environment and one-off commands -------------------------------------------------------


def build_env() -> dict[str, str]:
    """The caller's environment plus our defaults for what it leaves unset."""
    env = dict(os.environ)
    for name, value in DEFAULTS.items():
        env.setdefault(name, value)
    env.setdefault("PYTHONUNBUFFERED", "1")  # log lines appear as they happen, not in blocks
    return env


def var_dir(env: dict[str, str]) -> Path:
    """Where SQLite, the broker folders and the beat schedule live (same rule as settings)."""
    return Path(env.get("PORTAL_VAR_DIR") or REPO_ROOT / "var")


def manage(env: dict[str, str], *args: str, capture: bool = False) -> str:
    """Run a manage.py command; exit with its code if it fails."""
    cmd = [sys.executable, "manage.py", *args]
    stdout = subprocess.PIPE if capture else None
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=stdout, text=True)
    if result.returncode != 0:
        log(f"`manage.py {' '.join(args)}` failed with exit code {result.returncode}")
        sys.exit(result.returncode)
    return result.stdout or ""


def parse_seed_output(output: str) -> dict:
    """seed_demo prints one JSON object; tolerate log lines before it."""
    for text in (output, *reversed(output.strip().splitlines())):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            return data
    log(f"seed_demo printed no JSON object:\n{output}")
    sys.exit(1)


# --- services ---------------------------------------------------------------------------------


def service_commands(env: dict[str, str], host: str, port: str) -> dict[str, list[str]]:
    python = sys.executable  # the venv's interpreter, hence the venv's gunicorn and celery
    schedule = var_dir(env) / "celerybeat-schedule"
    return {
        "web": [
            *(python, "-m", "gunicorn", "portal.wsgi:application"),
            *("--bind", f"{bracket(host)}:{port}", "--workers", "2", "--threads", "4"),
            *("--access-logfile", "-"),
        ],
        # Concurrency 2 at most: with SQLite every write is serialised (SPEC §7).
        "worker": [
            *(python, "-m", "celery", "-A", "portal", "worker"),
            *("--concurrency", "2", "--loglevel", "info"),
        ],
        "beat": [
            *(python, "-m", "celery", "-A", "portal", "beat"),
            *("--loglevel", "info", "--schedule", str(schedule)),
        ],
    }


def relay_output(service: Service, width: int) -> None:
    """Copy a service's output to ours, each line prefixed with its name; spot readiness."""
    marker = READY_MARKERS.get(service.name)
    assert service.proc.stdout is not None
    for line in service.proc.stdout:
        if marker and marker in line:
            service.ready.set()
        sys.stdout.write(f"{service.name:<{width}} | {line}")
        sys.stdout.flush()


def start_service(name: str, cmd: list[str], env: dict[str, str], width: int) -> Service:
    # Own process group: a terminal's Ctrl-C reaches only us, so we decide the order of
    # shutdown, and a final killpg also reaches gunicorn's and Celery's child processes.
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=env,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    service = Service(name, proc)
    if name not in READY_MARKERS:
        service.ready.set()
    service.relay = threading.Thread(target=relay_output, args=(service, width), daemon=True)
    service.relay.start()
    log(f"started {name} (pid {proc.pid})")
    return service


def start_services(env: dict[str, str], host: str, port: str) -> list[Service]:
    commands = service_commands(env, host, port)
    width = max(len(name) for name in commands)
    return [start_service(name, cmd, env, width) for name, cmd in commands.items()]


def exit_reason(service: Service) -> str:
    return f"{service.name} exited with code {service.proc.returncode}"


def first_exited(services: list[Service]) -> Service | None:
    return next((s for s in services if s.proc.poll() is not None), None)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_services(services: list[Service]) -> None:
    """SIGTERM each service, then SIGKILL whatever is left of its group after STOP_GRACE_S.

    SIGTERM goes to the leader only: gunicorn and the Celery worker then stop their own
    children gracefully (the worker finishes running tasks). A second Ctrl-C or SIGTERM
    while waiting skips the grace period.
    """
    force = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal force
        force = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    started = time.monotonic()
    for service in services:
        if service.proc.poll() is None:
            service.proc.terminate()
    deadline = started + STOP_GRACE_S
    while time.monotonic() < deadline and not force:
        for service in services:
            service.proc.poll()  # reap the leader so it does not keep its group "alive"
        if not any(group_alive(s.pgid) for s in services):
            finish_relays(services)
            log(f"stopped in {time.monotonic() - started:.1f} s")
            return
        time.sleep(0.1)
    for service in services:
        if group_alive(service.pgid):
            log(f"{service.name} did not stop in time; killing it")
            try:
                os.killpg(service.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        service.proc.wait()
    finish_relays(services)


def finish_relays(services: list[Service]) -> None:
    """Let the relays print the services' last lines before we exit."""
    for service in services:
        if service.relay is not None:
            service.relay.join(timeout=2)


# --- readiness and banner ---------------------------------------------------------------------


def bracket(host: str) -> str:
    """IPv6 literals need brackets in URLs and in gunicorn's --bind."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def public_host(host: str) -> str:
    """The address to print and to probe: a wildcard bind is reached on loopback."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "[::]", "") else bracket(host)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_until_ready(services: list[Service], health_url: str) -> str | None:
    """Wait for /healthz to answer 200 and every service to be ready.

    Returns why that will not happen (a service died, or the time ran out), or None.
    """
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    web_up = False
    while True:
        dead = first_exited(services)
        if dead is not None:
            return exit_reason(dead)
        web_up = web_up or healthy(health_url)
        waiting = [s.name for s in services if not s.ready.is_set()]
        if web_up and not waiting:
            return None
        if time.monotonic() > deadline:
            if not web_up:
                return f"{health_url} did not answer 200 within {STARTUP_TIMEOUT_S:.0f} s"
            return f"{', '.join(waiting)} not ready within {STARTUP_TIMEOUT_S:.0f} s"
        time.sleep(0.3)


def print_banner(base_url: str, demo: dict) -> None:
    admin_url = demo.get("adminUrl") or f"{base_url}/admin/"
    # what the demo partner verifies webhooks with (kept in var/demo-credentials.json)
    secret = demo.get("signingSecret") or "(not kept: rotate it in the admin)"
    lines = [
        "",
        "Integration Portal is running.",
        f"  Admin:        {admin_url}",
        f"  Login:        {demo.get('username')} / {demo.get('password')}",
        f"  Demo owner:   {demo.get('owner')}",
        f"  Partner:      {demo.get('partnerId')}",
        f"  Partner key:  {demo.get('apiKey')}",
        f"  Signing secret: {secret}",
        f"  Engine key:   {demo.get('engineApiKey')}",
        f"  API docs:     {base_url}/api/docs/",
        "Press Ctrl-C to stop.",
        "",
    ]
    print("\n".join(lines), flush=True)


# --- main -------------------------------------------------------------------------------------


def restart(service: Service, env: dict[str, str], host: str, port: str) -> Service:
    """Start a worker or beat again after it exited: what it was doing is in the database
    (leases expire, the dispatcher queues due deliveries again), so nothing is lost."""
    if group_alive(service.pgid):  # what is left of it (pool children) goes too
        os.killpg(service.pgid, signal.SIGKILL)
    commands = service_commands(env, host, port)
    width = max(len(name) for name in commands)
    return start_service(service.name, commands[service.name], env, width)


def supervise(services: list[Service], env: dict[str, str], host: str, port: str) -> Service:
    """Block until web exits (a Shutdown signal interrupts this) and return it. A worker or
    beat that exits is started again while web keeps answering, after RESTART_DELAY_S,
    doubled (up to RESTART_DELAY_MAX_S) while it keeps dying within a minute."""
    delays = {name: RESTART_DELAY_S for name in RESTARTABLE}
    started = {s.name: time.monotonic() for s in services}
    while True:
        for index, service in enumerate(services):
            if service.proc.poll() is None:
                continue
            if service.name not in RESTARTABLE:
                return service
            lived = time.monotonic() - started[service.name]
            delay = RESTART_DELAY_S if lived > 60 else delays[service.name]
            log(f"{exit_reason(service)}; starting it again in {delay:.0f} s (web keeps serving)")
            time.sleep(delay)
            delays[service.name] = min(delay * 2, RESTART_DELAY_MAX_S)
            services[index] = restart(service, env, host, port)
            started[service.name] = time.monotonic()
        time.sleep(0.5)


def main() -> int:
    def on_signal(signum: int, _frame: object) -> None:
        raise Shutdown(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    env = build_env()
    host = env.get("HOST") or "127.0.0.1"
    port = env["PORT"]
    base_url = f"http://{public_host(host)}:{port}"
    var_dir(env).mkdir(parents=True, exist_ok=True)
    # The processes' metric files (/metrics sums them) start afresh with the processes. Only
    # prometheus-client's own files go: the directory may be one the operator chose.
    metrics_dir = Path(env.get("PROMETHEUS_MULTIPROC_DIR") or var_dir(env) / "metrics")
    for kind in ("counter", "gauge", "histogram", "summary"):
        for stale in metrics_dir.glob(f"{kind}_*.db"):
            stale.unlink(missing_ok=True)

    services: list[Service] = []
    try:
        manage(env, "migrate", "--noinput")
        manage(env, "collectstatic", "--noinput", "--verbosity", "0")
        demo = parse_seed_output(manage(env, "seed_demo", capture=True))

        services = start_services(env, host, port)
        failure = wait_until_ready(services, f"{base_url}/healthz")
        if failure is None:
            print_banner(base_url, demo)
            failure = exit_reason(supervise(services, env, host, port))
        log(f"{failure}; stopping everything")
        return 1
    except Shutdown as stop:
        log(f"{stop}: stopping")
        return 0
    finally:
        stop_services(services)


if __name__ == "__main__":
    sys.exit(main())
