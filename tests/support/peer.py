"""A thin test peer over the `websockets` client: send JSON, wait for a message of some type."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection


class Peer:
    """One connected client. ``expect(type)`` skips other messages (kept in ``seen``)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []
        self.welcome: dict[str, Any] = {}

    @classmethod
    async def connect(cls, url: str, token: str, **kw: Any) -> Peer:
        ws = await websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}, **kw)
        peer = cls(ws)
        peer.welcome = await peer.expect("welcome")
        return peer

    async def send(self, **message: Any) -> None:
        await self.ws.send(json.dumps(message))

    async def expect(self, kind: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"no {kind} {match or ''} within {timeout}s; saw {self.seen[-5:]}")
            try:
                message = json.loads(await asyncio.wait_for(self.ws.recv(), left))
            except TimeoutError:
                continue
            self.seen.append(message)
            if message.get("type") == kind and all(message.get(k) == v for k, v in match.items()):
                return dict(message)

    async def quiet(self, kind: str, seconds: float = 0.5, **match: Any) -> None:
        """Assert that no ``kind`` message (matching) arrives within ``seconds``."""
        try:
            got = await self.expect(kind, timeout=seconds, **match)
        except AssertionError:
            return
        raise AssertionError(f"unexpected {got}")

    async def closed(self, code: int, reason: str, timeout: float = 5.0) -> None:
        """Assert that the server closes this connection with ``code`` and ``reason``."""
        try:
            while True:
                self.seen.append(json.loads(await asyncio.wait_for(self.ws.recv(), timeout)))
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None, "no close frame from the server"
            assert (closed.rcvd.code, closed.rcvd.reason) == (code, reason)

    async def close(self) -> None:
        await self.ws.close()
