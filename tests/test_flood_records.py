"""Floods from a banned or rate-limited address cost little (issue 13, item 2): 2,000 attempts
from a banned address and 1,000 from a rate-limited one, with an 8 KB User-Agent, give at most one log line and one stored event per (address,
code) per 10 s, whose `count`s add up to the attempts; header values are cut to 256 characters."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable

import pytest

from tests.support.server import HubProcess

StartHub = Callable[..., HubProcess]
BANNED, LIMITED = "127.0.0.9", "127.0.0.10"
ATTEMPTS = {BANNED: 2000, LIMITED: 1000}
USER_AGENT = "flood/" + "u" * 8192
pytestmark = pytest.mark.slow


async def _attempt(port: int, source: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(
        f"GET /ws/agent HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\nUser-Agent: {USER_AGENT}\r\n\r\n".encode()
    )
    await writer.drain()
    status = await reader.readline()
    writer.close()
    return status


def _stored(hub: HubProcess) -> list[tuple[str, str, int, int]]:
    with sqlite3.connect(hub.workdir / "flood-records.db") as db:
        return db.execute(
            "select client_ip, code, count, length(user_agent) from security_events "
            "where client_ip in (?, ?)", (BANNED, LIMITED),
        ).fetchall()


async def test_a_flood_from_banned_and_limited_addresses_is_recorded_in_counts(start_hub: StartHub) -> None:
    hub = start_hub({"HUB_BANNED_CIDRS": BANNED, "HUB_CONNECT_RATE_PER_IP": "5"}, name="flood-records")
    log_before = len(hub.log_text())
    started = time.monotonic()

    async def flood(source: str, share: int) -> list[bytes]:
        return [await _attempt(hub.port, source) for _ in range(share)]

    batches = await asyncio.gather(*(flood(source, count // 10) for source, count in ATTEMPTS.items() for _ in range(10)))
    statuses = [s.split(b" ")[1] for batch in batches for s in batch]
    assert statuses.count(b"403") == ATTEMPTS[BANNED]  # banned: ip_banned every time
    assert statuses.count(b"429") == ATTEMPTS[LIMITED] - 5 and statuses.count(b"401") == 5  # 5 get to the token
    elapsed = time.monotonic() - started

    # Every counted attempt is recorded once its window has ended (within 10 s and a check).
    expected = {(BANNED, "ip_banned"): ATTEMPTS[BANNED], (LIMITED, "rate_limited"): ATTEMPTS[LIMITED] - 5}
    totals: dict[tuple[str, str], int] = {}
    for _ in range(150):
        rows = _stored(hub)
        totals = {}
        for ip, code, count, _ in rows:
            totals[(ip, code)] = totals.get((ip, code), 0) + count
        if all(totals.get(k) == v for k, v in expected.items()):
            break
        await asyncio.sleep(0.1)
    assert {k: totals.get(k) for k in expected} == expected
    windows = int((time.monotonic() - started) // 10) + 2
    rows = _stored(hub)
    for key in expected:
        assert sum(1 for ip, code, _, _ in rows if (ip, code) == key) <= windows, (key, rows, elapsed)
    assert all(length <= 256 for *_, length in rows)

    lines = [json.loads(line) for line in hub.log_text()[log_before:].splitlines() if line.startswith("{")]
    flood_lines = [
        line for line in lines
        if BANNED in line.get("event", "") or LIMITED in line.get("event", "")
        or line.get("client_ip") in (BANNED, LIMITED)
    ]
    for ip, code in expected:
        mine = [line for line in flood_lines if line.get("client_ip") == ip and line.get("code") == code]
        assert 1 <= len(mine) <= windows, (ip, code, len(mine))
        assert all(len(line.get("user_agent", "")) <= 256 for line in mine)
    # uvicorn's own per-refusal lines are gone too: only the hub's counted lines are left, besides
    # the lines of the 5 attempts that got to the token (token_missing, and uvicorn's 401 line).
    others = [
        line for line in flood_lines
        if line.get("code") != "token_missing" and not line.get("event", "").endswith(" 401")
    ]
    assert len(others) <= 2 * windows, others


def test_flood_gate_windows() -> None:
    from app.errors import Code
    from app.flood import FloodGate
    from app.security_log import SecurityEvent

    now = [0.0]
    gate = FloodGate(window=10, clock=lambda: now[0])
    event = SecurityEvent(event="ws.auth_failed", code=Code.IP_BANNED, endpoint="/ws/agent", client_ip="192.0.2.1")
    assert gate.admit(event) == event  # the first one at once
    assert [gate.admit(event) for _ in range(5)] == [None] * 5
    assert gate.due() == []  # the window is still open
    now[0] = 10.0
    (summary,) = gate.due()
    assert summary.count == 5
    now[0] = 12.0
    assert gate.admit(event) is None  # a new window started with the summary
    now[0] = 20.0
    assert gate.admit(event) is not None and gate.admit(event) is None
    now[0] = 45.0
    assert len(gate.due()) == 1 and gate.due() == [] and len(gate) == 1
    now[0] = 56.0
    assert gate.due() == [] and len(gate) == 0  # a quiet window is forgotten
