"""hubclient recovers the events a dashboard missed while it reconnected (through real hub
processes on Redis): it resubscribes with ``since`` and tells whether recovery was complete."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest

from hubclient import connect_agent, connect_dashboard
from hubclient.messages import EventDelivery
from tests.conftest import redis_env
from tests.support.server import HubProcess
from tests.test_hubclient import Tokens

StartHub = Callable[..., HubProcess]
FAST = {"HUB_MESSAGE_RATE_PER_SECOND": "10000", "HUB_MESSAGE_BURST": "10000"}


@pytest.mark.redis
async def test_a_dashboard_moved_to_another_process_misses_no_event(
    start_hub: StartHub, redis_url: str
) -> None:
    env = redis_env(redis_url, **FAST)
    a, b = start_hub(env, name="a"), start_hub(env, name="b")
    async with (
        connect_agent(b.url, Tokens("rec-agent", ["agent"])) as agent,
        connect_dashboard([a.url, b.url], Tokens("rec-view", ["dashboard"])) as dash,
    ):
        events, answers = dash.events(), dash.subscriptions()
        await dash.subscribe(["rec-agent"])
        assert (await asyncio.wait_for(anext(answers), 5)).recovered == {}
        sent = 0

        async def publish(count: int) -> None:
            nonlocal sent
            for _ in range(count):
                await agent.emit({"n": sent})
                sent += 1
                await asyncio.sleep(0.01)

        await publish(10)
        got: list[EventDelivery] = [await asyncio.wait_for(anext(events), 5) for _ in range(10)]
        # Process a drains (1012): the dashboard moves to b while the agent keeps publishing.
        stopping = asyncio.create_task(asyncio.to_thread(a.stop))
        await publish(150)
        await stopping
        answer = await asyncio.wait_for(anext(answers), 10)
        assert dash.url.startswith(b.url)
        assert answer.recovered == {"rec-agent": True}
        got += [await asyncio.wait_for(anext(events), 5) for _ in range(sent - 10)]
        assert [e.seq for e in got] == list(range(1, sent + 1))
        assert [e.payload for e in got] == [{"n": n} for n in range(sent)]
        assert len({e.epoch for e in got}) == 1
        assert dash.positions == {"rec-agent": (got[0].epoch or "", sent)}


async def test_an_incomplete_recovery_is_reported(
    start_hub: StartHub, caplog: pytest.LogCaptureFixture
) -> None:
    hub = start_hub({**FAST, "HUB_EVENT_HISTORY_SIZE": "2"})
    async with (
        connect_agent(hub.url, Tokens("rec-trim", ["agent"])) as agent,
        connect_dashboard(hub.url, Tokens("rec-trim-view", ["dashboard"])) as dash,
    ):
        events, answers = dash.events(), dash.subscriptions()
        await dash.subscribe(["rec-trim"])
        assert (await asyncio.wait_for(anext(answers), 5)).recovered == {}
        await agent.emit(0)
        first = await asyncio.wait_for(anext(events), 5)
        assert first.seq == 1 and first.epoch
        # Saved positions (say, from before a restart of the dashboard) that the history no
        # longer covers: events 2..3 were trimmed, 4..5 are replayed.
        for n in range(1, 5):
            await agent.emit(n)
        for _ in range(4):
            await asyncio.wait_for(anext(events), 5)
        with caplog.at_level(logging.WARNING, logger="hubclient"):
            await dash.subscribe(["rec-trim"], since={"rec-trim": (first.epoch, 1)})
        answer = await asyncio.wait_for(anext(answers), 5)
        assert answer.recovered == {"rec-trim": False}
        assert "hubclient.recovery_incomplete" in caplog.text
        replayed = [await asyncio.wait_for(anext(events), 5) for _ in range(2)]
        assert [e.seq for e in replayed] == [4, 5]
