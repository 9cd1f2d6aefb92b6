"""Commands batched into redis-py pipelines: what many coroutines send to Redis at about the same
time goes in one write and comes back in one round trip. The routing path's commands use it on a
Redis Cluster, where a pipeline is split by slot; elsewhere :mod:`app.engine.redis_pipe` carries
them on a connection of its own, with the same guarantees (:class:`Batch`).

Guarantees:

- Commands run in the order :meth:`Batcher.call` was called (one pipeline in flight at a time,
  each in call order), so a worker's publishes keep their order on every channel.
- A caller waits for its own reply only; a command that Redis refuses raises its error in its
  caller alone, a lost connection raises in every caller of that batch (nothing is retried: a
  publish is at most once).
- No task per command: one flusher task runs while commands wait, and ends when none do.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from app.engine._redis_client import Client

# A bound on one pipeline, so that one write stays small under a flood.
MAX_BATCH = 256


class Batch(Protocol):
    """The routing path's commands: this module's :class:`Batcher`, or the lean connection of
    :mod:`app.engine.redis_pipe`, with the guarantees of this module's docstring."""

    async def call(self, *command: Any) -> Any: ...

    async def call_many(self, *commands: tuple[Any, ...]) -> list[Any]: ...

    async def aclose(self) -> None: ...


class Batcher:
    """Pipelines the raw commands given to :meth:`call` on ``client``."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._waiting: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def call(self, *command: Any) -> Any:
        """Send ``command`` (e.g. ``"PUBLISH", channel, text``) with whatever else is waiting;
        its reply, or its error raised."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((command, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="engine-batch")
        return await future

    async def call_many(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Several commands, sent together and in this order; their replies (the first error
        raised)."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []
        for command in commands:
            futures.append(loop.create_future())
            self._waiting.append((command, futures[-1]))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="engine-batch")
        # Every reply retrieved, the first error raised: no "exception never retrieved".
        replies = await asyncio.gather(*futures, return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies

    async def aclose(self) -> None:
        """Nothing of its own to close: the connections are ``client``'s."""

    async def _flush(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                await self._send(batch)
        finally:
            self._flusher = None
            for _, future in self._waiting:  # cancelled with commands still waiting
                if not future.done():
                    future.set_exception(ConnectionError("the batch was cancelled"))
            self._waiting = []

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        try:
            if len(batch) == 1:
                replies: list[Any] = [await self._client.execute_command(*batch[0][0])]
            else:
                async with self._client.pipeline(transaction=False) as pipe:
                    for command, _ in batch:
                        pipe.execute_command(*command)
                    replies = list(await pipe.execute(raise_on_error=False))
        except Exception as exc:  # the connection, not one command: every caller gets it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
