"""Request heads through a real `hubctl serve` (issue 13, items 2 and 3): an incomplete head is
closed after HUB_HANDSHAKE_TIMEOUT_SECONDS, an oversized head gets 431 however it arrives, and
malformed WebSocket headers get 400, never silence."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import BASE_ENV, make_token
from tests.support.client import attempt
from tests.support.peer import Peer
from tests.support.server import HubProcess

UPGRADE = (
    "GET /ws/agent HTTP/1.1\r\nHost: hub\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


@pytest.fixture(scope="module")
def heads_hub(workdir: Path) -> Iterator[HubProcess]:
    server = HubProcess({**BASE_ENV, "HUB_HANDSHAKE_TIMEOUT_SECONDS": "1"}, workdir, name="heads").start()
    yield server
    server.kill()


async def _exchange(server: HubProcess, chunks: list[bytes], pause: float = 0.0, wait: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        return await asyncio.wait_for(reader.read(4096), wait)
    except ConnectionError:
        return b""
    finally:
        writer.close()


async def test_an_incomplete_head_is_closed_after_the_timeout(heads_hub: HubProcess) -> None:
    started = time.monotonic()
    answer = await _exchange(heads_hub, [b"GET /healthz HTTP/1.1\r\nHost: hub\r\n"])
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 4
    # A head dripped a few bytes at a time is held to the same deadline, not reset by each byte.
    drip = [bytes([b]) for b in UPGRADE.encode()[:60]]
    started = time.monotonic()
    answer = await _exchange(heads_hub, drip, pause=0.05)
    assert answer.startswith(b"HTTP/1.1 408") or answer == b"", answer
    assert time.monotonic() - started < 6
    metrics = httpx.get(f"{heads_hub.http}/metrics").text
    assert 'hub_http_heads_refused_total{reason="timeout"}' in metrics


@pytest.mark.parametrize("kind", ["upgrade", "plain"])
async def test_an_oversized_head_is_refused_however_it_arrives(heads_hub: HubProcess, kind: str) -> None:
    start = UPGRADE if kind == "upgrade" else "GET /healthz HTTP/1.1\r\nHost: hub\r\n"
    head = f"{start}X-Pad: {'a' * 100_000}\r\n\r\n".encode()
    # In one write (h11 alone let this through), and in pieces.
    assert (await _exchange(heads_hub, [head])).startswith(b"HTTP/1.1 431")
    # In pieces: the answer comes once the limit is passed (the client stops writing there, or
    # its later writes to a closed connection could reset it before it reads the answer).
    pieces = [head[i : i + 4096] for i in range(0, 20 * 1024, 4096)]
    assert (await _exchange(heads_hub, pieces, pause=0.05)).startswith(b"HTTP/1.1 431")


async def test_non_ascii_websocket_headers_get_400(heads_hub: HubProcess) -> None:
    for header in (b"Sec-WebSocket-Protocol: hub.v1, b\xe9arer.x", b"Sec-WebSocket-Protocol: \xff"):
        answer = await _exchange(heads_hub, [UPGRADE.encode() + header + b"\r\n\r\n"])
        assert answer.startswith(b"HTTP/1.1 400"), answer
    assert "Fatal error on transport" not in heads_hub.log_text()


async def test_malformed_heads_get_400_and_cost_no_log_line_each(heads_hub: HubProcess) -> None:
    before = len(heads_hub.log_text())
    for _ in range(20):
        answer = await _exchange(heads_hub, [b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n"])
        assert answer.startswith(b"HTTP/1.1 400"), answer
    assert "Invalid HTTP request" not in heads_hub.log_text()[before:]
    metrics = httpx.get(f"{heads_hub.http}/metrics").text
    assert 'hub_http_heads_refused_total{reason="malformed"}' in metrics


async def test_normal_requests_still_work(heads_hub: HubProcess) -> None:
    # Keep-alive: the second request's head is checked afresh and passes.
    async with httpx.AsyncClient(base_url=heads_hub.http) as client:
        for _ in range(3):
            assert (await client.get("/healthz")).status_code == 200
            await asyncio.sleep(0.4)
    assert (await attempt(f"{heads_hub.url}/ws/agent", token=make_token("heads-ok"))).accepted
    # A WebSocket that lives longer than the head timeout is not touched by it.
    peer = await Peer.connect(f"{heads_hub.url}/ws/agent", make_token("heads-live"))
    await asyncio.sleep(1.5)
    await peer.send(type="ping", id=1)
    assert (await peer.expect("pong"))["ref"] == 1
    await peer.close()
