"""Start-up refusals through the real CLI: one line each, a non-zero exit, no traceback."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app import preflight
from app.config import load_settings
from app.store.migrate import head_revision, upgrade
from tests.conftest import SECRET, make_token
from tests.support.cli import ROOT, run_cli
from tests.support.client import attempt
from tests.support.server import free_port, wait_until_answering

PRODUCTION = {"HUB_ENV": "production", "HUB_JWT_SECRET": SECRET, "HUB_LOG_FORMAT": "json"}


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hubctl: HUB_"), lines[0]
    return lines[0]


def test_serve_refuses_a_database_that_was_never_migrated(tmp_path: Path, database_url: str) -> None:
    line = one_line(run_cli(tmp_path, "serve", HUB_DATABASE_URL=database_url, **PRODUCTION))
    assert "HUB_DATABASE_URL" in line and "no schema" in line and "`hubctl migrate`" in line


async def test_serve_refuses_a_database_migrated_by_a_newer_version(
    tmp_path: Path, database_url: str
) -> None:
    await _migrate(database_url)
    await _set_revision(database_url, "ffffffffffff")
    line = one_line(run_cli(tmp_path, "serve", HUB_DATABASE_URL=database_url, **PRODUCTION))
    assert "ffffffffffff" in line and "does not know" in line


async def test_serve_refuses_a_database_behind_the_code(tmp_path: Path, database_url: str) -> None:
    await _migrate(database_url, "0001_initial")  # as version 1 left it
    line = one_line(run_cli(tmp_path, "serve", HUB_DATABASE_URL=database_url, **PRODUCTION))
    assert f"at revision 0001_initial, this version needs {head_revision()}: run `hubctl migrate`" in line
    assert run_cli(tmp_path, "migrate", HUB_DATABASE_URL=database_url, **PRODUCTION).returncode == 0
    settings = load_settings(env="production", jwt_secret=SECRET, database_url=database_url)
    assert await asyncio.to_thread(preflight.check, settings) == []  # nothing left to say


def test_serve_and_migrate_refuse_an_unreachable_database(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://hub:s3cret-pw@127.0.0.1:{free_port()}/hub"
    for verb in ("serve", "migrate"):
        line = one_line(run_cli(tmp_path, verb, HUB_DATABASE_URL=url, **PRODUCTION))
        assert "HUB_DATABASE_URL" in line and "ConnectionRefusedError" in line
        assert "s3cret-pw" not in line and "127.0.0.1" in line


def test_production_never_migrates_implicitly(tmp_path: Path) -> None:
    one_line(run_cli(tmp_path, "serve", **PRODUCTION))
    assert not (tmp_path / "var" / "hub.db").exists()  # not even an empty file


@pytest.fixture
def served(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for proc in processes:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def _serve(tmp_path: Path, port: int, **variables: str) -> subprocess.Popen[str]:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
           "LANG": "C.UTF-8", "HUB_JWT_SECRET": SECRET, "HUB_LOG_FORMAT": "json", **variables}
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


async def test_development_mode_migrates_sqlite_by_itself(
    tmp_path: Path, served: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    proc = _serve(tmp_path, port, HUB_ENV="development")
    served.append(proc)
    wait_until_answering(proc, f"http://127.0.0.1:{port}/healthz")
    assert proc.stderr is not None
    assert "development mode: migrated" in proc.stderr.readline()
    with sqlite3.connect(tmp_path / "var" / "hub.db") as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchone() == (head_revision(),)
    outcome = await attempt(f"ws://127.0.0.1:{port}/ws/agent", token=make_token("preflight-dev"))
    assert outcome.accepted, outcome


async def test_unreachable_redis_is_one_warning_and_the_hub_fails_closed(
    tmp_path: Path, served: list[subprocess.Popen[str]]
) -> None:
    port = free_port()
    proc = _serve(tmp_path, port, HUB_ENV="development",
                  HUB_REDIS_URL=f"redis://:pw-not-shown@127.0.0.1:{free_port()}/0")
    served.append(proc)
    wait_until_answering(proc, f"http://127.0.0.1:{port}/healthz")
    assert proc.stderr is not None
    lines = [proc.stderr.readline(), proc.stderr.readline()]
    warning = next(line for line in lines if "HUB_REDIS_URL" in line)
    assert warning.startswith("hubctl: warning: HUB_REDIS_URL: Redis does not answer")
    assert "retrying" in warning and "pw-not-shown" not in warning
    assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 503
    outcome = await attempt(f"ws://127.0.0.1:{port}/ws/agent", token=make_token("preflight-redis"))
    assert outcome.status == 503 and outcome.code == "unavailable", outcome


async def _migrate(url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade, url, revision)


async def _set_revision(url: str, revision: str | None) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM alembic_version"))
            if revision is not None:
                await conn.execute(text("INSERT INTO alembic_version VALUES (:r)"), {"r": revision})
    finally:
        await engine.dispose()


def test_a_worker_under_plain_uvicorn_refuses_with_one_event(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "HOME": str(tmp_path),
           "LANG": "C.UTF-8", **PRODUCTION}
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(free_port())],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode != 0
    refused = [line for line in result.stderr.splitlines() if '"hub.refused_to_start"' in line]
    assert len(refused) == 1 and "`hubctl migrate`" in refused[0], result.stderr


@pytest.mark.postgres
async def test_a_worker_waits_for_a_database_that_comes_back(pg_database: str) -> None:
    # uvicorn stops every worker when one it respawned fails to start: a worker meeting a database
    # outage waits for it (without serving) instead. The database is reached through a relay that
    # refuses connections for the first second and a half, as a restarting server would.
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    await _migrate(pg_database)
    real = make_url(pg_database)
    port = free_port()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(real.host, real.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    async def open_later() -> asyncio.Server:
        await asyncio.sleep(1.5)
        return await asyncio.start_server(relay, "127.0.0.1", port)

    url = real.set(port=port).render_as_string(hide_password=False)
    engine = create_async_engine(url)
    server_task = asyncio.create_task(open_later())
    try:
        with pytest.raises(preflight.StartupError) as refused:
            await preflight.wait_for_database(engine, url, patience=0.5)
        assert refused.value.unreachable
        started = asyncio.get_running_loop().time()
        await preflight.wait_for_database(engine, url, patience=30)
        assert asyncio.get_running_loop().time() - started >= 0.5  # it did wait
    finally:
        (await server_task).close()
        await engine.dispose()


async def test_a_schema_problem_is_not_waited_for(tmp_path: Path) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    engine = create_async_engine(url)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(preflight.StartupError) as refused:
            await preflight.wait_for_database(engine, url, patience=30)
        assert refused.value.migratable and not refused.value.unreachable
        assert asyncio.get_running_loop().time() - started < 5
    finally:
        await engine.dispose()
