"""The security log's sink: buffers events in memory and writes them to the store in batches.

Guarantees:

* :meth:`EventWriter.submit` is a plain function that never blocks and never raises: it appends
  to a bounded buffer, or, when the buffer is full, drops the event and counts it (``dropped``
  and the ``hub_security_events_dropped_total`` metric).
* Every submitted event is accounted for exactly once: ``submitted == written + dropped +
  pending`` whenever no batch is being written, in particular after :meth:`EventWriter.stop`.
* A failing or hanging database never stops the hub: a batch that fails (or takes longer than
  ``write_timeout``) is logged as ``store.write_failed``, counted as dropped, and the writer
  carries on after a pause of ``interval`` seconds.
* :meth:`EventWriter.stop` writes what is left within ``timeout`` seconds; whatever it could not
  write in time is counted as dropped (never as written).

Use it from the event loop's thread only (like :class:`app.security_log.SecurityLog`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Protocol

from app.logs import get_logger
from app.metrics import EVENTS_DROPPED
from app.security_log import SecurityEvent

log = get_logger("app.store")


class EventStore(Protocol):
    async def add_events(self, events: list[SecurityEvent]) -> int: ...


class EventWriter:
    """``EventWriter(store, capacity=10_000, batch=500, interval=0.5)``; ``start()``, then
    ``security_log.set_sink(writer.submit)``; ``await stop()`` at shutdown."""

    def __init__(
        self,
        store: EventStore,
        capacity: int = 10_000,
        batch: int = 500,
        interval: float = 0.5,
        write_timeout: float = 10.0,
    ) -> None:
        if capacity < 1 or batch < 1 or interval <= 0 or write_timeout <= 0:
            raise ValueError("capacity and batch must be >= 1; interval and write_timeout > 0")
        self._store = store
        self.capacity = capacity
        self.batch = batch
        self.interval = interval
        self.write_timeout = write_timeout
        self._buffer: deque[SecurityEvent] = deque(maxlen=capacity)
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._in_flight = 0
        self.submitted = 0
        self.written = 0
        self.dropped = 0

    @property
    def pending(self) -> int:
        """Events buffered, not yet handed to the store."""
        return len(self._buffer)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def submit(self, event: SecurityEvent) -> None:
        """Buffer ``event`` for writing; drop it (counted) when the buffer is full or the writer
        has stopped. Never blocks, never raises, never awaits."""
        self.submitted += 1
        if self._stopping and not self.running:
            self._drop(1)
            return
        if len(self._buffer) >= self.capacity:
            self._drop(1)
            return
        self._buffer.append(event)
        if len(self._buffer) >= self.batch:
            self._wake.set()

    def start(self) -> None:
        """Start the background flusher on the running event loop (idempotent)."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="store.event_writer"
            )

    async def stop(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Write what is buffered (within ``timeout`` seconds), then stop. Idempotent.

        Events submitted afterwards are dropped (and counted)."""
        self._stopping = True
        task = self._task
        if task is None:
            self._drop(len(self._buffer))
            self._buffer.clear()
            return
        self._wake.set()
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        abandoned = len(self._buffer)
        if abandoned:
            log.warning("store.events_abandoned", count=abandoned)
            self._drop(abandoned)
            self._buffer.clear()

    def _drop(self, count: int) -> None:
        if count > 0:
            self.dropped += count
            EVENTS_DROPPED.inc(count)

    async def _run(self) -> None:
        try:
            while True:
                if not self._stopping:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.interval):
                            await self._wake.wait()
                self._wake.clear()
                while self._buffer:
                    if not await self._flush_one() and not self._stopping:
                        await asyncio.sleep(self.interval)  # back off; the buffer bounds memory
                        break
                if self._stopping and not self._buffer:
                    return
        finally:
            # A batch being written when cancelled was not confirmed: count it as dropped.
            self._drop(self._in_flight)
            self._in_flight = 0

    async def _flush_one(self) -> bool:
        """Write one batch from the buffer; False (batch counted as dropped) on failure."""
        count = min(self.batch, len(self._buffer))
        chunk = [self._buffer.popleft() for _ in range(count)]
        self._in_flight = count
        try:
            async with asyncio.timeout(self.write_timeout):
                await self._store.add_events(chunk)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._in_flight = 0
            log.error(
                "store.write_failed", count=count, error=type(exc).__name__, detail=str(exc)[:200]
            )
            self._drop(count)
            return False
        self._in_flight = 0
        self.written += count
        return True
