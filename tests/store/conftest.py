"""Fixtures of the store suite: every store test runs on SQLite (a temporary file) and PostgreSQL.

PostgreSQL: see tests/support/postgres.py (a throwaway database per test, never a skip).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.security_log import SecurityEvent
from app.store import Store
from app.store.migrate import upgrade
from tests.support.postgres import PgServer, pg_server_for_tests

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


@pytest.fixture(scope="session")
async def pg_server() -> AsyncIterator[PgServer]:
    async with pg_server_for_tests() as server:
        yield server


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
