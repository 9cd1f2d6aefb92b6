"""Throwaway PostgreSQL databases for tests.

PostgreSQL comes from ``TEST_DATABASE_URL`` (default: a local server with trust auth). Each test
gets a throwaway database ``hubtest_<random>`` (created from ``template0``, so it is empty and no
other session's connections to ``template1`` get in the way), dropped after the test; anything a
crashed test left behind is dropped at the end of the session. No test depends on leftover state.
When PostgreSQL is unreachable the PostgreSQL tests fail with a clear message: they never skip.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy.engine import URL, make_url

DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


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



@asynccontextmanager
async def pg_server_for_tests() -> AsyncIterator[PgServer]:
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


