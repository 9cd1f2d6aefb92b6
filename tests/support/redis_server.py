"""A throwaway ``redis-server`` for tests: loopback only, no persistence, its own temp dir.

It can be stopped and started again on the same port (outage tests) or killed outright. Use
:func:`redis_server_binary` to fail (not skip) with a clear message when the binary is missing.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

STARTUP_TIMEOUT_SECONDS = 10.0


def redis_server_binary() -> str:
    """The ``redis-server`` path, or fail the test: a Redis test must never be skipped silently."""
    path = shutil.which("redis-server")
    if path is None:
        pytest.fail(
            "redis-server is not on PATH: install it (apt-get install redis-server) to run the "
            "Redis tests; TEST_REDIS_URL cannot replace it for tests that stop and restart Redis",
            pytrace=False,
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1:port``; restartable on the same port."""

    def __init__(self, binary: str | None = None, port: int | None = None) -> None:
        self.binary = binary or redis_server_binary()
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="redis-test-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start (or restart) the server and wait until it answers PING."""
        if self.running:
            return
        log = Path(self._dir.name) / "redis.log"
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", self._dir.name,
                "--logfile", str(log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self._proc.returncode}: "
                    f"{log.read_text(errors='replace') if log.exists() else '(no log)'}"
                )
            if self._answers_ping():
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"redis-server did not answer PING on port {self.port}")

    def stop(self) -> None:
        """Shut the server down (SIGTERM) and wait for it; the port is free again after."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def pause(self, paused: bool = True) -> None:
        """SIGSTOP (or SIGCONT): a Redis that keeps its connections open and answers nothing."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def close(self) -> None:
        self.pause(False)
        self.kill()
        self._dir.cleanup()

    def flushall(self) -> None:
        self._command(b"FLUSHALL")

    def _answers_ping(self) -> bool:
        try:
            return self._command(b"PING").startswith(b"+PONG")
        except OSError:
            return False

    def _command(self, name: bytes) -> bytes:
        # A raw RESP exchange keeps this helper free of the client library under test.
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(b"*1\r\n$%d\r\n%s\r\n" % (len(name), name))
            return sock.recv(64)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
