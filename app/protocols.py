"""The protocols ``hubctl serve`` gives uvicorn: its h11 and wsproto protocols, with the rules the
hub needs and uvicorn lacks.

:class:`HubWSProtocol`:

- A message over ``ws_max_size`` (which ``hubctl serve`` sets to ``HUB_MAX_MESSAGE_BYTES``) is
  closed 1009 with the contract's reason ``message_too_big``, as soon as it passes the limit (never
  buffered beyond it).
- A handshake still undecided when the server shuts down (e.g. waiting for Redis during a
  partition) is answered the drain's 503 ``unavailable`` with ``Retry-After``; uvicorn answered
  500 (found by the soak: hundreds per drain). Counted as ``reason="shutdown"``.

:class:`HubH11Protocol`, per connection, for every request head, WebSocket upgrades included:

- A head not complete within ``HUB_HANDSHAKE_TIMEOUT_SECONDS`` is answered 408 and closed (uvicorn
  waits for ever: a half-sent head held a connection open indefinitely).
- A head over ``MAX_HEAD_BYTES`` is answered 431 and closed however it arrives (h11 limits only a
  head still incomplete after a read, so a 100 KB head sent in one write went through).
- A WebSocket upgrade whose ``Sec-WebSocket-*`` headers hold non-ASCII bytes is answered 400
  (wsproto raised inside the transport callback: no answer, and "Fatal error on transport").

These refusals happen before the app sees a request: they are counted in
``hub_http_heads_refused_total{reason}``, not logged line by line (a flood of them must stay cheap).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import wsproto.events
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.wsproto_impl import FrameTooLargeError, WSProtocol

from app import metrics
from app.errors import Code, spec
from app.shutdown import unavailable_response

# The same bound h11 applies to an incomplete head (see app.serve): one limit, however it arrives.
MAX_HEAD_BYTES = 16 * 1024
DEFAULT_TIMEOUT_SECONDS = 10.0
_END = b"\r\n\r\n"
_ASCII_ONLY = frozenset({
    b"sec-websocket-protocol", b"sec-websocket-key", b"sec-websocket-version",
    b"sec-websocket-extensions", b"upgrade", b"connection",
})


def _answer(status: int, reason: str) -> bytes:
    return f"HTTP/1.1 {status} {reason}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n".encode()


class HubH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus the head timeout, the head size limit and the 400 for malformed
    WebSocket headers (see the module docstring). The timeout is read from the app's settings."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = getattr(getattr(self.app, "state", None), "settings", None)
        self._head_timeout = float(getattr(settings, "handshake_timeout_seconds", DEFAULT_TIMEOUT_SECONDS))
        self._head_seen = 0  # bytes of the current head received so far (until its end is seen)
        self._head_tail = b""  # the last bytes, to find an end marker split across reads
        self._head_done = False
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._head_done and not self._check_head(data):
            return
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            # Keep-alive: the next request's head gets the same rules.
            self._await_head()

    def send_400_response(self, msg: str) -> None:
        # h11 refused the head (uvicorn's warning line for it is dropped by app.logs: a flood of
        # malformed requests must not cost a line each); counted instead.
        metrics.HTTP_HEADS_REFUSED.labels("malformed").inc()
        self._stop_head_timer()
        self._head_done = True
        super().send_400_response(msg)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        for name, value in self.headers:
            if name in _ASCII_ONLY and not value.isascii():
                self._refuse("malformed", 400, "Bad Request")
                return
        super().handle_websocket_upgrade(event)

    # -- the head ------------------------------------------------------------------------------

    def _await_head(self) -> None:
        self._head_seen, self._head_tail, self._head_done = 0, b"", False
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self._head_timeout, self._on_head_timeout)

    def _check_head(self, data: bytes) -> bool:
        """Count ``data`` towards the current head; False when the connection was refused."""
        window = self._head_tail + data
        end = window.find(_END)
        if end >= 0:
            size = self._head_seen - len(self._head_tail) + end + len(_END)
            if size > MAX_HEAD_BYTES:
                self._refuse("too_large", 431, "Request Header Fields Too Large")
                return False
            self._head_done = True
            self._stop_head_timer()
            return True
        self._head_seen += len(data)
        self._head_tail = window[-(len(_END) - 1):]
        if self._head_seen > MAX_HEAD_BYTES:
            self._refuse("too_large", 431, "Request Header Fields Too Large")
            return False
        return True

    def _on_head_timeout(self) -> None:
        self._head_timer = None
        if not self._head_done and not self.transport.is_closing():
            self._refuse("timeout", 408, "Request Timeout")

    def _refuse(self, reason: str, status: int, phrase: str) -> None:
        metrics.HTTP_HEADS_REFUSED.labels(reason).inc()
        self._stop_head_timer()
        self._head_done = True
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self.transport.write(_answer(status, phrase))
        self.transport.close()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None


class HubWSProtocol(WSProtocol):
    """uvicorn's wsproto protocol, closing oversized messages with ``message_too_big`` and
    refusing handshakes cut by the shutdown with 503 ``unavailable`` (see the module docstring)."""

    def shutdown(self) -> None:
        if not self.handshake_complete and not self.response_started:
            metrics.HTTP_HEADS_REFUSED.labels("shutdown").inc()
            status, headers, body = unavailable_response()
            output = self.conn.send(wsproto.events.RejectConnection(
                status_code=status, headers=[*headers, (b"connection", b"close")], has_body=True))
            output += self.conn.send(wsproto.events.RejectData(data=body))
            self.transport.write(output)
            # uvicorn's own shutdown then sends nothing more (its 500 needs no response started)
            # and closes the transport; the app's later answer finds the client disconnected.
            self.response_started = True
        super().shutdown()

    def handle_message(self, event: wsproto.events.TextMessage | wsproto.events.BytesMessage) -> None:
        # uvicorn 0.54's handle_message, with the contract's close reason instead of its own text.
        try:
            self.buffer.extend(event)
        except FrameTooLargeError:
            self.buffer.clear()
            self._close_too_big()
            return
        if event.message_finished:
            self.queue.put_nowait(self.buffer.to_message())
            self.buffer.clear()
            if not self.read_paused:
                self.read_paused = True
                self.transport.pause_reading()

    def _close_too_big(self) -> None:
        code = Code.MESSAGE_TOO_BIG
        metrics.CLOSES.labels(code.value).inc()
        self.close_sent = True
        close = spec(code).close
        self.queue.put_nowait({"type": "websocket.disconnect", "code": close, "reason": code.value})
        if not self.transport.is_closing():
            self.transport.write(
                self.conn.send(wsproto.events.CloseConnection(code=close, reason=code.value))
            )
            self.transport.close()
