"""Delivery to this worker's handlers, shared by both engines' messaging.

- Control events go through a :class:`ControlDelivery`: a task each, started in arrival order, so
  a slow handler never stalls the producer and a handler that publishes never recurses into
  itself. A failing handler call is logged.
- Routed messages go through a :class:`MessageInbox`: one consumer task, arrival order kept,
  bounded (past the bound new messages are dropped and logged).

Neither ever calls a handler inline: :meth:`ControlDelivery.put` and :meth:`MessageInbox.put`
never block and never await.
"""

from __future__ import annotations

import asyncio

import structlog

from app.engine.base import ControlEvent, ControlHandler, MessageHandler

log = structlog.get_logger("app.engine")

# Routed messages waiting for the handler; past it new ones are dropped (delivery is at most once).
INBOX_MAX_MESSAGES = 10_000
# Only the first and every this-many-th dropped message are logged.
INBOX_DROP_LOG_EVERY = 1_000
# watch(tenant, WILDCARD): every agent of the tenant.
WILDCARD = "*"


class ControlDelivery:
    """Control events on their way to the handler: a task per event, started in arrival order.

    Nothing happens while :attr:`handler` is None. :meth:`close` cancels the deliveries still
    running.
    """

    def __init__(self) -> None:
        self.handler: ControlHandler | None = None
        # Strong references: the loop keeps only weak ones to tasks.
        self._tasks: set[asyncio.Task[None]] = set()

    def put(self, event: ControlEvent) -> None:
        handler = self.handler
        if handler is None:
            return
        task = asyncio.create_task(_deliver(handler, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()


class MessageInbox:
    """Routed messages on their way to the handler: one consumer task, in arrival order.

    :meth:`put` never blocks and never awaits, so the producer (the Redis subscriber loop, or a
    publishing coroutine) is never held up by the handler. A slow handler delays later messages
    (ordering is kept) but never the producer; past ``maxsize`` waiting messages new ones are
    dropped and logged. A failing handler call is logged and the next message is delivered.
    """

    def __init__(self, maxsize: int = INBOX_MAX_MESSAGES) -> None:
        self.handler: MessageHandler | None = None
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize)
        self._consumer: asyncio.Task[None] | None = None
        self._closed = False
        self.dropped = 0

    def put(self, message: str) -> None:
        if self.handler is None or self._closed:
            return
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped % INBOX_DROP_LOG_EVERY == 1:
                log.warning("engine.inbox_full", dropped=self.dropped, size=self._queue.maxsize)
            return
        if self._consumer is None or self._consumer.done():
            self._consumer = asyncio.create_task(self._consume(), name="engine-inbox")

    async def close(self) -> None:
        self._closed = True
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)

    async def _consume(self) -> None:
        while True:
            message = await self._queue.get()
            handler = self.handler
            if handler is None:
                continue
            try:
                await handler(message)
            except Exception:
                log.exception("engine.message_handler_failed")


async def _deliver(handler: ControlHandler, event: ControlEvent) -> None:
    try:
        await handler(event)
    except Exception:
        log.exception("engine.handler_failed", kind=event.kind)
