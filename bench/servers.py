"""The servers under test: the bare baseline, ``hubctl serve`` and a throwaway ``redis-server``.

Every server listens on a free 127.0.0.1 port, runs in its own process group (so that all of its
workers can be killed at once) and logs to a file in the bench's work directory. ``/proc`` gives
the worker processes, their resident memory and their CPU time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 5.0
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Limits opened wide so that the bench measures the hub's cost, not its refusals; every other
# setting is the hub's default. The message rate is raised for the relay rows (a default dashboard
# may send 20 messages a second, which would measure the limiter).
GENEROUS_LIMITS = {
    "HUB_CONNECT_RATE_PER_IP": "1000000000",
    "HUB_CONNECT_RATE_PER_USER": "1000000000",
    "HUB_AUTH_FAILURES_BEFORE_BAN": "1000000000",
    "HUB_MAX_CONNECTIONS_PER_USER": "10000",
    "HUB_MESSAGE_RATE_PER_SECOND": "1000000",
    "HUB_MESSAGE_BURST": "1000000",
    "HUB_SHUTDOWN_GRACE_SECONDS": "1",
    "HUB_LOG_FORMAT": "json",
}


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# /proc ------------------------------------------------------------------------------------------
def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from ``/proc/*/stat``)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Field 4 (ppid) follows the command name, which may itself hold spaces and parentheses.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_kib(pids: list[int]) -> int:
    """Sum of ``VmRSS`` (KiB) of these processes."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def open_sockets(pid: int) -> int:
    """How many sockets the process holds open (its client connections, and a few more)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith("socket:"):
                count += 1
        except OSError:  # closed meanwhile
            continue
    return count


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time (seconds) consumed so far by these processes."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / _CLOCK_TICKS


# Servers ----------------------------------------------------------------------------------------
class ServerProcess:
    """One server command (uvicorn underneath) on ``127.0.0.1:port``, in its own process group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path,
                 *, port: int, workers: int = 1) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.workers = workers
        self.workdir = workdir
        self.log_path = workdir / f"{name}-{port}.log"
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("HUB_")}, **env,
                    "PYTHONPATH": str(ROOT)}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            if self._healthy() and len(self.worker_pids()) == self.workers:
                if self.workers > 1:
                    time.sleep(1.5)  # every worker has its own startup; one answered already
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not start in {START_TIMEOUT_SECONDS}s:\n{self.log_tail()}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as answer:
                return int(answer.status) == 200
        except (OSError, urllib.error.URLError):
            return False

    def worker_pids(self) -> list[int]:
        """The processes that serve: uvicorn's spawned workers, or the process itself."""
        if self.process is None or self.process.poll() is not None:
            return []
        if self.workers == 1:
            return [self.process.pid]
        return [pid for pid in children(self.process.pid) if "spawn_main" in cmdline(pid)
                and "resource_tracker" not in cmdline(pid)]

    def all_pids(self) -> list[int]:
        if self.process is None or self.process.poll() is not None:
            return []
        return sorted({self.process.pid, *self.worker_pids()})

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL what is left after a few seconds."""
        if self.process is None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_SECONDS), (signal.SIGKILL, 10.0)):
            if self.process.poll() is not None:
                break
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError, PermissionError):  # stray workers
            os.killpg(self.process.pid, signal.SIGKILL)


def hub_server(name: str, env: dict[str, str], workdir: Path, *, workers: int = 1,
               database: str | None = None) -> ServerProcess:
    """``hubctl serve`` after ``hubctl migrate``, with ``env`` (``HUB_*``) on top of the limits."""
    db = workdir / f"{database or name}.db"
    full_env = {**GENEROUS_LIMITS, "HUB_DATABASE_URL": f"sqlite+aiosqlite:///{db}", **env}
    port = free_port()
    server = ServerProcess(
        name, [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", str(workers)],
        full_env, workdir, port=port, workers=workers,
    )
    subprocess.run([sys.executable, "-m", "app.cli", "migrate"], cwd=workdir, env=server.env,
                   check=True, capture_output=True, timeout=60)
    return server


def bare_server(env: dict[str, str], workdir: Path) -> ServerProcess:
    """The baseline: :mod:`bench.bare_app` under the hub's uvicorn options (:mod:`bench.bare_runner`)."""
    port = free_port()
    full_env = {**GENEROUS_LIMITS, **env}
    return ServerProcess("baseline", [sys.executable, "-m", "bench.bare_runner", "--port", str(port)],
                         full_env, workdir, port=port)


def bare_relay_server(name: str, env: dict[str, str], workdir: Path,
                      redis_url: str | None = None) -> ServerProcess:
    """The message baseline: :mod:`bench.bare_relay` under the hub's uvicorn options, forwarding
    through ``redis_url`` (shared by every process given it) or in-process."""
    port = free_port()
    full_env = {**GENEROUS_LIMITS, **env, **({"BARE_RELAY_REDIS_URL": redis_url} if redis_url else {})}
    return ServerProcess(name, [sys.executable, "-m", "bench.bare_runner", "--port", str(port), "--relay"],
                         full_env, workdir, port=port)


class RedisServer:
    """A throwaway ``redis-server``: loopback only, no persistence, its own directory."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
        self.port = free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not answer PING")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
