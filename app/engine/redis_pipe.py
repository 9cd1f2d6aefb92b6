"""The hot path's Redis connection: one socket per worker, commands written as they are called
and replies matched to their callers in order.

Every handshake runs two or three scripts and every routed message a publish. Through redis-py a
lone command cost about 170 µs of CPU (pool, retry wrapper, pipeline object, stream reader)
against about 45 µs here, where the floor is the two system calls; with 16 in flight, 33 µs
against 6 µs (``bench``'s handshake and relay rows show what it is worth end to end). So on a
single primary and on Sentinel (over TLS too) the routing path speaks RESP2 itself, with hiredis'
parser, on one asyncio protocol. A Redis Cluster (commands split by slot) keeps redis-py's
pipelines (:class:`app.engine.redis_batch.Batcher`): :func:`hot_path` chooses.

Guarantees (those of :class:`~app.engine.redis_batch.Batcher`):

- Commands run in the order they were called: one connection, every command called in one turn
  of the event loop sent in one write.
- A caller waits for its own reply only: a command Redis refuses raises its error in its caller
  alone (``NOSCRIPT`` as redis-py's :class:`~redis.exceptions.NoScriptError`, any other as
  :class:`~redis.exceptions.ResponseError`). A lost connection raises
  :class:`redis.exceptions.ConnectionError` in every caller still waiting, a reply later than
  ``timeout`` raises :class:`redis.exceptions.TimeoutError` in all of them and drops the
  connection, and ``READONLY`` (a primary demoted by a failover) drops it too. Nothing is
  retried: a publish is at most once, a handshake fails closed.
- The next call after a loss reconnects (on Sentinel, to the primary the sentinels name then);
  connecting takes at most ``timeout``, and the calls made meanwhile wait for it, in order.
- No task per command or per batch, and credentials never appear in an error.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.engine._redis_client import SOCKET_TIMEOUT_SECONDS, Client, RedisTarget
from app.engine.redis_batch import Batch, Batcher

Address = Callable[[], Awaitable[tuple[str, int]]]
Command = tuple[Any, ...]


def hot_path(client: Client, target: RedisTarget, client_name: str) -> Batch:
    """The routing path's commands for ``target``: a :class:`Pipe` on one primary or Sentinel,
    redis-py's pipelines on ``client`` on a cluster (see the module docstring). The address,
    credentials, database and TLS settings are the ones redis-py read from ``HUB_REDIS_URL``
    for ``client``."""
    if target.cluster or not isinstance(client, aioredis.Redis):
        return Batcher(client)
    pool = client.connection_pool
    options = pool.connection_kwargs
    tls: Callable[[], ssl.SSLContext] | None = None
    if target.tls:
        # redis-py's reading of the URL's ssl_* options (CA, client certificate, verification),
        # built when connecting: a missing file fails that connection, not the start.
        tls = pool.connection_class(**options).ssl_context.get  # type: ignore[attr-defined]
    address: Address
    if isinstance(pool, SentinelConnectionPool):
        address = pool.get_master_address
    else:
        host, port = str(options.get("host", "localhost")), int(options.get("port", 6379))

        async def address() -> tuple[str, int]:
            return host, port

    setup: list[Command] = []
    password, username = options.get("password"), options.get("username")
    if password:
        setup.append(("AUTH", username, password) if username else ("AUTH", password))
    if int(options.get("db") or 0):
        setup.append(("SELECT", int(options["db"])))
    setup.append(("CLIENT", "SETNAME", client_name))
    return Pipe(address, setup, tls=tls)


class Pipe:
    """Commands on one lazily (re)opened connection (see the module docstring)."""

    def __init__(
        self, address: Address, setup: list[Command], *, timeout: float = SOCKET_TIMEOUT_SECONDS,
        tls: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        self._address = address
        self._tls = tls
        self._setup = [hiredis.pack_command(command) for command in setup]
        self._timeout = timeout
        self._link: _Link | None = None
        # Commands called while connecting, sent in order once connected.
        self._queued: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._connecting: asyncio.Task[None] | None = None
        self._closed = False

    def send(self, command: Command) -> asyncio.Future[Any]:
        """Send ``command`` (e.g. ``("PUBLISH", channel, text)``); the future of its reply."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(RedisConnectionError("the connection to Redis is closed"))
            return future
        link = self._link
        if link is not None and link.open:
            link.send(hiredis.pack_command(command), future)
            return future
        self._queued.append((hiredis.pack_command(command), future))
        if self._connecting is None:
            self._connecting = asyncio.create_task(self._connect(), name="engine-pipe-connect")
        return future

    async def call(self, *command: Any) -> Any:
        """``command``'s reply, or its error raised."""
        return await self.send(command)

    async def call_many(self, *commands: Command) -> list[Any]:
        """Several commands, sent together and in this order; their replies (the first error
        raised, every reply retrieved)."""
        replies = await asyncio.gather(*(self.send(c) for c in commands), return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies

    async def _connect(self) -> None:
        try:
            link = await asyncio.wait_for(self._open(), self._timeout)
        except Exception as exc:  # refused, unreachable, a sentinel down, AUTH refused
            error = _connection_error(exc)
            for _, future in self._queued:
                if not future.done():
                    future.set_exception(error)
            self._queued = []
            return
        finally:
            self._connecting = None
        if self._closed:
            link.close()
            return
        self._link = link
        queued, self._queued = self._queued, []
        for packed, future in queued:
            link.send(packed, future)

    async def _open(self) -> _Link:
        host, port = await self._address()
        loop = asyncio.get_running_loop()
        context = self._tls() if self._tls is not None else None
        _, link = await loop.create_connection(lambda: _Link(self._timeout), host, port, ssl=context)
        setup = [loop.create_future() for _ in self._setup]
        for packed, future in zip(self._setup, setup, strict=True):
            link.send(packed, future)
        try:
            await asyncio.gather(*setup)
        except BaseException:
            link.close()
            raise
        return link

    async def aclose(self) -> None:
        """Close the connection: every caller still waiting gets a ConnectionError."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        error = RedisConnectionError("the connection to Redis is closed")
        for _, future in self._queued:
            if not future.done():
                future.set_exception(error)
        self._queued = []
        if self._link is not None:
            self._link.close()
            self._link = None


def _connection_error(exc: BaseException) -> RedisError:
    """What a failed connect raises in its callers: a ConnectionError naming the failure only
    (never a setup command, which may hold the password)."""
    if isinstance(exc, RedisConnectionError):
        return exc
    if isinstance(exc, asyncio.TimeoutError):
        return RedisTimeoutError("connecting to Redis timed out")
    if isinstance(exc, ResponseError):  # AUTH or SELECT refused
        return RedisConnectionError(f"Redis refused the connection: {str(exc).split(' ', 1)[0]}")
    return RedisConnectionError(f"cannot connect to Redis: {type(exc).__name__}: {exc}")


class _Link(asyncio.Protocol):
    """One connection: writes coalesced per turn of the loop, replies handed out in order, a
    watchdog on the oldest reply still owed."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        # Callers in the order their commands were written, with the time their reply is due by.
        self._waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._error: RedisError | None = None
        self.open = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)
        self.open = True

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        try:
            while (reply := self._reader.gets()) is not False:
                future, _ = waiting.popleft()
                if isinstance(reply, hiredis.ReplyError):
                    if str(reply).startswith("READONLY"):
                        error = RedisConnectionError("the primary became a replica")
                        if not future.done():
                            future.set_exception(error)
                        self._fail(error)
                        return
                    reply = _reply_error(str(reply))
                    if not future.done():
                        future.set_exception(reply)
                elif not future.done():  # its caller was cancelled
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbled, or a reply nobody asked for
            self._fail(RedisConnectionError(f"unreadable reply from Redis: {type(exc).__name__}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self._watchdog is not None:
            self._watchdog.cancel()
        error = self._error or RedisConnectionError("the connection to Redis was lost")
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)

    # -- writing ------------------------------------------------------------------------------

    def send(self, packed: bytes, future: asyncio.Future[Any]) -> None:
        if not self.open:
            future.set_exception(self._error or RedisConnectionError("the connection to Redis was lost"))
            return
        self._out.append(packed)
        self._waiting.append((future, self._loop.time() + self._timeout))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if not self.open or self._transport is None:
            return  # connection_lost has failed every caller
        self._transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self._watchdog is None and self._waiting:
            self._watchdog = self._loop.call_at(self._waiting[0][1], self._check)

    def _check(self) -> None:
        self._watchdog = None
        if not self._waiting:
            return
        due = self._waiting[0][1]
        if due <= self._loop.time():
            self._fail(RedisTimeoutError("Redis did not answer in time"))
        else:
            self._watchdog = self._loop.call_at(due, self._check)

    def _fail(self, error: RedisError) -> None:
        """Drop the connection; every caller still waiting gets ``error`` (connection_lost)."""
        if self._error is None:
            self._error = error
        self.open = False
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        self._fail(RedisConnectionError("the connection to Redis is closed"))


def _reply_error(message: str) -> ResponseError:
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)
