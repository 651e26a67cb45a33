"""Children in their own process groups, for the end-to-end and reliability fixtures and for
the benchmarks: start one with a log file, wait until it is ready, stop or kill its whole
group (a Celery worker and its pool, gunicorn and its workers), and what /proc says about it.

    children = Children(tmp)
    proc = children.start("w1", celery_worker_cmd(2, "w1"), env=env)
    wait_ready(children, "w1")
    ...
    children.stop_all()

Standard library only.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
STOP_GRACE_S = 10.0


def free_port() -> int:
    """A loopback port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    logs: Callable[[], str] | None = None,
    *,
    interval: float = 0.2,
    check: Callable[[], None] | None = None,
) -> float:
    """Poll `predicate()` until it is true; returns the seconds waited. `check()` runs between
    polls (e.g. `Children.check_alive`, to fail at once). Raises TimeoutError naming `what`,
    with `logs()` when given."""
    started = time.monotonic()
    while not predicate():
        if check is not None:
            check()
        if time.monotonic() - started > timeout:
            raise TimeoutError(
                f"timed out after {timeout:.0f} s waiting for {what}\n{logs() if logs else ''}"
            )
        time.sleep(interval)
    return time.monotonic() - started


def http_ok(url: str) -> bool:
    """A GET of `url` answers 2xx (no proxy, 2 s timeout)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
    try:
        conn.request("GET", parts.path or "/")
        return 200 <= conn.getresponse().status < 300
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


# --- process groups ------------------------------------------------------------------------


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to one process group we started; False when it is gone already."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_group(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait until no process of the child's group is left; True when none is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader so it does not keep its group "alive"
        if not group_alive(proc.pid):
            return True
        time.sleep(0.05)
    return False


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to the child's whole group (main process and its pool) and wait for the
    main process."""
    signal_group(proc.pid, sig)
    proc.wait(15)


def stop(proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the child's group, SIGKILL what is left after `grace` seconds (at once when
    `grace` is 0)."""
    if grace <= 0 or (signal_group(proc.pid, signal.SIGTERM) and not wait_group(proc, grace)):
        if grace > 0:
            _warn(f"pid {proc.pid} still running after {grace:.0f}s; killing its group")
        signal_group(proc.pid, signal.SIGKILL)
        wait_group(proc, 5)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        _warn(f"pid {proc.pid} did not exit")


def _warn(message: str) -> None:
    print(f"processes: {message}", file=sys.stderr, flush=True)


class Children:
    """Long-running children, each in its own session, output to <tmp>/<name>.log."""

    def __init__(self, tmp: Path | None = None) -> None:
        self.tmp = tmp
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(
        self, name: str, cmd: Sequence[str], *, env: dict[str, str], cwd: Path = REPO
    ) -> subprocess.Popen:
        """Start `cmd` in a new session (its own process group; a terminal's Ctrl-C does not
        reach it), appending its output to `log_path(name)`."""
        with open(self.log_path(name), "ab") as out:
            proc = subprocess.Popen(
                list(cmd),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append((name, proc))
        return proc

    def log_path(self, name: str) -> Path:
        assert self.tmp is not None, "no directory for the logs yet"
        return self.tmp / f"{name}.log"

    def logs(self) -> str:
        """The end of every log in the directory, for a failure message."""
        assert self.tmp is not None
        return "\n".join(f"--- {p.name}\n{tail(p)}" for p in sorted(self.tmp.glob("*.log")))

    def check_alive(self) -> None:
        """Raise if a child died (with the end of its log)."""
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode}:\n{tail(self.log_path(name))}"
                )

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        kill(proc, sig)

    def stop_named(self, name: str, grace: float = STOP_GRACE_S) -> None:
        for entry in [e for e in self.procs if e[0] == name]:
            stop(entry[1], grace)
            self.procs.remove(entry)

    def stop_all(self, grace: float = STOP_GRACE_S) -> None:
        """Stop every child still running, the last started first."""
        for _name, proc in reversed(self.procs):
            if proc.poll() is None or group_alive(proc.pid):
                stop(proc, grace)
        self.procs.clear()


def wait_ready(
    children: Children,
    name: str,
    timeout: float = 60,
    check: Callable[[], None] | None = None,
) -> float:
    """Wait until the Celery worker started as `name` logs that it is ready to take tasks."""
    log = children.log_path(name)
    return wait_for(
        lambda: log.exists() and " ready." in log.read_text(errors="replace"),
        timeout,
        f"worker {name} to be ready",
        children.logs,
        check=check,
    )


# --- the portal's processes ----------------------------------------------------------------


def _celery(quiet: bool) -> list[str]:
    # --quiet: no start-up banner (plain text on stdout, which a JSON log must not have)
    return [PYTHON, "-m", "celery", "-A", "portal", *(["--quiet"] if quiet else [])]


def celery_worker_cmd(
    concurrency: int,
    name: str,
    loglevel: str = "INFO",
    extra: Sequence[str] = (),
    *,
    quiet: bool = False,
) -> list[str]:
    return [
        *_celery(quiet),
        *("worker", "--loglevel", loglevel),
        *("--concurrency", str(concurrency), "--hostname", f"{name}@%h"),
        *("--without-gossip", "--without-mingle", *extra),
    ]


def celery_beat_cmd(schedule: Path, loglevel: str = "INFO", *, quiet: bool = False) -> list[str]:
    return [*_celery(quiet), "beat", "--loglevel", loglevel, "--schedule", str(schedule)]


def gunicorn_cmd(
    app: str, port: int, *, workers: int, threads: int, extra: Sequence[str] = ()
) -> list[str]:
    return [
        *(PYTHON, "-m", "gunicorn", app, "--bind", f"127.0.0.1:{port}"),
        *("--workers", str(workers), "--threads", str(threads), *extra),
    ]


# What Celery writes itself, outside logging, on a worker's way out (its start-up banner is
# left out with --quiet); and billiard's line for a pool process that a SIGTERM to the whole
# group ended while the worker still waited for a task (a pump lingering on its bell) to end.
CELERY_OWN_LINES = re.compile(
    r"worker: (Warm|Cold) shutdown \(MainProcess\)"
    r"|Process 'ForkPoolWorker-\d+' pid:\d+ exited with 'signal 15 \(SIGTERM\)'"
)


def json_log_lines(text: str) -> list[dict]:
    """Each line of a log parsed as JSON (a line that is not one fails the test)."""
    lines = []
    for line in text.splitlines():
        if not line.strip() or CELERY_OWN_LINES.fullmatch(line):
            continue
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise AssertionError(f"not a JSON log line: {line!r}") from exc
    return lines


# --- /proc ---------------------------------------------------------------------------------


def pool_children(proc: subprocess.Popen) -> list[int]:
    """Pids of a pool's processes (children of its main process, e.g. a Celery worker's)."""
    path = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    try:
        return [int(pid) for pid in path.read_text().split()]
    except OSError:
        return []


def rss_kib(pid: int) -> int:
    """Resident set size (VmRSS) of a process in KiB; 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_table() -> dict[int, tuple[int, int, float, float]]:
    """pid -> (ppid, pgid, own CPU seconds, reaped children's CPU seconds), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # ended meanwhile
        fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
        own = (int(fields[11]) + int(fields[12])) / ticks
        children = (int(fields[13]) + int(fields[14])) / ticks
        table[int(entry)] = (int(fields[1]), int(fields[2]), own, children)
    return table
