"""Fixtures of the store suite: every store test runs on SQLite (a temporary file) and PostgreSQL.

PostgreSQL comes from ``TEST_DATABASE_URL`` (default: a local server with trust auth). Each test
gets a throwaway database ``hubtest_<random>`` (created from ``template0``, so it is empty and no
other session's connections to ``template1`` get in the way), dropped after the test; anything a
crashed test left behind is dropped at the end of the session. No test depends on leftover state.
When PostgreSQL is unreachable the PostgreSQL tests fail with a clear message: they never skip.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy.engine import URL, make_url

from app.security_log import SecurityEvent
from app.store import Store
from app.store.migrate import upgrade

DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
T0 = datetime(2030, 1, 1, tzinfo=UTC)


class FakeClock:
    """An aware UTC clock that moves only when told to."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def make_event(
    at: datetime = T0, code: str = "token_invalid", **fields: str | None
) -> SecurityEvent:
    values: dict[str, str | None] = {
        "event": "ws.auth_failed",
        "endpoint": "/ws/agent",
        "client_ip": "192.0.2.1",
    }
    values.update(fields)
    return SecurityEvent(code=code, at=at.timestamp(), **values)  # type: ignore[arg-type]


def _asyncpg_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class PgServer:
    """Creates and drops throwaway databases on the test server."""

    def __init__(self, url: URL) -> None:
        self.url = url
        self.created: set[str] = set()

    async def _admin(self, sql: str) -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(self.url), timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def create_database(self) -> str:
        name = f"hubtest_{secrets.token_hex(6)}"
        await self._admin(f'CREATE DATABASE "{name}" TEMPLATE template0')
        self.created.add(name)
        return self.url.set(database=name).render_as_string(hide_password=False)

    async def drop_database(self, url: str) -> None:
        name = make_url(url).database
        assert name is not None and name.startswith("hubtest_")
        await self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.discard(name)


@pytest.fixture(scope="session")
async def pg_server() -> AsyncIterator[PgServer]:
    url = make_url(os.environ.get("TEST_DATABASE_URL", DEFAULT_PG_URL))
    shown = url.render_as_string(hide_password=True)
    try:
        conn = await asyncpg.connect(_asyncpg_dsn(url), timeout=5)
        await conn.close()
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {shown} ({type(exc).__name__}: {exc}). The store "
            "tests need a real server: start one or point TEST_DATABASE_URL at one "
            "(postgresql+asyncpg://user@host:port/db, allowed to CREATE DATABASE).",
            pytrace=False,
        )
    server = PgServer(url)
    yield server
    for name in list(server.created):
        await server.drop_database(url.set(database=name).render_as_string(hide_password=False))


@pytest.fixture
async def pg_database(pg_server: PgServer) -> AsyncIterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    url = await pg_server.create_database()
    try:
        yield url
    finally:
        await pg_server.drop_database(url)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of its own for this test (no schema: see ``store`` for a migrated one)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}"
    # Requested only here, so that the SQLite half never needs PostgreSQL. (A sync fixture: an
    # async one cannot set up another async fixture on demand.)
    url: str = request.getfixturevalue("pg_database")
    return url


async def migrate(url: str, revision: str = "head") -> None:
    """Run the (synchronous, loop-owning) migrations off the event loop's thread."""
    await asyncio.to_thread(upgrade, url, revision)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(database_url: str, clock: FakeClock) -> AsyncIterator[Store]:
    """An open store on a freshly migrated database; closed (engine disposed) after the test."""
    await migrate(database_url)
    st = Store(database_url, clock=clock)
    await st.open()
    try:
        yield st
    finally:
        await st.close()
