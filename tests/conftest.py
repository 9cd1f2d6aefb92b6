"""Shared fixtures: keys, token minting, and real hub server processes."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.tokens import mint
from tests.support.package import InstalledHub, build_and_install
from tests.support.postgres import PgServer, pg_server_for_tests
from tests.support.redis_ha import RedisCluster6, SentinelGroup
from tests.support.redis_server import RedisServer
from tests.support.server import HubProcess

SECRET = secrets.token_hex(32)

# Generous address limits so that tests from 127.0.0.1 do not throttle each other; the tests of
# those limits start servers of their own.
BASE_ENV = {
    "HUB_JWT_SECRET": SECRET,
    "HUB_CONNECT_RATE_PER_IP": "100000",
    "HUB_CONNECT_RATE_PER_USER": "100000",
    "HUB_AUTH_FAILURES_BEFORE_BAN": "100000",
}

Mint = Callable[..., str]


def make_token(sub: str = "agent-1", roles: list[str] | None = None, ttl: float = 300, **kw: Any) -> str:
    return mint(SECRET, "HS256", sub, roles if roles is not None else ["agent"], ttl, **kw)


@pytest.fixture
def token() -> Mint:
    return make_token


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hub")


@pytest.fixture(scope="session")
def hub(workdir: Path) -> Iterator[HubProcess]:
    """One embedded-engine hub for the whole session (tests use their own subs)."""
    server = HubProcess(dict(BASE_ENV), workdir, name="shared").start()
    yield server
    server.stop()


@pytest.fixture
def start_hub(workdir: Path) -> Iterator[Callable[..., HubProcess]]:
    """Start hubs with extra settings; all are stopped (or killed) at the end of the test."""
    started: list[HubProcess] = []

    def start(env: dict[str, str] | None = None, *, workers: int = 1, name: str = "hub") -> HubProcess:
        server = HubProcess({**BASE_ENV, **(env or {})}, workdir, workers=workers, name=name)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


@pytest.fixture(scope="session")
def installed_hub(tmp_path_factory: pytest.TempPathFactory) -> InstalledHub:
    """This tree built as a wheel and installed into a fresh virtualenv (once per session)."""
    return build_and_install(tmp_path_factory.mktemp("package"))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: ``TEST_REDIS_URL``, else a throwaway ``redis-server`` for the session (the
    tests fail, never skip, when neither exists). Tests isolate themselves by key prefix."""
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        yield url
        return
    server = RedisServer()
    server.start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture(scope="session")
def cluster_url() -> Iterator[str]:
    """A real 6-node Redis Cluster (3 primaries, 3 replicas) for the session, never killed by a
    test (failover tests start their own). Tests isolate themselves by key prefix."""
    with RedisCluster6() as cluster:
        yield cluster.url


@pytest.fixture(scope="session")
def sentinel_url() -> Iterator[str]:
    """A real Sentinel group (primary, replica, 3 sentinels) for the session, never killed by a
    test (failover tests start their own)."""
    with SentinelGroup() as group:
        yield group.url


def redis_env(url: str, **extra: str) -> dict[str, str]:
    """Settings for a hub on ``url`` under a prefix of its own (shared by the hubs of one test)."""
    return {"HUB_REDIS_URL": url, "HUB_REDIS_PREFIX": f"t{secrets.token_hex(5)}", **extra}


# -- databases: SQLite in a temporary folder, and a throwaway PostgreSQL database per test --------


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
    """An empty database of its own for this test, never migrated (tests/store/conftest.py's
    ``store`` fixture gives a migrated one)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}"
    # Requested only here, so that the SQLite half never needs PostgreSQL. (A sync fixture: an
    # async one cannot set up another async fixture on demand.)
    url: str = request.getfixturevalue("pg_database")
    return url
