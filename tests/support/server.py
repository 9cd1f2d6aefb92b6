"""Run the hub as a real server process for tests: ``hubctl serve`` on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_answering(
    process: subprocess.Popen[bytes] | subprocess.Popen[str], url: str, timeout: float = 20.0,
    what: Callable[[], str] = lambda: "",
) -> None:
    """Wait until ``url`` answers 200 (``/healthz``, ``/readyz``) from a server ``process`` started;
    fail at once, with ``what()`` (its log), if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with {process.returncode}: {what()}"
        try:
            if httpx.get(url, timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer in {timeout} s: {what()}")


class HubProcess:
    """One hub server (``hubctl serve``) with its own environment and log file.

    ``env`` holds ``HUB_*`` settings; the process never reads the developer's ``.env`` (it runs in
    ``workdir``). ``log_text()`` returns everything it logged so far (JSON lines on stderr).
    """

    def __init__(
        self, env: dict[str, str], workdir: Path, *, workers: int = 1, name: str = "hub",
        trust: ssl.SSLContext | None = None,
    ) -> None:
        self.port = free_port()
        # With ``trust`` the hub serves TLS (HUB_SSL_* in ``env``) and is reached over wss/https.
        self.trust = trust
        self.workdir = workdir
        self.workers = workers
        self.log_path = workdir / f"{name}-{self.port}.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("HUB_")},
            "HUB_LOG_FORMAT": "json",
            "HUB_DATABASE_URL": f"sqlite+aiosqlite:///{workdir / f'{name}.db'}",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'wss' if self.trust else 'ws'}://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"{'https' if self.trust else 'http'}://127.0.0.1:{self.port}"

    def migrate(self) -> None:
        """What the container does before it serves: ``hubctl migrate``."""
        subprocess.run(
            [sys.executable, "-m", "app.cli", "migrate"], cwd=self.workdir,
            env={**self.env, "PYTHONPATH": str(ROOT)}, check=True, capture_output=True, timeout=60,
        )

    def start(self, timeout: float = 20.0) -> HubProcess:
        self.migrate()
        with self.log_path.open("ab") as log:
            self.process = self._spawn(log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"hub exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(f"{self.http}/healthz", timeout=0.5,
                             verify=self.trust or True).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"hub did not start in {timeout}s:\n{self.log_text()}")

    def _spawn(self, log: BinaryIO) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port),
             "--workers", str(self.workers)],
            cwd=self.workdir,
            env={**self.env, "PYTHONPATH": str(ROOT)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL the whole process group (every worker): no cleanup at all."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
