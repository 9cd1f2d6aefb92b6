"""Reconnecting clients of the hub on the ``websockets`` asyncio client.

What :class:`HubClient` guarantees (the agent and dashboard clients build on it): it owns one
background task that connects, reads every frame, refreshes the token in-band when the hub sends
``auth.expiring``, and reconnects by the policy of :mod:`hubclient.backoff` (rotating through the
URLs when a server is unreachable or vanishes) until it is closed or the hub ends the session for
good (:class:`~hubclient.errors.SessionTerminated`).

The token comes from ``token_provider``, an async callable returning a fresh access token; it is
called before every connection attempt and for every refresh, and the token only ever travels in
the ``Authorization: Bearer`` header or in an ``auth.refresh`` message (never logged, never in a
URL).
"""

# Public coroutines take ``timeout=`` like the websockets API they sit on (ASYNC109).
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Coroutine, Sequence
from typing import Any, ClassVar, TypeVar, Unpack

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from hubclient import messages
from hubclient.backoff import Action, Backoff, Decision, decide_close, decide_status, parse_retry_after
from hubclient.errors import (
    ConnectionLost,
    HubError,
    NotConnected,
    SessionTerminated,
    command_error,
)
from hubclient.messages import (
    AuthExpiring,
    AuthRefreshed,
    Error,
    MessageId,
    ProtocolError,
    ServerMessage,
    Welcome,
    parse_server,
)
from hubclient.options import ClientOptions, Sleep, TokenProvider, resolve_url

log = logging.getLogger("hubclient")

C = TypeVar("C", bound="HubClient")


def _refusal_code(body: bytes | None) -> str:
    try:
        data: Any = json.loads(body or b"")
    except ValueError:
        return ""
    code = data.get("error") if isinstance(data, dict) else None
    return code if isinstance(code, str) else ""


class HubClient:
    """What agents and dashboards share: the connection loop, refresh, reconnect policy.

    Use :class:`AgentClient` or :class:`DashboardClient` (through :func:`connect_agent` /
    :func:`connect_dashboard`).
    """

    endpoint: ClassVar[str] = ""

    def __init__(
        self,
        url: str | Sequence[str],
        token_provider: TokenProvider,
        **options: Unpack[ClientOptions],
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("at least one URL is needed")
        self.urls = [resolve_url(u, self.endpoint) for u in urls]
        self._url_index = 0
        self._token_provider = token_provider
        self.backoff = options.get("backoff") or Backoff()
        self._sleep: Sleep = options.get("sleep", asyncio.sleep)
        self.refresh_enabled = options.get("refresh", True)
        self.max_auth_failures = options.get("max_auth_failures", 3)
        self.open_timeout = options.get("open_timeout", 10.0)
        self.restart_jitter = options.get("restart_jitter", 0.25)

        self._ws: ClientConnection | None = None
        self._welcome: Welcome | None = None
        self._expires_at: int | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._ids = itertools.count(1)
        self._waiters: dict[MessageId, asyncio.Future[ServerMessage]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.sessions = 0
        """How many sessions were established (a welcome received) so far."""
        self.refreshes = 0
        """How many in-band refreshes the hub accepted so far."""
        self.last_close: tuple[int | None, str] | None = None
        """``(close code, reason)`` of the last session that ended (``None`` code: no frame)."""
        self.last_refusal: tuple[int, str, float | None] | None = None
        """``(HTTP status, code, Retry-After)`` of the last handshake refused over HTTP."""

    # --- state ---------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL of the current (or next) connection."""
        return self.urls[self._url_index]

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def welcome(self) -> Welcome | None:
        """The ``welcome`` of the current session (``None`` while disconnected)."""
        return self._welcome if self._ws is not None else None

    @property
    def connection_id(self) -> str | None:
        welcome = self.welcome
        return welcome.connection_id if welcome else None

    @property
    def expires_at(self) -> int | None:
        """When the current session's token expires (updated by each refresh)."""
        return self._expires_at if self._ws is not None else None

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the connection task and wait for the first session (or a terminal refusal,
        raised as :class:`SessionTerminated`). Wrap in :func:`asyncio.timeout` to bound it."""
        if self._task is not None:
            raise RuntimeError("already started")
        self._task = asyncio.create_task(self._run(), name=f"hubclient{self.endpoint}")
        waiter = asyncio.create_task(self._connected.wait())
        try:
            await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not self._connected.is_set() and self._task.done():
            self._task.result()  # raises the terminal error
            raise NotConnected("the client stopped before it connected")

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until a session is open (raises :class:`SessionTerminated` if it never will)."""
        async with asyncio.timeout(timeout):
            while self._ws is None:
                if self._task is None or self._task.done():
                    await self.wait_closed()
                    raise NotConnected("the client is closed")
                waiter = asyncio.create_task(self._connected.wait())
                try:
                    await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()

    async def wait_closed(self) -> None:
        """Wait until the client stops; raises :class:`SessionTerminated` if the hub stopped it."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def close(self) -> None:
        """Close the session (code 1000) and stop reconnecting. Idempotent."""
        self._closing = True
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, HubError):
                await self._task
        for task in list(self._background):
            task.cancel()

    async def __aenter__(self: C) -> C:
        if self._task is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- sending -------------------------------------------------------------------------------

    def _require(self) -> ClientConnection:
        if self._ws is None:
            raise NotConnected("not connected to the hub (reconnecting or closed)")
        return self._ws

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    async def _request(self, ws: ClientConnection, frame: str, ref: MessageId) -> ServerMessage:
        """Send ``frame`` (whose ``id`` is ``ref``) and wait for the answer carrying ``ref``."""
        future: asyncio.Future[ServerMessage] = asyncio.get_running_loop().create_future()
        self._waiters[ref] = future
        try:
            await ws.send(frame)
            return await future
        except ConnectionClosed:
            raise ConnectionLost("the session closed before the hub answered") from None
        finally:
            self._waiters.pop(ref, None)
            if future.done() and not future.cancelled():
                # The reader may have failed it while the send was failing: the same loss, and
                # not left for asyncio to report as "Future exception was never retrieved".
                future.exception()

    async def ping(self, timeout: float = 10.0) -> None:
        """Round trip a ``ping`` (proves the session is alive end to end)."""
        ws = self._require()
        ref = self._next_id("p")
        async with asyncio.timeout(timeout):
            await self._request(ws, messages.ping(ref), ref)

    async def refresh(self, timeout: float = 10.0) -> int:
        """Refresh the session's token now (what ``auth.expiring`` triggers); returns the new
        ``expires_at``. A refused token raises :class:`~hubclient.errors.CommandError` with the
        token code; the session goes on under the old token until its expiry."""
        ws = self._require()
        token = await self._token_provider()
        ref = self._next_id("r")
        async with asyncio.timeout(timeout):
            answer = await self._request(ws, messages.auth_refresh(token, ref), ref)
        if isinstance(answer, AuthRefreshed):
            if self._ws is ws:
                self._expires_at = answer.expires_at
            self.refreshes += 1
            return answer.expires_at
        if isinstance(answer, Error):
            raise command_error(answer.error, answer.message)
        raise ProtocolError(f"unexpected answer to auth.refresh: {answer.type}")

    # --- the connection loop -------------------------------------------------------------------

    async def _run(self) -> None:
        error: BaseException | None = None
        try:
            await self._loop()
        except SessionTerminated as exc:
            error = exc
            log.warning("hubclient.terminated", extra={"code": exc.code, "close_code": exc.close_code,
                                                        "status": exc.status})
            raise
        finally:
            self._ws = None
            self._connected.clear()
            self._ended(error)

    async def _attempt(self) -> tuple[Decision, bool, int | None, int | None, str]:
        """One connection attempt and, if admitted, its session.

        Returns (decision, established, close code, HTTP status, hub code)."""
        try:
            token = await self._token_provider()
        except Exception:
            log.warning("hubclient.token_provider_failed", exc_info=True)
            return Decision(Action.BACKOFF), False, None, None, ""
        try:
            ws = await connect(
                self.url,
                additional_headers={"Authorization": f"Bearer {token}"},
                open_timeout=self.open_timeout,
                compression=None,
            )
        except InvalidStatus as exc:
            response = exc.response
            status = response.status_code
            code = _refusal_code(bytes(response.body or b""))
            log.info("hubclient.refused", extra={"url": self.url, "status": status, "code": code})
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            self.last_refusal = (status, code, retry_after)
            return decide_status(status, retry_after), False, None, status, code
        except InvalidURI:
            raise
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            log.info("hubclient.connect_failed", extra={"url": self.url, "error": type(exc).__name__})
            self._rotate()
            return Decision(Action.BACKOFF), False, None, None, ""
        established, close_code, code = await self._session(ws)
        self.last_close = (close_code, code)
        if close_code in (None, 1006):
            self._rotate()  # the server may be gone: try the next one
        return decide_close(close_code, code), established, close_code, None, code

    async def _loop(self) -> None:
        auth_failures = 0
        while not self._closing:
            decision, established, close_code, status, code = await self._attempt()
            if self._closing:
                return
            if established:
                self.backoff.reset()
                auth_failures = 0
            if decision.action is Action.STOP:
                raise SessionTerminated(code, close_code=close_code, status=status)
            if decision.action is Action.RECONNECT_NOW:
                self._rotate()
                delay = self.restart_jitter * self.backoff.rng.random()
            elif decision.action is Action.NEW_TOKEN and established:
                delay = 0.0  # the session lived and its token ran out: reconnect with a fresh one
            else:
                if decision.action is Action.NEW_TOKEN:
                    # Refused at the handshake: each attempt counts towards the address's
                    # automatic ban, so back off, and give up after a few.
                    auth_failures += 1
                    if auth_failures >= self.max_auth_failures:
                        raise SessionTerminated(code or "token_invalid", close_code=close_code, status=status)
                delay = max(self.backoff.next(decision.retry_after), decision.min_delay)
            log.info("hubclient.reconnecting", extra={"action": decision.action.value, "delay": delay,
                                                       "url": self.url})
            await self._sleep(delay)

    def _rotate(self) -> None:
        self._url_index = (self._url_index + 1) % len(self.urls)

    async def _session(self, ws: ClientConnection) -> tuple[bool, int | None, str]:
        """Run one session; returns (established, close code, close reason)."""
        established = False
        try:
            async with asyncio.timeout(self.open_timeout):
                first = parse_server(await ws.recv())
            if not isinstance(first, Welcome):
                raise ProtocolError(f"the first message was {first.type}, not welcome")
            established = True
            self._welcome = first
            self._expires_at = first.expires_at
            self._ws = ws
            self.sessions += 1
            self._connected.set()
            log.info("hubclient.connected", extra={"url": self.url, "connection_id": first.connection_id})
            await self._on_welcome(ws, first)
            async for raw in ws:
                if not isinstance(raw, str):
                    continue
                try:
                    message = parse_server(raw)
                except ProtocolError as exc:
                    log.warning("hubclient.bad_frame", extra={"error": str(exc)})
                    continue
                self._dispatch(ws, message)
        except ConnectionClosed:
            pass
        except (TimeoutError, ProtocolError) as exc:
            log.warning("hubclient.bad_session", extra={"error": str(exc)})
            with contextlib.suppress(Exception):
                await ws.close(1002)
        finally:
            self._ws = None
            self._connected.clear()
            lost = ConnectionLost("the session closed before the hub answered")
            for future in self._waiters.values():
                if not future.done():
                    future.set_exception(lost)
            self._waiters.clear()
            self._on_disconnect(lost)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.wait_closed(), 2)
        return established, ws.close_code, ws.close_reason or ""

    def _dispatch(self, ws: ClientConnection, message: ServerMessage) -> None:
        ref = getattr(message, "ref", None)
        if ref is not None and ref in self._waiters:
            future = self._waiters.pop(ref)
            if not future.done():
                future.set_result(message)
            return
        if isinstance(message, AuthExpiring):
            if self.refresh_enabled:
                self._spawn(self._refresh_in_band(ws, message))
            return
        self._handle(ws, message)

    async def _refresh_in_band(self, ws: ClientConnection, expiring: AuthExpiring) -> None:
        try:
            expires_at = await self.refresh()
        except (HubError, TimeoutError, ProtocolError) as exc:
            # The session goes on under the old token; at its expiry the hub closes 4401 and the
            # loop reconnects with a fresh token.
            log.warning("hubclient.refresh_failed", extra={"error": str(exc),
                                                           "seconds_left": expiring.seconds_left})
        except Exception:
            log.warning("hubclient.token_provider_failed", exc_info=True)
        else:
            log.info("hubclient.refreshed", extra={"expires_at": expires_at})

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- hooks for the two kinds of client -----------------------------------------------------

    async def _on_welcome(self, ws: ClientConnection, welcome: Welcome) -> None:
        """A session opened (subclasses re-establish their state)."""

    def _handle(self, ws: ClientConnection, message: ServerMessage) -> None:
        """A message that answers nothing this client waits for."""

    def _on_disconnect(self, lost: ConnectionLost) -> None:
        """A session ended (subclasses fail what waited on it)."""

    def _ended(self, error: BaseException | None) -> None:
        """The client stopped for good (``error``: the terminal refusal, if any)."""

