"""Fixtures of the engine contract suite: one ``engine`` fixture over every implementation.

The memory engine, and the Redis engine on each topology: a single primary (``TEST_REDIS_URL``
when set, else a throwaway ``redis-server`` started once per session), a 6-node Redis Cluster and
a Sentinel group (both started once per session, see :mod:`tests.support.redis_ha`). The suite
fails, never skips, when a server cannot start. Each test gets its own key prefix, hence its own
keys and control channel: no test sees another's state.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from app.engine.base import ControlEvent, Engine
from app.engine.memory import MemoryEngine
from app.engine.redis import RedisEngine
from app.engine.redis_pipe import _Link
from tests.support.redis_server import RedisServer

Advance = Callable[[float], Awaitable[None]]
RedisFactory = Callable[..., Awaitable[RedisEngine]]
Routed = tuple[Engine, asyncio.Queue[str]]


class ManualClock:
    """A clock that moves only when told to (the memory engine's windows and leases)."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def prefix() -> str:
    return f"t{secrets.token_hex(6)}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def events() -> asyncio.Queue[ControlEvent]:
    return asyncio.Queue()


@asynccontextmanager
async def _engines(default_url: str, prefix: str) -> AsyncIterator[RedisFactory]:
    """A factory of Redis engines on ``prefix`` (workers of one cluster), closed at the end."""
    made: list[RedisEngine] = []

    async def make(
        worker_id: str = "w1",
        handler: Callable[[ControlEvent], Awaitable[None]] | None = None,
        url: str | None = None,
        inbox: asyncio.Queue[str] | None = None,
    ) -> RedisEngine:
        """``inbox``: routed messages land there (``on_message`` before ``start``)."""
        engine = RedisEngine(url or default_url, prefix=prefix, worker_id=worker_id)
        made.append(engine)
        if handler is not None:
            engine.subscribe(handler)
        if inbox is not None:
            engine.on_message(_into(inbox))
        await engine.start()
        return engine

    try:
        yield make
    finally:
        for engine in made:
            await engine.close()


class Wire:
    """What the engine writes to Redis and how many replies it reads, on both of its paths:
    redis-py's connections and the hot path's own (:mod:`app.engine.redis_pipe`)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.reads = 0

    def clear(self) -> None:
        self.sent.clear()
        self.reads = 0


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Wire:
    """Record every write (one per round trip) and every read from now on."""
    recorded = Wire()
    send, read = AbstractConnection.send_packed_command, AbstractConnection.read_response
    flush, received = _Link._flush, _Link.data_received

    async def counting_send(self: AbstractConnection, command: Any, *a: Any, **kw: Any) -> None:
        chunks = [command] if isinstance(command, bytes | str) else list(command)
        recorded.sent.append(b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks))
        await send(self, command, *a, **kw)

    async def counting_read(self: AbstractConnection, *a: Any, **kw: Any) -> Any:
        recorded.reads += 1
        return await read(self, *a, **kw)

    def counting_flush(self: _Link) -> None:
        if self._out:
            recorded.sent.append(b"".join(self._out))
        flush(self)

    def counting_received(self: _Link, data: bytes) -> None:
        recorded.reads += 1
        received(self, data)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting_send)
    monkeypatch.setattr(AbstractConnection, "read_response", counting_read)
    monkeypatch.setattr(_Link, "_flush", counting_flush)
    monkeypatch.setattr(_Link, "data_received", counting_received)
    return recorded


@pytest.fixture
async def redis_factory(redis_url: str, prefix: str) -> AsyncIterator[RedisFactory]:
    """Start Redis engines on this test's prefix (workers of one cluster); closed after."""
    async with _engines(redis_url, prefix) as make:
        yield make


# Every engine the contract holds for: memory, and Redis on each topology.
ENGINES = [
    "memory",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("cluster", marks=pytest.mark.redis),
    pytest.param("sentinel", marks=pytest.mark.redis),
]
_URL_FIXTURES = {"redis": "redis_url", "cluster": "cluster_url", "sentinel": "sentinel_url"}


def topology_url(request: pytest.FixtureRequest, topology: str) -> str:
    """The session's Redis URL for ``topology`` (``redis``, ``cluster`` or ``sentinel``)."""
    return str(request.getfixturevalue(_URL_FIXTURES[topology]))


@pytest.fixture(params=[p for p in ENGINES if p != "memory"])
async def any_redis_factory(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[RedisFactory]:
    """Like ``redis_factory``, on each topology in turn (single, cluster, Sentinel)."""
    async with _engines(topology_url(request, request.param), prefix) as make:
        yield make


@pytest.fixture(params=ENGINES)
async def engine(
    request: pytest.FixtureRequest,
    clock: ManualClock,
    events: asyncio.Queue[ControlEvent],
) -> AsyncIterator[Engine]:
    """A started engine whose control events land in ``events``.

    The memory engine runs on ``clock`` (``advance`` moves it); the Redis one on Redis ``TIME``
    (``advance`` really sleeps).
    """
    eng: Engine
    if request.param == "memory":
        eng = MemoryEngine(worker_id="w1", clock=clock)
    else:
        url = topology_url(request, request.param)
        eng = RedisEngine(url, prefix=request.getfixturevalue("prefix"), worker_id="w1")

    async def record(event: ControlEvent) -> None:
        events.put_nowait(event)

    eng.subscribe(record)
    await eng.start()
    yield eng
    await eng.close()


@pytest.fixture
def advance(engine: Engine, clock: ManualClock) -> Advance:
    """Let ``seconds`` pass for ``engine``: on the manual clock for memory, for real on Redis."""

    async def _advance(seconds: float) -> None:
        if isinstance(engine, MemoryEngine):
            clock.advance(seconds)
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(seconds)

    return _advance


def _real_clock_engine(request: pytest.FixtureRequest) -> Engine:
    """Worker ``w1`` of the engine the fixture's parameter names, on its real clock."""
    if request.param == "memory":
        return MemoryEngine(worker_id="w1")
    url = topology_url(request, request.param)
    return RedisEngine(url, prefix=request.getfixturevalue("prefix"), worker_id="w1")


@pytest.fixture(params=ENGINES)
async def realtime_engine(request: pytest.FixtureRequest) -> AsyncIterator[Engine]:
    """Both engines on their default, real clocks."""
    eng = _real_clock_engine(request)
    await eng.start()
    yield eng
    await eng.close()


def _into(inbox: asyncio.Queue[str]) -> Callable[[str], Awaitable[None]]:
    async def handler(message: str) -> None:
        inbox.put_nowait(message)

    return handler


@pytest.fixture(params=ENGINES)
async def routed(request: pytest.FixtureRequest) -> AsyncIterator[Routed]:
    """A started engine (worker ``w1``, real clock) whose routed messages land in the queue."""
    eng = _real_clock_engine(request)
    inbox: asyncio.Queue[str] = asyncio.Queue()
    eng.on_message(_into(inbox))
    await eng.start()
    yield eng, inbox
    await eng.close()


async def drain_until(inbox: asyncio.Queue[str], marker: str, timeout: float = 2.0) -> list[str]:
    """Every message received before ``marker`` (which must arrive within ``timeout``).

    Messages reach a worker in the order they were published (one subscriber connection, one
    consumer), so a marker sent last proves that nothing else sent before it is still coming.
    """
    seen: list[str] = []
    while True:
        message = await asyncio.wait_for(inbox.get(), timeout)
        if message == marker:
            return seen
        seen.append(message)


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client on the session's Redis, to look at keys the engine wrote."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A server of this test alone, which it may stop and start (never TEST_REDIS_URL)."""
    server = RedisServer()
    server.start()
    yield server
    server.close()
