"""Error lines carry their stack: JSON log lines render ``exc_info`` as text, tokens redacted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

from tests.conftest import make_token
from tests.support.cli import ROOT
from tests.support.server import free_port

TOKEN = make_token("log-test")

# A real uvicorn server under the hub's logging set-up, serving an app that fails in a named frame;
# the hub's own structlog logger reports a failure too.
SERVER = textwrap.dedent(
    """
    import sys
    import uvicorn
    from app.logs import configure_logging, get_logger

    def frame_that_fails(token):
        raise RuntimeError("refused " + token)

    async def app(scope, receive, send):
        if scope["type"] == "http":
            try:
                frame_that_fails(sys.argv[2])
            except RuntimeError:
                get_logger("app.test").exception("test.failed")
            frame_that_fails(sys.argv[2])

    configure_logging("info", "json")
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, lifespan="off")
    """
)


def test_an_exception_in_a_real_server_is_logged_with_its_frames(tmp_path: Path) -> None:
    port = free_port()
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    log_path = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, str(script), str(port), TOKEN], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(200):
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 500
                break
            except httpx.TransportError:
                time.sleep(0.05)
        for _ in range(100):
            if "Exception in ASGI application" in log_path.read_text():
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    text = log_path.read_text()
    assert TOKEN not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    for event in ("Exception in ASGI application", "test.failed"):
        line = next(line for line in lines if line["event"].strip() == event)
        assert line["level"] == "error"
        stack = line["exception"]
        assert stack.startswith("Traceback (most recent call last):"), stack
        assert "in frame_that_fails" in stack and "RuntimeError: refused [redacted-jwt]" in stack
        assert "traceback object at" not in json.dumps(line)
