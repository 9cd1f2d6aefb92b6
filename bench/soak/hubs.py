"""A hub host's ``hubctl serve``, run inside its simulated host, and the faults that hit it.

Built on :class:`bench.servers.ServerProcess` (process group, log file, ``/proc`` helpers); what
differs is where it runs (``ip netns exec``) and where it is reached (the host's address).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.servers import ServerProcess, children, cmdline
from bench.soak.hosts import Host

HUB_PORT = 8000
RESTART_TIMEOUT_SECONDS = 120.0
"""How long a drained host may take to come back: it waits (by design) for a database that a
concurrent fault took away, on a machine that may be starved; a 30 s limit aborted a whole run."""


class HostedHub(ServerProcess):
    """``hubctl serve --workers N`` on ``host`` (port :data:`HUB_PORT` in a namespace)."""

    def __init__(self, host: Host, env: dict[str, str], workdir: Path, *, workers: int, port: int) -> None:
        argv = host.command([sys.executable, "-m", "app.cli", "serve", "--host", host.listen_host,
                             "--port", str(port), "--workers", str(workers)])
        super().__init__(f"hub-{host.name}", argv, env, workdir, port=port, workers=workers)
        self.host = host

    @property
    def urls(self) -> list[str]:
        """One URL per address of the host (clients spread over them: many source addresses)."""
        return [f"ws://{address}:{self.port}" for address in self.host.hub_addresses]

    def _healthy(self) -> bool:
        try:
            url = f"http://{self.host.hub_addresses[0]}:{self.port}/healthz"
            with urllib.request.urlopen(url, timeout=1) as answer:
                return int(answer.status) == 200
        except (OSError, urllib.error.URLError):
            return False

    def worker_pids(self) -> list[int]:
        if self.process is None or self.process.poll() is not None:
            return []
        return [pid for pid in children(self.process.pid) if "spawn_main" in cmdline(pid)
                and "resource_tracker" not in cmdline(pid)]

    def kill_worker(self) -> int | None:
        """``kill -9`` of one worker (the supervisor starts another); its PID, if there was one."""
        pids = self.worker_pids()
        if not pids:
            return None
        os.kill(pids[0], signal.SIGKILL)
        return pids[0]

    def wait_workers(self, timeout: float = 30.0) -> bool:
        """Until the supervisor has all its workers again and the host answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.worker_pids()) == self.workers and self._healthy():
                return True
            time.sleep(0.2)
        return False

    def drain(self, timeout: float = 30.0) -> int | None:
        """SIGTERM to the supervisor, as an orchestrator's rolling restart does; waits for the
        exit (connections are closed 1012 within the grace period) and returns the exit code."""
        if self.process is None:
            return None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            return None

    def restart(self, timeout: float = RESTART_TIMEOUT_SECONDS) -> bool:
        """Start the host again after a drain; True once it answers with all its workers. The
        soak goes on either way (a host that did not come back is the fault's finding)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self._healthy() and len(self.worker_pids()) == self.workers:
                return True
            time.sleep(0.2)
        return False

    def metric(self, name: str) -> float | None:
        """The sum of a metric's samples from this host's ``/metrics`` (``None``: no answer)."""
        try:
            url = f"http://{self.host.hub_addresses[0]}:{self.port}/metrics"
            with urllib.request.urlopen(url, timeout=3) as answer:
                text = answer.read().decode()
        except (OSError, urllib.error.URLError):
            return None
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total
