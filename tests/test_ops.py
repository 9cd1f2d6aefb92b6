"""Operations: TLS served by the hub itself, readiness through outages, the container's files.

No container engine runs here: the Dockerfile, docker-compose.yml, nginx.conf and prometheus.yml
are checked statically (the invariants that matter), and the container's entrypoint script is run
for real against SQLite.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
import secrets
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import trustme
import websockets
import yaml
from sqlalchemy.engine import make_url

from tests.conftest import BASE_ENV, SECRET, make_token, redis_env
from tests.support.client import attempt
from tests.support.package import InstalledHub
from tests.support.postgres import DEFAULT_PG_URL
from tests.support.redis_server import RedisServer
from tests.support.server import ROOT, HubProcess, free_port


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def readyz(base: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{base}/readyz", timeout=5, **kw)
    return response.status_code, response.json()


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture
def tls_hub(tmp_path: Path) -> Iterator[HubProcess]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "hub.crt", tmp_path / "hub.key"
    certfile.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(keyfile))
    keyfile.chmod(0o600)
    trust = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(trust)
    env = {**BASE_ENV, "HUB_SSL_CERTFILE": str(certfile), "HUB_SSL_KEYFILE": str(keyfile)}
    hub = HubProcess(env, tmp_path, name="tls", trust=trust)
    try:
        yield hub.start()
    finally:
        hub.kill()


async def test_tls_serves_wss_to_a_client_that_trusts_the_ca(tls_hub: HubProcess) -> None:
    outcome = await attempt(f"{tls_hub.url}/ws/agent", token=make_token("tls-agent"), ssl=tls_hub.trust)
    assert outcome.accepted, outcome
    assert outcome.messages[0]["sub"] == "tls-agent"
    assert httpx.get(f"{tls_hub.http}/healthz", verify=tls_hub.trust, timeout=5).status_code == 200


async def test_tls_client_without_the_ca_is_refused(tls_hub: HubProcess) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        await attempt(f"{tls_hub.url}/ws/agent", token=make_token("tls-untrusting"),
                      ssl=ssl.create_default_context())
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{tls_hub.http}/healthz", timeout=5)  # the system's CAs only


async def test_plain_ws_to_the_tls_port_fails(tls_hub: HubProcess) -> None:
    with pytest.raises((websockets.exceptions.InvalidHandshake, OSError, EOFError)):
        await attempt(f"ws://127.0.0.1:{tls_hub.port}/ws/agent", token=make_token("tls-plain"), timeout=5)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{tls_hub.port}/healthz", timeout=5)
    # The TLS listener is still fine after the garbage.
    assert httpx.get(f"{tls_hub.http}/healthz", verify=tls_hub.trust, timeout=5).status_code == 200


# -- readiness ---------------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.slow
async def test_readyz_follows_redis_down_and_back(start_hub: Callable[..., HubProcess]) -> None:
    redis = RedisServer()
    redis.start()
    try:
        hub = start_hub(redis_env(redis.url), name="ready-redis")
        assert readyz(hub.http) == (200, {"status": "ok", "engine": True, "database": True})

        redis.stop()
        wait_for(lambda: readyz(hub.http)[0] == 503, what="/readyz 503 with Redis down")
        status, body = readyz(hub.http)
        assert (status, body["engine"], body["database"]) == (503, False, True)
        assert httpx.get(f"{hub.http}/healthz", timeout=5).status_code == 200  # alive, not ready
        refused = await attempt(f"{hub.url}/ws/agent", token=make_token("ready-during"))
        assert (refused.status, refused.code) == (503, "unavailable")

        redis.start()  # same port, empty
        wait_for(lambda: readyz(hub.http)[0] == 200, what="/readyz 200 with Redis back")
        back = await attempt(f"{hub.url}/ws/agent", token=make_token("ready-after"))
        assert back.accepted, back
    finally:
        redis.close()


async def _pg_admin(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(False),
                                 timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture
async def pg_database() -> Any:
    """A throwaway database ``hubops_<random>`` on the local PostgreSQL, dropped afterwards."""
    admin_url = os.environ.get("TEST_DATABASE_URL", DEFAULT_PG_URL)
    try:
        await _pg_admin(admin_url, "SELECT 1")
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.fail(f"PostgreSQL is not reachable at {make_url(admin_url).render_as_string()} "
                    f"({type(exc).__name__}); set TEST_DATABASE_URL", pytrace=False)
    name = f"hubops_{secrets.token_hex(5)}"
    await _pg_admin(admin_url, f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        yield admin_url, name, make_url(admin_url).set(database=name).render_as_string(False)
    finally:
        await _pg_admin(admin_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true',
                        f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
@pytest.mark.slow
async def test_readyz_follows_the_database_down_and_back(
    start_hub: Callable[..., HubProcess], pg_database: tuple[str, str, str]
) -> None:
    admin_url, name, url = pg_database
    hub = start_hub({"HUB_DATABASE_URL": url}, name="ready-pg")  # `hubctl migrate` first
    assert readyz(hub.http) == (200, {"status": "ok", "engine": True, "database": True})

    # Unreachable: no new connections, and the pooled ones cut.
    await _pg_admin(
        admin_url,
        f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false',
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
    )
    wait_for(lambda: readyz(hub.http)[0] == 503, what="/readyz 503 with the database unreachable")
    status, body = readyz(hub.http)
    assert (status, body["engine"], body["database"]) == (503, True, False)
    # Handshakes do not need the database (bans and revocations are checked in memory).
    assert (await attempt(f"{hub.url}/ws/agent", token=make_token("pg-during"))).accepted

    await _pg_admin(admin_url, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    wait_for(lambda: readyz(hub.http)[0] == 200, what="/readyz 200 with the database back")
    assert hub.process is not None and hub.process.poll() is None  # never restarted


# -- the container's entrypoint, run for real ----------------------------------------------------

ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"


def _entrypoint_env(installed: InstalledHub, tmp_path: Path, port: int) -> dict[str, str]:
    # As in the image: the hub installed from its wheel, first on PATH, no source tree anywhere.
    return installed.env(
        HUB_JWT_SECRET=SECRET,
        HUB_HOST="127.0.0.1",
        HUB_PORT=str(port),
        HUB_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'var' / 'hub.db'}",
        HUB_LOG_FORMAT="json",
    )


@pytest.mark.slow
@pytest.mark.timeout(900)  # the first user of the session's wheel builds it
async def test_entrypoint_migrates_then_serves(tmp_path: Path, installed_hub: InstalledHub) -> None:
    port = free_port()
    env = _entrypoint_env(installed_hub, tmp_path, port)
    log_path = tmp_path / "entrypoint.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(ENTRYPOINT)], cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy() -> bool:
            assert proc.poll() is None, log_path.read_text(errors="replace")
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 30, "/healthz from the entrypoint's hub")

        # `exec`: the shell is gone, the installed hubctl itself gets the container's signals.
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        hubctl = str(installed_hub.bin / "hubctl").encode()
        assert hubctl in cmdline and b"serve" in cmdline, cmdline

        with sqlite3.connect(tmp_path / "var" / "hub.db") as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"alembic_version", "ip_bans", "revocations", "security_events"} <= tables

        outcome = await attempt(f"ws://127.0.0.1:{port}/ws/agent", token=make_token("entry-agent"))
        assert outcome.accepted, outcome

        # The image's HEALTHCHECK command against this hub.
        check = subprocess.run(["python", str(HEALTHCHECK)], env=env, capture_output=True,
                               timeout=30, check=False)
        assert check.returncode == 0, check.stderr
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            raise
    # A graceful stop: uvicorn finishes its shutdown, then re-raises the SIGTERM it caught (the
    # container runtime sees 143, as for any process stopped by SIGTERM).
    log_text = log_path.read_text(errors="replace")
    assert code in (0, -signal.SIGTERM), log_text
    assert '"hub.stopped"' in log_text and "Finished server process" in log_text, log_text
    check = subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, capture_output=True,
                           timeout=30, check=False)
    assert check.returncode == 1  # nothing listens any more


@pytest.mark.timeout(900)
def test_entrypoint_runs_a_given_command_instead(tmp_path: Path, installed_hub: InstalledHub) -> None:
    env = _entrypoint_env(installed_hub, tmp_path, free_port())
    result = subprocess.run([str(ENTRYPOINT), "hubctl", "token", "--sub", "ops", "--role", "admin"],
                            cwd=tmp_path, env=env, capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(b".") == 2  # a JWS, and nothing migrated
    assert not (tmp_path / "var").exists()


def test_entrypoint_script_is_valid_posix_sh() -> None:
    text = ENTRYPOINT.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert os.access(ENTRYPOINT, os.X_OK)
    assert "set -eu" in text
    assert 'exec hubctl serve --workers "${HUB_WORKERS:-1}"' in text
    assert text.index("hubctl migrate") < text.index("exec hubctl serve")
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True, timeout=10)


# -- docker-compose.yml ----------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def _hub_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run the hub server (the hub image, no command override)."""
    return {
        name: svc for name, svc in compose["services"].items()
        if str(svc.get("image", "")).startswith("agent-hub:") and "command" not in svc
    }


def _default(value: object) -> str:
    """What compose substitutes for ``${NAME:-default}`` when NAME is unset."""
    match = re.fullmatch(r"\$\{[A-Z_]+:-([^}]*)\}", str(value))
    return match.group(1) if match else str(value)


def _image_tag(image: str) -> str | None:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def test_compose_runs_two_hubs_on_shared_state() -> None:
    compose = _compose()
    hubs = _hub_services(compose)
    assert len(hubs) == 2, sorted(hubs)
    nginx_ip = compose["services"]["nginx"]["networks"]["hub"]["ipv4_address"]
    subnet = ipaddress.ip_network(compose["networks"]["hub"]["ipam"]["config"][0]["subnet"])
    assert ipaddress.ip_address(nginx_ip) in subnet
    for name, svc in hubs.items():
        env = svc["environment"]
        assert _default(env["HUB_REDIS_URL"]) == "redis://redis:6379/0", name
        assert env["HUB_DATABASE_URL"] == "postgresql+asyncpg://hub:hub@postgres:5432/hub", name
        assert env["HUB_ENV"] == "production", name
        assert str(env["HUB_WORKERS"]) == "2", name
        assert re.fullmatch(r"\$\{HUB_JWT_SECRET:\?[^}]*\}", env["HUB_JWT_SECRET"]), name
        trusted = [ipaddress.ip_network(c.strip()) for c in env["HUB_TRUSTED_PROXIES"].split(",")]
        assert any(ipaddress.ip_address(nginx_ip) in net for net in trusted), name
        assert all(net.num_addresses == 1 for net in trusted), "trust the proxy, not the whole network"
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        conditions = {dep: spec["condition"] for dep, spec in svc["depends_on"].items()}
        assert conditions == {"redis": "service_healthy", "postgres": "service_healthy",
                              "migrate": "service_completed_successfully"}, name
        assert svc["healthcheck"]["test"][:2] == ["CMD", "python"], name


def test_compose_hub_settings_pass_validation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What the hubs would be started with is accepted by the hub's own settings."""
    from app.config import load_settings

    monkeypatch.chdir(tmp_path)  # no .env
    for key in [k for k in os.environ if k.startswith("HUB_")]:
        monkeypatch.delenv(key)
    for svc in _hub_services(_compose()).values():
        for key, value in svc["environment"].items():
            monkeypatch.setenv(key, secrets.token_hex(32) if key == "HUB_JWT_SECRET" else _default(value))
        settings = load_settings()
        assert settings.workers == 2 and settings.engine_name == "redis"


def test_compose_healthchecks_and_pinned_images() -> None:
    compose = _compose()
    services = compose["services"]
    for name, svc in services.items():
        image = svc.get("image")
        assert image, f"{name} has no image tag"
        tag = _image_tag(image)
        assert tag and tag != "latest", f"{name}: {image} is not pinned to a tag"
        if svc.get("restart", "no") != "no":  # long-running: must say whether it is healthy
            assert "healthcheck" in svc, f"{name} has no healthcheck"
            assert svc["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has no healthcheck"
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).is_file(), f"{name} mounts missing {source}"
    for name in ("redis", "postgres"):
        assert "healthcheck" in services[name]
    assert services["migrate"]["command"] == ["hubctl", "migrate"]


def test_prometheus_scrapes_every_hub() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"] if job.get("metrics_path", "/metrics") == "/metrics"
        for static in job["static_configs"] for target in static["targets"]
    }
    assert targets == {f"{name}:8000" for name in _hub_services(_compose())}


def _nginx_blocks(text: str) -> dict[str, str]:
    """The body of each `location ...` block (no nesting inside locations here)."""
    text = re.sub(r"#[^\n]*", "", text)
    return {m.group(1).strip(): m.group(2) for m in re.finditer(r"location\s+([^{]+)\{([^}]*)\}", text)}


def test_nginx_proxies_websockets_to_every_hub() -> None:
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    code = re.sub(r"#[^\n]*", "", text)
    upstream = re.search(r"upstream\s+hub\s*\{([^}]*)\}", code)
    assert upstream, "no upstream hub"
    servers = set(re.findall(r"server\s+([\w.-]+:\d+)", upstream.group(1)))
    assert servers == {f"{name}:8000" for name in _hub_services(_compose())}
    for directive in (
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header Host $host;",
        "server_tokens off;",
    ):
        assert directive in code, directive
    assert re.search(r"large_client_header_buffers\s+\d+\s+(\d+)k;", code)
    blocks = _nginx_blocks(text)
    # nginx forgets the server's proxy_set_header lines in a location that sets one of its own.
    for where, body in blocks.items():
        assert "proxy_set_header" not in body, f"location {where} drops the server's headers"
    ws = blocks["/ws/"]
    assert "proxy_pass http://hub;" in ws
    timeout = re.search(r"proxy_read_timeout\s+(\d+)s;", ws)
    assert timeout and int(timeout.group(1)) >= 300, "WebSockets need a long read timeout"
    assert "return 404;" in blocks["= /metrics"] and "return 404;" in blocks["/admin"]
    # Query strings (legacy ?token=) stay out of the access log.
    log_format = re.search(r"log_format\s+\w+\s+((?:'[^']*'\s*)+);", code)
    assert log_format and "$request " not in log_format.group(1) and "$args" not in log_format.group(1)
    assert "$request_uri" not in log_format.group(1)


# -- Dockerfile (a small hadolint) ----------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "dangling line continuation"
    return instructions


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _dockerfile():
        if instruction[0] == "FROM":
            stages.append([])
        assert stages, "instruction before the first FROM"
        stages[-1].append(instruction)
    return stages


def test_dockerfile_base_images_are_pinned_and_multi_stage() -> None:
    stages = _stages()
    assert len(stages) >= 2, "builder + runtime"
    names = set()
    for stage in stages:
        words = stage[0][1].split()
        image = words[0]
        if image not in names:  # FROM <earlier stage> needs no tag
            tag = _image_tag(image)
            assert tag and tag != "latest", f"FROM {image} is not pinned"
        if len(words) == 3 and words[1].upper() == "AS":
            names.add(words[2])
    assert stages[-1][0][1].split()[0] == "python:3.11-slim"


def test_dockerfile_runtime_stage_is_safe() -> None:
    instructions = _dockerfile()
    runtime = _stages()[-1]
    kinds = [kind for kind, _ in runtime]
    # Non-root, set before the process starts.
    users = [args for kind, args in runtime if kind == "USER"]
    assert users, "the runtime stage never sets USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users
    last_user = max(i for i, k in enumerate(kinds) if k == "USER")
    for kind in ("ENTRYPOINT", "CMD"):
        for i, k in enumerate(kinds):
            if k == kind:
                assert i > last_user, f"{kind} before USER"
    assert "HEALTHCHECK" in kinds
    healthcheck = next(args for kind, args in runtime if kind == "HEALTHCHECK")
    assert "healthcheck.py" in healthcheck and "curl" not in healthcheck
    assert ("EXPOSE", "8000") in runtime
    env = " ".join(args for kind, args in runtime if kind == "ENV")
    assert "HUB_HOST=0.0.0.0" in env
    entrypoint = next(args for kind, args in runtime if kind == "ENTRYPOINT")
    assert entrypoint.startswith("[") and "deploy/entrypoint.sh" in entrypoint  # exec form
    # No build tools and no package manager installs in the final image.
    for kind, args in runtime:
        if kind == "RUN":
            assert not re.search(r"\b(apt-get|apt|apk)\s+(install|add)\b", args), args
            assert "pip install" not in args, "install in the builder, copy the venv"
    for kind, args in instructions:
        if kind == "ADD":
            assert not re.search(r"https?://", args), f"ADD of a URL: {args}"
        if kind == "RUN":
            for command in re.findall(r"pip3?\s+install[^&;|]*", args):
                assert "--no-cache-dir" in command, command
        if kind == "FROM":
            assert ":latest" not in args


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore drops ``path``: it or a parent matches, the last match wins."""
    parts = path.rstrip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        alternatives = {glob, glob.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(prefix, alt) for prefix in prefixes for alt in alternatives):
            ignored = not negate
    return ignored


def test_dockerfile_copies_what_the_hub_needs() -> None:
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for must_ignore in (".env", ".git", ".venv", "var", "tests"):
        assert _dockerignored(must_ignore, patterns), must_ignore
    copied: set[str] = set()
    for kind, args in _dockerfile():
        if kind != "COPY" or "--from=" in args:
            continue
        *sources, _dest = args.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY of missing {source}"
            assert not _dockerignored(source, patterns), f"COPY of {source}, which .dockerignore drops"
            copied.add(source.rstrip("/"))
    # The image runs the installed wheel: the builder builds and installs it; the runtime stage
    # copies the venv and the deploy scripts only, and never puts a source tree on the path.
    assert copied >= {"app", "hubclient", "alembic", "pyproject.toml"}  # into the builder's wheel
    builder, runtime = _stages()[0], _stages()[-1]
    runs = " ".join(args for kind, args in builder if kind == "RUN")
    assert re.search(r"pip wheel .*--wheel-dir /wheels \.", runs) and "pip install --no-cache-dir /wheels/" in runs
    runtime_copies = [args for kind, args in runtime if kind == "COPY"]
    assert runtime_copies == ["--from=builder /opt/venv /opt/venv",
                              "deploy/entrypoint.sh deploy/healthcheck.py ./deploy/"], runtime_copies
    env = " ".join(args for kind, args in runtime if kind == "ENV")
    assert "PYTHONPATH" not in env


def test_dockerfile_mentions_the_server_choice() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "h11" in text and "wsproto" in text and "uvloop" in text
