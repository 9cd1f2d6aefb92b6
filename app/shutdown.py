"""WebSocket sessions as the shutdown sees them: how many are still running, and a quiet end for
the ones the server cuts.

A worker's drain (:meth:`app.runtime.Runtime.drain`) closes every connection with 1012 and then
waits for the sessions to *finish*, not only to leave the registry: a session still releases its
slot and presence after its socket is gone. :class:`SessionTracker` counts them (accepted sessions
only: a handshake refused during the drain is answered in milliseconds and must not hold it).

If some are still running when uvicorn's graceful-shutdown timeout (``HUB_SHUTDOWN_GRACE_SECONDS``
after the drain) runs out, uvicorn cancels their tasks and logs each as "Exception in ASGI
application" (``CancelledError``), which under load buried the logs of a drain in thousands of
tracebacks (found by the soak). A session cancelled while its worker drains ends instead as what it
is, a connection cut at shutdown: one count, logged once by the worker as it stops, and a
handshake that had not been answered yet gets the drain's ``unavailable`` refusal (503). A
cancellation at any other time is not ours to swallow and propagates.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.utils import ClientDisconnected

from app.errors import Code, spec

# A refusal must not hold the shutdown: the socket of a handshake is writable unless its client
# stopped reading, and then it is gone for us anyway.
ANSWER_TIMEOUT_SECONDS = 1.0
_ANSWERS = frozenset({"websocket.accept", "websocket.close", "websocket.http.response.start"})


class Sessions(Protocol):
    """What the tracker updates (the worker's :class:`~app.runtime.Runtime`)."""

    sessions_open: int
    sessions_cut: int

    @property
    def draining(self) -> bool: ...


class SessionTracker:
    """Pure ASGI middleware, outermost: counts accepted WebSocket sessions on ``sessions()``
    (``None`` before the worker has started) and ends a session cancelled during a drain quietly
    (see the module docstring). HTTP requests pass untouched."""

    def __init__(self, app: ASGIApp, sessions: Callable[[Scope], Sessions | None]) -> None:
        self.app = app
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracked = self.sessions(scope) if scope["type"] == "websocket" else None
        if tracked is None:
            await self.app(scope, receive, send)
            return
        answered = accepted = False

        async def send_and_note(message: Message) -> None:
            nonlocal answered, accepted
            if message["type"] in _ANSWERS:
                answered = True
                if message["type"] == "websocket.accept" and not accepted:
                    accepted = True
                    tracked.sessions_open += 1
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except asyncio.CancelledError:
            if not tracked.draining:
                raise
            tracked.sessions_cut += 1
            if not answered:
                await _refuse(send)
        finally:
            if accepted:
                tracked.sessions_open -= 1


def unavailable_response() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The drain's refusal: status 503, headers (``Retry-After: 1``) and the ``unavailable`` body."""
    entry = spec(Code.UNAVAILABLE)
    body = json.dumps({"error": Code.UNAVAILABLE.value, "message": entry.message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"retry-after", b"1")]
    return entry.status, headers, body


async def _refuse(send: Send) -> None:
    """The drain's refusal to a handshake cut before it was answered; a client already gone ends
    the session as uvicorn expects (ClientDisconnected)."""
    status, headers, body = unavailable_response()
    try:
        async with asyncio.timeout(ANSWER_TIMEOUT_SECONDS):
            await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
    except ClientDisconnected:
        raise
    except Exception:
        # Already closed, or not writable within the timeout: nobody left to answer.
        raise ClientDisconnected from None
