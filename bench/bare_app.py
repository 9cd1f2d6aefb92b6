"""The baseline: a bare FastAPI WebSocket endpoint with no authentication at all.

It accepts, sends one JSON message the size and shape of the hub's ``welcome``, and echoes every
text frame back. ``/ws/agent`` and ``/ws/dashboard`` are the same endpoint, so that one client
serves both targets; ``/healthz`` answers like the hub's.
"""

from __future__ import annotations

import json
import time
import uuid

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(json.dumps({
        "type": "welcome", "connection_id": uuid.uuid4().hex, "sub": "bench-000000",
        "roles": ["dashboard"], "tenant": None, "expires_at": int(time.time()) + 3600,
    }))
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


app.add_api_websocket_route("/ws/agent", _echo)
app.add_api_websocket_route("/ws/dashboard", _echo)
