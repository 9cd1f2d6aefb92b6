"""A worker stopping under trouble: sessions still running when uvicorn's graceful-shutdown
timeout runs out are cut quietly (app/shutdown.py), not logged as exceptions."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import websockets

from tests.conftest import BASE_ENV, make_token
from tests.support.redis_server import RedisServer
from tests.support.server import HubProcess


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
