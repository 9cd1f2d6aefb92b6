"""Thousands of idle connections on one worker whose tokens all expire at once: each is closed
4401 on time by its own timer (no polling loop), and every slot comes back."""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable

import httpx
import pytest
import websockets

from tests.conftest import make_token
from tests.support.server import HubProcess

COUNT = 2000
pytestmark = pytest.mark.slow


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


async def test_thousands_expire_on_time_and_release_their_slots(start_hub: Callable[..., HubProcess]) -> None:
    _raise_fd_limit(4 * COUNT + 1024)  # the hub inherits it
    server = start_hub({"HUB_MAX_CONNECTIONS_PER_USER": str(COUNT), "HUB_REFRESH_WARNING_SECONDS": "0"})
    now = time.time()
    exp = int(now) + 25
    token = make_token("idle-many", ttl=exp - now, now=now)
    url = f"{server.url}/ws/agent"
    closes: list[tuple[int, str, float]] = []

    async def idle(i: int) -> None:
        source = (f"127.0.1.{i % 200 + 1}", 0)  # spread over addresses: ephemeral ports are finite
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                      open_timeout=30, local_addr=source, ping_interval=None) as ws:
            await ws.recv()  # welcome
            try:
                await asyncio.wait_for(ws.recv(), exp - time.time() + 10)
            except websockets.ConnectionClosed as closed:
                assert closed.rcvd is not None
                closes.append((closed.rcvd.code, closed.rcvd.reason, time.time()))

    semaphore = asyncio.Semaphore(200)

    async def opened(i: int) -> asyncio.Task[None]:
        async with semaphore:
            task = asyncio.create_task(idle(i))
            await asyncio.sleep(0)
            return task

    tasks = [await opened(i) for i in range(COUNT)]
    assert time.time() < exp - 5, "opening the connections took too long to test expiry"
    await asyncio.gather(*tasks)
    assert len(closes) == COUNT
    assert {(code, reason) for code, reason, _ in closes} == {(4401, "token_expired")}
    lateness = sorted(at - exp for _, _, at in closes)
    assert lateness[0] >= -0.05, "a session was closed before its token expired"
    # Each timer fires at exp; closing 2,000 sockets at once (client and server sharing two cores
    # here, every close a full closing handshake) takes a while: even the first closes arrive
    # about 1 s late and the median 1.0 to 1.7 s on a quiet machine. That rate is the bench's
    # business; what this bounds is the design: a polling loop (say every 5 s) instead of one
    # timer per connection would put the median at half its period or more.
    median = lateness[len(lateness) // 2]
    assert median < 2.5, f"median close {median:.2f}s late"
    assert lateness[-1] < 5.0, f"the last close came {lateness[-1]:.2f}s after exp"
    admin = make_token("root", ["admin"])
    async with httpx.AsyncClient(base_url=server.http, headers={"Authorization": f"Bearer {admin}"}) as client:
        for _ in range(50):
            if (await client.get("/admin/connections", params={"sub": "idle-many"})).json() == []:
                break
            await asyncio.sleep(0.1)
        assert (await client.get("/admin/connections", params={"sub": "idle-many"})).json() == []
