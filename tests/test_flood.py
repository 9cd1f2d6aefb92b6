"""A flood of bad handshakes: good handshakes still get in, and the security event log stays
complete (or its drop counter says exactly what it lost)."""

from __future__ import annotations

import asyncio
import re
import sqlite3

import httpx
import pytest

from tests.conftest import make_token
from tests.support.client import attempt
from tests.support.server import HubProcess

FLOOD = 5000
pytestmark = pytest.mark.slow


async def _bad_handshake(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /ws/agent HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\nAuthorization: Bearer bad.token.x\r\n\r\n".encode()
    )
    await writer.drain()
    status = await reader.readline()
    writer.close()
    return status


async def test_flood_of_bad_handshakes(hub: HubProcess) -> None:
    before = sqlite3.connect(hub.workdir / "shared.db").execute(
        "select count(*) from security_events where code = 'token_malformed'").fetchone()[0]

    async def flood(share: int) -> list[bytes]:
        return [await _bad_handshake(hub.port) for _ in range(share)]

    async def good() -> list[bool]:
        results = []
        for i in range(40):
            results.append((await attempt(f"{hub.url}/ws/agent", token=make_token(f"flood-good-{i}"))).accepted)
        return results

    flooders = [asyncio.create_task(flood(FLOOD // 20)) for _ in range(20)]
    goods = await good()
    statuses = [s for chunk in await asyncio.gather(*flooders) for s in chunk]
    assert all(goods), "a good handshake was refused during the flood"
    assert len(statuses) == FLOOD and {s.split(b" ")[1] for s in statuses} == {b"401"}

    metrics = httpx.get(f"{hub.http}/metrics").text
    match = re.search(r"^hub_security_events_dropped_total ([0-9.e+]+)$", metrics, re.M)
    dropped = int(float(match.group(1))) if match else 0
    stored = 0
    for _ in range(100):
        stored = sqlite3.connect(hub.workdir / "shared.db").execute(
            "select count(*) from security_events where code = 'token_malformed'").fetchone()[0] - before
        if stored + dropped >= FLOOD:
            break
        await asyncio.sleep(0.1)
    assert stored + dropped == FLOOD, (stored, dropped)
