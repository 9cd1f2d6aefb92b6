"""The message baseline: a bare relay made of the hub's ingredients, with none of its checks.

FastAPI WebSocket endpoints (served like the hub, see :mod:`bench.bare_runner`) that forward
frames between clients through a bus: Redis PUBLISH / SUBSCRIBE when ``BARE_RELAY_REDIS_URL`` is
set (several processes share it), else in-process. One channel per client: a dashboard's
``command`` is published on its agent's channel, the agent's ``result`` on the dashboard's, and
agents' ``event`` on one fan-out channel that subscribed dashboards receive (encoded once, by the
publisher). No authentication (the token's ``sub`` is read, not verified), no validation, no
limits, no history, no send queue: what the hub does beyond this is what its ratio measures. The
frames have the hub's shapes, so the bench's clients drive both alike.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

FANOUT_CHANNEL = "ev"
_compact = json.JSONEncoder(separators=(",", ":")).encode


class Bus:
    """Channel -> this process's sockets; :meth:`publish` reaches every process's subscribers and
    returns how many processes (Redis) or sockets (in-process) received the frame."""

    def __init__(self) -> None:
        self.local: dict[str, set[WebSocket]] = {}

    async def subscribe(self, channel: str, ws: WebSocket) -> None:
        self.local.setdefault(channel, set()).add(ws)

    async def unsubscribe(self, channel: str, ws: WebSocket) -> None:
        sockets = self.local.get(channel)
        if sockets is not None:
            sockets.discard(ws)
            if not sockets:
                del self.local[channel]

    async def publish(self, channel: str, text: str) -> int:
        return await self.deliver(channel, text)

    async def deliver(self, channel: str, text: str) -> int:
        sockets = self.local.get(channel, ())
        for ws in list(sockets):
            with contextlib.suppress(Exception):  # a socket that is going away
                await ws.send_text(text)
        return len(sockets)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


class RedisBus(Bus):
    """One publishing client and one subscriber connection per process, as the hub has."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.client = aioredis.from_url(url)
        self.pubsub = self.client.pubsub()
        self.reader: asyncio.Task[None] | None = None

    async def subscribe(self, channel: str, ws: WebSocket) -> None:
        first = channel not in self.local
        await super().subscribe(channel, ws)
        if first:
            await self.pubsub.subscribe(channel)

    async def unsubscribe(self, channel: str, ws: WebSocket) -> None:
        await super().unsubscribe(channel, ws)
        if channel not in self.local:
            await self.pubsub.unsubscribe(channel)

    async def publish(self, channel: str, text: str) -> int:
        return int(await self.client.publish(channel, text))

    async def start(self) -> None:
        await self.pubsub.subscribe("bare-relay")  # a pubsub needs one channel before it reads
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            message = await self.pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == "message":
                await self.deliver(message["channel"].decode(), message["data"].decode())

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        await self.pubsub.aclose()  # type: ignore[no-untyped-call]
        await self.client.aclose()


def _bus() -> Bus:
    url = os.environ.get("BARE_RELAY_REDIS_URL")
    return RedisBus(url) if url else Bus()


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    await bus.start()
    yield
    await bus.close()


bus = _bus()
app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, lifespan=_lifespan)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _sub(websocket: WebSocket) -> str:
    """The token's ``sub``, read without verifying anything (a baseline, not a server)."""
    token = websocket.headers.get("authorization", "").removeprefix("Bearer ")
    try:
        body = token.split(".")[1]
        claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return str(claims["sub"])
    except (IndexError, ValueError, KeyError):
        return "anonymous"


async def _serve(websocket: WebSocket, endpoint: str) -> None:
    await websocket.accept()
    sub = _sub(websocket)
    # The client's own channel: the agent's by name, a dashboard's by connection.
    own = f"a:{sub}" if endpoint == "agent" else f"d:{uuid.uuid4().hex}"
    await bus.subscribe(own, websocket)
    await websocket.send_text(_compact({
        "type": "welcome", "connection_id": own, "sub": sub, "roles": [endpoint], "tenant": None,
        "expires_at": int(time.time()) + 3600,
    }))
    watching = False
    seq = 0
    try:
        while True:
            message = json.loads(await websocket.receive_text())
            kind = message.get("type")
            if kind == "command":
                delivered = await bus.publish(f"a:{message['agent_id']}", _compact({
                    "type": "command", "command_id": own, "from": sub, "payload": message.get("payload")}))
                if not delivered:
                    await websocket.send_text(_compact({
                        "type": "error", "error": "agent_offline", "message": "the agent is not connected",
                        "ref": message.get("id")}))
            elif kind == "result":
                await bus.publish(str(message["command_id"]), _compact({
                    "type": "result", "command_id": message["command_id"], "agent_id": sub,
                    "payload": message.get("payload")}))
            elif kind == "event":
                seq += 1
                await bus.publish(FANOUT_CHANNEL, _compact({
                    "type": "event", "agent_id": sub, "payload": message.get("payload"), "seq": seq,
                    "epoch": own}))
            elif kind == "subscribe":
                if not watching:
                    await bus.subscribe(FANOUT_CHANNEL, websocket)
                    watching = True
                agents = message.get("agents")
                await websocket.send_text(_compact({
                    "type": "subscribed", "agents": ["*"] if agents == "*" else agents,
                    "ref": message.get("id"), "recovered": {}}))
    except WebSocketDisconnect:
        pass
    finally:
        await bus.unsubscribe(own, websocket)
        if watching:
            await bus.unsubscribe(FANOUT_CHANNEL, websocket)


async def agent_socket(websocket: WebSocket) -> None:
    await _serve(websocket, "agent")


async def dashboard_socket(websocket: WebSocket) -> None:
    await _serve(websocket, "dashboard")


app.add_api_websocket_route("/ws/agent", agent_socket)
app.add_api_websocket_route("/ws/dashboard", dashboard_socket)
