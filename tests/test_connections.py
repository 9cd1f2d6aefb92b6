"""A connection's writer (app.connections) on a socket that records what it is sent."""

from __future__ import annotations

import asyncio
import json
import time

from app.connections import Connection
from app.handshake import Admission
from app.roles import Endpoint
from app.session import Limits, Session
from app.tokens import Principal

LIMITS = Limits(refresh_warning_seconds=60, leeway_seconds=0, message_rate=10, message_burst=5)


class RecordingSocket:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_text(self, data: str) -> None:
        await asyncio.sleep(0)  # a real send may yield: nothing may overtake it meanwhile
        self.sent.append(json.loads(data)["type"])

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.sent.append(f"close {code}")


def connection(socket: RecordingSocket) -> Connection:
    now = time.time()
    principal = Principal(sub="a1", roles=frozenset({"agent"}), tenant=None, jti="j", exp=now + 300,
                          iat=now, fingerprint="f" * 16)
    admission = Admission(conn_id="c1", endpoint=Endpoint.AGENT, principal=principal,
                          client_ip="192.0.2.1", transport="header", subprotocol=None,
                          user_agent=None, origin=None)
    return Connection(socket, Session(admission, LIMITS, now), queue_size=8)


async def _sent(socket: RecordingSocket, count: int) -> list[str]:
    for _ in range(100):
        if len(socket.sent) >= count:
            break
        await asyncio.sleep(0.01)
    return socket.sent


async def test_what_is_sent_before_start_goes_out_after_the_welcome() -> None:
    # The hub registers an agent before its welcome: a command routed to it in between waits.
    socket = RecordingSocket()
    conn = connection(socket)
    conn.send('{"type": "command"}')
    await asyncio.sleep(0.05)
    assert socket.sent == []
    await conn.start()
    conn.send('{"type": "pong"}')
    assert await _sent(socket, 3) == ["welcome", "command", "pong"]
    await conn.finish()


async def test_what_is_sent_after_start_goes_out_behind_the_welcome() -> None:
    socket = RecordingSocket()
    conn = connection(socket)
    await conn.start()
    conn.send('{"type": "pong"}')
    assert await _sent(socket, 2) == ["welcome", "pong"]
    await conn.finish()
