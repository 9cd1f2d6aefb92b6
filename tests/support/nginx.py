"""Debian's nginx, run by a test on loopback with the project's own ``deploy/nginx.conf``.

Only what cannot be the same on a test machine is replaced: the listen ports, the upstream
addresses, the certificate paths, and the pid and temp paths (into a directory of the test's own).
Every replacement must match exactly once, so a change to the shipped file that a test would no
longer exercise fails loudly instead of testing something else.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.server import ROOT, free_port

CONFIG = ROOT / "deploy" / "nginx.conf"
UPSTREAMS = ("hub1:8000", "hub2:8000")
CERT_PATH = "/etc/nginx/tls/tls.crt"
KEY_PATH = "/etc/nginx/tls/tls.key"


def nginx_binary() -> str:
    """nginx's path, or fail: the proxy tests must never be skipped silently."""
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail("nginx is not installed: run `make test` (it installs the system parts the tests "
                    "need, .ci/system-deps) or apt-get install nginx", pytrace=False)
    return path


def _replace_once(text: str, old: str, new: str) -> str:
    count = text.count(old)
    assert count == 1, f"deploy/nginx.conf: expected {old!r} exactly once, found it {count} times"
    return text.replace(old, new)


def render(upstreams: list[str], http_port: int, https_port: int, certfile: Path, keyfile: Path,
           workdir: Path) -> str:
    """deploy/nginx.conf for this machine (see the module docstring for what changes)."""
    text = CONFIG.read_text()
    text = _replace_once(text, "listen 80;", f"listen 127.0.0.1:{http_port};")
    text = _replace_once(text, "listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;")
    for name, address in zip(UPSTREAMS, upstreams, strict=True):
        text = _replace_once(text, f"server {name} ", f"server {address} ")
    text = _replace_once(text, CERT_PATH, str(certfile))
    text = _replace_once(text, KEY_PATH, str(keyfile))
    text = _replace_once(text, "pid /tmp/nginx.pid;", f"pid {workdir / 'nginx.pid'};")
    # Debian's build keeps its temp files under /var/lib/nginx: use the test's directory instead.
    temp = "".join(f"\n    {kind}_temp_path {workdir / kind};"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return _replace_once(text, "http {", "http {" + temp)


class Nginx:
    """One nginx master (with its workers) in the foreground, logging to files of its own."""

    def __init__(self, upstreams: list[str], certfile: Path, keyfile: Path) -> None:
        self.binary = nginx_binary()
        # Not under pytest's 0700 tmp dirs: nginx's workers drop root and must reach their temp
        # paths.
        self.dir = Path(tempfile.mkdtemp(prefix="nginx-test-"))
        self.dir.chmod(0o755)
        self.http_port = free_port()
        self.https_port = free_port()
        self.config = self.dir / "nginx.conf"
        self.config.write_text(render(upstreams, self.http_port, self.https_port, certfile, keyfile,
                                      self.dir))
        # access_log /dev/stdout and error_log /dev/stderr of the shipped file land here.
        self.access_log = self.dir / "access.log"
        self.error_log = self.dir / "error.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _command(self, *extra: str) -> list[str]:
        return [self.binary, "-p", f"{self.dir}/", "-c", str(self.config),
                "-e", str(self.error_log), *extra]

    def check(self) -> None:
        """``nginx -t`` on the rendered file."""
        result = subprocess.run(self._command("-t"), capture_output=True, timeout=30, check=False)
        assert result.returncode == 0, result.stderr.decode(errors="replace")

    def start(self, timeout: float = 10.0) -> Nginx:
        """Start and wait until it listens; on any failure nothing is left behind."""
        try:
            self.check()
            with self.access_log.open("ab") as out, self.error_log.open("ab") as err:
                self.process = subprocess.Popen(self._command("-g", "daemon off;"), stdout=out,
                                                stderr=err, start_new_session=True)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"nginx exited with {self.process.returncode}: {self.errors()}")
                try:
                    with socket.create_connection(("127.0.0.1", self.https_port), timeout=0.5):
                        return self
                except OSError:
                    time.sleep(0.05)
            raise RuntimeError(f"nginx did not listen within {timeout}s: {self.errors()}")
        except BaseException:
            self.stop()
            raise

    def errors(self) -> str:
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""

    def access(self) -> str:
        return self.access_log.read_text(errors="replace") if self.access_log.exists() else ""

    def stop(self) -> None:
        """SIGTERM (nginx's fast stop: a graceful one would wait for every open WebSocket), then
        SIGKILL of the group if it lingers."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
