"""Fixtures of the store suite: every store test runs on SQLite (a temporary file) and PostgreSQL.

PostgreSQL: see tests/support/postgres.py (a throwaway database per test, never a skip).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from app.security_log import SecurityEvent
from app.store import Store
from app.store.migrate import upgrade

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
