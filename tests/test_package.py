"""The hub installed from its wheel into a fresh virtualenv, run from another folder: every verb
finds what it needs inside the package (migrations, Lua scripts, the console)."""

from __future__ import annotations

import signal
import subprocess
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.conftest import SECRET, redis_env
from tests.support.client import attempt
from tests.support.package import InstalledHub
from tests.support.server import free_port, wait_until_answering

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_the_wheel_carries_what_hubctl_needs_at_run_time(installed_hub: InstalledHub) -> None:
    names = set(zipfile.ZipFile(installed_hub.wheel).namelist())
    assert {"app/migrations/env.py", "app/migrations/script.py.mako", "app/py.typed",
            "app/static/console/index.html", "app/static/console/console.js",
            "app/engine/lua/admit_user.lua", "hubclient/py.typed"} <= names
    assert any(name.startswith("app/migrations/versions/") and name.endswith(".py") for name in names)
    assert not any(name.startswith(("tests/", "alembic/", "bench/")) for name in names)


def hubctl(installed: InstalledHub, cwd: Path, *args: str, **variables: str) -> str:
    result = subprocess.run([str(installed.bin / "hubctl"), *args], cwd=cwd, env=installed.env(**variables),
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("engine", ["embedded", "redis"])
async def test_installed_hub_migrates_serves_and_admits_a_client(
    installed_hub: InstalledHub, tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    settings = {
        "HUB_ENV": "production",
        "HUB_JWT_SECRET": SECRET,
        "HUB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'data' / 'hub.db'}",
        "HUB_LOG_FORMAT": "json",
    }
    if engine == "redis":  # the Lua scripts are loaded from the installed package
        settings.update(redis_env(request.getfixturevalue("redis_url")))

    where = hubctl(installed_hub, elsewhere, "--help")
    assert "migrate" in where and "serve" in where
    located = subprocess.run([str(installed_hub.bin / "python"), "-c", "import app; print(app.__file__)"],
                             cwd=elsewhere, env=installed_hub.env(), capture_output=True, text=True,
                             check=True, timeout=60)
    assert located.stdout.startswith(str(installed_hub.venv)), located.stdout

    hubctl(installed_hub, elsewhere, "migrate", **settings)
    token = hubctl(installed_hub, elsewhere, "token", "--sub", "wheel-agent", "--role", "agent",
                   "--ttl", "120", **settings).strip()

    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(installed_hub.bin / "hubctl"), "serve", "--port", str(port)],
                                cwd=elsewhere, env=installed_hub.env(**settings), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_answering(proc, f"http://127.0.0.1:{port}/readyz", what=log_path.read_text)
        outcome = await attempt(f"ws://127.0.0.1:{port}/ws/agent", token=token)
        assert outcome.accepted, (outcome, log_path.read_text())
        assert outcome.messages[0]["sub"] == "wheel-agent"
        console = httpx.get(f"http://127.0.0.1:{port}/console", timeout=5)
        assert console.status_code == 200 and "console.js" in console.text
        assert httpx.get(f"http://127.0.0.1:{port}/console/console.js", timeout=5).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert "Traceback" not in log_path.read_text()
