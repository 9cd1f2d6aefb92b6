"""The frame limit through `hubctl serve` (issue 13, "smaller"): every message over
HUB_MAX_MESSAGE_BYTES closes 1009 `message_too_big` (the server used to allow 4x the limit and then
close with its own text), and a message of exactly the limit is served."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from tests.conftest import make_token
from tests.support.server import HubProcess

LIMIT = 65536  # the default HUB_MAX_MESSAGE_BYTES


def _ping_of(size: int) -> str:
    frame = json.dumps({"type": "ping", "id": "at-limit", "pad": ""})
    return frame[:-2] + "x" * (size - len(frame)) + '"}'


@pytest.mark.parametrize("size", [LIMIT + 1, 4 * LIMIT + 1, 1_000_000])
async def test_any_frame_over_the_limit_closes_1009_message_too_big(hub: HubProcess, size: int) -> None:
    async with websockets.connect(
        f"{hub.url}/ws/agent", additional_headers={"Authorization": f"Bearer {make_token('frame-big')}"},
        max_size=None,
    ) as ws:
        await ws.recv()
        await ws.send(_ping_of(size))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1009, "message_too_big")


async def test_a_frame_of_exactly_the_limit_is_served(hub: HubProcess) -> None:
    frame = _ping_of(LIMIT)
    assert len(frame.encode()) == LIMIT
    async with websockets.connect(
        f"{hub.url}/ws/agent", additional_headers={"Authorization": f"Bearer {make_token('frame-ok')}"}
    ) as ws:
        await ws.recv()
        await ws.send(frame)
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "pong", "ref": "at-limit"}
