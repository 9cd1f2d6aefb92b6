"""A worker stopping under trouble: sessions still running when uvicorn's graceful-shutdown
timeout runs out are cut quietly (app/shutdown.py), not logged as exceptions, and a handshake
still undecided is refused 503 ``unavailable`` (app/protocols.py), not 500."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import uvicorn
import websockets
from starlette.types import Receive, Scope, Send

from app.protocols import HubH11Protocol, HubWSProtocol
from tests.conftest import BASE_ENV, make_token
from tests.support.redis_server import RedisServer
from tests.support.server import HubProcess, free_port


async def test_sessions_cut_by_the_shutdown_timeout_end_without_an_exception(tmp_path: Path) -> None:
    redis = RedisServer()
    redis.start()
    try:
        server = HubProcess({**BASE_ENV, "HUB_REDIS_URL": redis.url, "HUB_SHUTDOWN_GRACE_SECONDS": "0"},
                            tmp_path).start()
        sockets = []
        for i in range(4):
            ws = await websockets.connect(f"{server.url}/ws/agent",
                                          additional_headers={"Authorization": f"Bearer {make_token(f'cut-{i}')}"})
            assert json.loads(await ws.recv())["type"] == "welcome"
            sockets.append(ws)
        # Redis keeps its connections and answers nothing: every session's cleanup (presence, then
        # its slot) waits for two socket timeouts, 2 s, against a drain that does not wait (grace
        # 0) and uvicorn's graceful-shutdown timeout after it (at least 1 s): a second of margin.
        redis.pause()
        code = await asyncio.to_thread(server.stop, 30.0)
        assert code in (0, -15), server.log_text()[-3000:]
        for ws in sockets:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        log = server.log_text()
        assert "Exception in ASGI application" not in log, log[-3000:]
        assert "CancelledError" not in log, log[-3000:]
        cut = [json.loads(line) for line in log.splitlines() if '"hub.sessions_cut"' in line]
        assert cut and cut[0]["cut"] >= 1, log[-3000:]
    finally:
        redis.close()


async def test_a_handshake_undecided_at_shutdown_is_refused_unavailable_not_500() -> None:
    """uvicorn answers a WebSocket handshake still in the app when it shuts down with a bare 500;
    the hub's protocol answers the drain's 503 ``unavailable`` (found by the soak)."""
    decided = asyncio.Event()

    async def undecided(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await decided.wait()  # never set: the handshake is still undecided at shutdown

    port = free_port()
    config = uvicorn.Config(undecided, host="127.0.0.1", port=port, ws=HubWSProtocol,
                            http=HubH11Protocol, lifespan="off", log_level="critical",
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ws/agent HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)  # the app holds the handshake
        server.should_exit = True
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), answer
    assert b"retry-after: 1" in head.lower(), answer
    assert json.loads(body)["error"] == "unavailable", answer
