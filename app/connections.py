"""Live connections of this worker: each one's send queue, expiry timer and close, and the
registry that finds them for kicks, revocations, bans and routing.

A connection has one writer, the only code that sends on its socket, fed by a bounded queue: a
slow reader fills its own queue and is closed (``slow_consumer``) without stalling anyone else. The
writer is the serving task itself for the ``welcome`` (:meth:`Connection.start`), then a task that
exists only while something waits to be sent.
"Slow" means stalled, not bursty: a client is closed only when more than ``queue_size`` messages
wait *and* its socket has accepted nothing for ``STALL_SECONDS``, or when what waits exceeds
``max_chars`` (the memory bound). A reader that keeps reading is never closed for a burst (a large
presence snapshot, many agents' events at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from app import metrics
from app.engine.base import ConnectionInfo
from app.errors import Code, spec
from app.logs import get_logger
from app.session import Action, Close, Send, Session

log = get_logger("app.connections")

CLOSE_TIMEOUT = 5.0
FLUSH_TIMEOUT = 1.0
STALL_SECONDS = 5.0


class Socket(Protocol):
    async def send_text(self, data: str) -> None: ...
    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class Connection:
    """One accepted socket. :meth:`send` and :meth:`close` never block and never raise.

    Outgoing messages wait in a bounded deque drained by a writer task that exists only while
    there is something to send, so an idle connection costs one timer and no task; the deque
    itself is made on the first message that has to wait.
    """

    __slots__ = (
        "_armed_at", "_chars", "_closing", "_limit", "_max_chars", "_pending", "_progress_at",
        "_stall_check", "_starting", "_timer", "_writer", "attributes", "close_code", "session",
        "socket",
    )

    def __init__(
        self, socket: Socket, session: Session, queue_size: int, max_chars: int | None = None
    ) -> None:
        self.socket = socket
        self.session = session
        self.close_code: Code | None = None
        self.attributes: dict[str, Any] = {}
        self._pending: deque[str] | None = None
        self._limit = queue_size
        self._max_chars = max_chars if max_chars is not None else queue_size * 65536
        self._chars = 0
        # When the socket last accepted a message (or the queue was last empty): stall detection.
        self._progress_at = 0.0
        self._stall_check: asyncio.TimerHandle | None = None
        self._writer: asyncio.Task[None] | None = None
        # True until start() has sent the welcome: what is sent before (a command routed to an
        # agent the hub has just registered) queues behind it.
        self._starting = True
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None
        self._closing: asyncio.Task[None] | None = None

    @property
    def conn_id(self) -> str:
        return self.session.admission.conn_id

    @property
    def sub(self) -> str:
        return self.session.principal.sub

    async def start(self) -> None:
        """Send the ``welcome`` and arm the timer. The welcome is sent by the calling task, not a
        writer task, and always first: what was sent before this call waits behind it. Most
        connections are sent nothing else. Raises nothing; a socket that is gone is noticed by
        the caller's next receive."""
        actions = self.session.welcome(_now())
        welcome = actions[0]
        assert isinstance(welcome, Send)
        loop = asyncio.get_running_loop()
        self._progress_at = loop.time()
        try:
            await self.socket.send_text(welcome.text)
        except Exception:
            self._drop_pending()
        finally:
            self._starting = False
        self._progress_at = loop.time()
        if self._pending and self.close_code is None:
            self._writer = loop.create_task(self._drain())
        self.apply(actions[1:])

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.send(action.text)
            elif isinstance(action, Close):
                self.close(action.code, action.close)
        self.reschedule()

    def send(self, text: str) -> None:
        if self.close_code is not None:
            return
        loop = asyncio.get_running_loop()
        pending = self._pending
        if pending is None:
            pending = self._pending = deque()
        if not pending and self._writer is None:
            # An idle writer is not a stalled one: the stall clock starts now.
            self._progress_at = loop.time()
        pending.append(text)
        self._chars += len(text)
        if self._chars > self._max_chars:
            self.close(Code.SLOW_CONSUMER)
            return
        if len(pending) > self._limit and self._stall_check is None:
            self._check_stall()
            if self.close_code is not None:
                return
        if self._writer is None and not self._starting:
            self._writer = loop.create_task(self._drain())

    def _drop_pending(self) -> None:
        if self._pending is not None:
            self._pending.clear()
        self._chars = 0

    def _check_stall(self) -> None:
        """Over the message bound: close if the socket has accepted nothing for STALL_SECONDS,
        else look again when that could first be the case."""
        self._stall_check = None
        if self.close_code is not None or self._pending is None or len(self._pending) <= self._limit:
            return
        loop = asyncio.get_running_loop()
        stalled_for = loop.time() - self._progress_at
        if stalled_for >= STALL_SECONDS:
            self.close(Code.SLOW_CONSUMER)
            return
        self._stall_check = loop.call_later(STALL_SECONDS - stalled_for, self._check_stall)

    def close(self, code: Code, close: int | None = None) -> None:
        """Close with ``code`` (its close code, or ``close``, and the code string as reason).
        First close wins."""
        if self.close_code is not None:
            return
        self.close_code = code
        metrics.bound(metrics.CLOSES, code.value).inc()
        if self._timer is not None:
            self._timer.cancel()
        if self._stall_check is not None:
            self._stall_check.cancel()
            self._stall_check = None
        # What is already queued (the errors that led here, say) goes out first, unless the
        # client is the problem: a slow consumer is cut at once, and a flush gets FLUSH_TIMEOUT.
        if code is Code.SLOW_CONSUMER:
            if self._writer is not None:
                self._writer.cancel()
            self._drop_pending()
        self._closing = asyncio.get_running_loop().create_task(self._send_close(code, close))

    def reschedule(self) -> None:
        """Arm the one timer of this connection at the session's next deadline (a no-op when the
        deadline has not moved, which is the case for almost every message)."""
        if self.close_code is not None:
            return
        deadline = self.session.deadline()
        if deadline == self._armed_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._armed_at = deadline
        self._timer = loop.call_at(loop.time() + max(0.0, deadline - _now()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._armed_at = None
        self.apply(self.session.on_timer(_now()))

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        pending = self._pending
        try:
            while pending:
                text = pending.popleft()
                await self.socket.send_text(text)
                self._chars -= len(text)
                self._progress_at = loop.time()
        except Exception:
            self._drop_pending()
        finally:
            self._writer = None

    async def _send_close(self, code: Code, close: int | None = None) -> None:
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(writer, FLUSH_TIMEOUT)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.socket.close(close or spec(code).close, code.value), CLOSE_TIMEOUT)

    async def finish(self) -> None:
        """Stop the timer and the writer once the socket is gone."""
        if self._timer is not None:
            self._timer.cancel()
        if self._stall_check is not None:
            self._stall_check.cancel()
        if self._closing is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._closing), CLOSE_TIMEOUT + FLUSH_TIMEOUT)
        writer = self._writer
        if writer is not None and not writer.done():
            writer.cancel()
            with contextlib.suppress(BaseException):
                await writer


def _now() -> float:
    return time.time()


class Registry:
    """This worker's live connections, by id and by ``sub``."""

    def __init__(self) -> None:
        self._by_id: dict[str, Connection] = {}
        # A sub's connection id, or a set of them when it has several here: most users have
        # one, and a set per connection would cost a couple of hundred bytes each.
        self._by_sub: dict[str, str | set[str]] = {}

    def add(self, conn: Connection) -> None:
        conn_id, sub = conn.conn_id, conn.sub
        self._by_id[conn_id] = conn
        ids = self._by_sub.get(sub)
        if ids is None:
            self._by_sub[sub] = conn_id
        elif isinstance(ids, set):
            ids.add(conn_id)
        elif ids != conn_id:
            self._by_sub[sub] = {ids, conn_id}

    def remove(self, conn: Connection) -> None:
        conn_id, sub = conn.conn_id, conn.sub
        self._by_id.pop(conn_id, None)
        ids = self._by_sub.get(sub)
        if ids is None:
            return
        if isinstance(ids, set):
            ids.discard(conn_id)
            if len(ids) == 1:
                self._by_sub[sub] = next(iter(ids))
        elif ids == conn_id:
            del self._by_sub[sub]

    def get(self, conn_id: str) -> Connection | None:
        return self._by_id.get(conn_id)

    def of_sub(self, sub: str) -> list[Connection]:
        ids = self._by_sub.get(sub)
        if ids is None:
            return []
        return [self._by_id[i] for i in ((ids,) if isinstance(ids, str) else ids)]

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

    def leases(self, worker_id: str) -> list[ConnectionInfo]:
        """What the engine needs to renew (or re-establish) each live connection's lease."""
        return [
            ConnectionInfo(
                conn_id=a.conn_id, sub=a.principal.sub, endpoint=a.endpoint.value,
                client_ip=a.client_ip, worker=worker_id, connected_at=a.connected_at,
                tenant=a.principal.tenant or "",
            )
            for a in (c.session.admission for c in self._by_id.values())
        ]

    def close_where(self, predicate: Callable[[Connection], bool], code: Code) -> int:
        """Close every connection matching ``predicate`` with ``code``; how many."""
        matched = [conn for conn in self._by_id.values() if predicate(conn)]
        for conn in matched:
            conn.close(code)
        return len(matched)
