"""Fan-out of received messages to async iterators (a dashboard's ``events()`` and ``presence()``).

Each iterator has its own bounded queue, is registered from its creation on, ends when the client
stops, and raises the terminal error (:class:`~hubclient.errors.SessionTerminated`) if there is one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")


class _End:
    pass


_END = _End()


class Feed(Generic[T]):
    """Fan-out of one kind of message to every live iterator (each has its own bounded queue;
    when an iterator falls behind by ``maxsize`` items its oldest item is dropped)."""

    def __init__(self, maxsize: int = 10_000) -> None:
        self._maxsize = maxsize
        self._queues: set[asyncio.Queue[T | _End]] = set()
        self._ended = False
        self._error: BaseException | None = None

    def publish(self, item: T) -> None:
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(item)

    def end(self, error: BaseException | None) -> None:
        self._ended = True
        self._error = error
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(_END)

    def iterate(self) -> FeedIterator[T]:
        queue: asyncio.Queue[T | _End] = asyncio.Queue(self._maxsize)
        if self._ended:
            queue.put_nowait(_END)
        else:
            self._queues.add(queue)
        return FeedIterator(self, queue)

    def _drop(self, queue: asyncio.Queue[T | _End]) -> None:
        self._queues.discard(queue)


class FeedIterator(AsyncIterator[T]):
    """An async iterator over a :class:`Feed`, registered from its creation on (nothing published
    after ``events()`` returned is missed). It ends when the client closes, and raises
    :class:`~hubclient.errors.SessionTerminated` if the hub ended the session."""

    def __init__(self, feed: Feed[T], queue: asyncio.Queue[T | _End]) -> None:
        self._feed = feed
        self._queue = queue

    def __aiter__(self) -> FeedIterator[T]:
        return self

    async def __anext__(self) -> T:
        item = await self._queue.get()
        if isinstance(item, _End):
            self._feed._drop(self._queue)
            self._queue.put_nowait(item)  # stay ended
            if self._feed._error is not None:
                raise self._feed._error
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        """Stop receiving (frees the queue)."""
        self._feed._drop(self._queue)
