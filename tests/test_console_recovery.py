"""The console tells its operator when events missed during a reconnect could not all be
recovered (a real Chromium, real hub processes on Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hubclient import connect_agent
from tests.conftest import BASE_ENV, make_token, redis_env
from tests.support.server import HubProcess
from tests.test_console import OPERATOR, Console, _provider, context

pytestmark = [pytest.mark.slow, pytest.mark.redis]
__all__ = ["context"]  # the browser fixture, shared with tests/test_console.py


@pytest.fixture
def replacements(workdir: Path) -> Iterator[list[HubProcess]]:
    """Hubs started by hand (on a port of the test's choosing); killed at the end."""
    made: list[HubProcess] = []
    yield made
    for server in made:
        server.kill()


async def test_console_reports_events_lost_while_it_reconnected(
    context: object, start_hub: Callable[..., HubProcess], redis_url: str, workdir: Path,
    replacements: list[HubProcess],
) -> None:
    env = redis_env(redis_url, HUB_EVENT_HISTORY_SIZE="2")
    first, other = start_hub(env, name="first"), start_hub(env, name="other")
    console = await Console.open(context, first)  # type: ignore[arg-type]
    await console.connect(make_token("console-rec", OPERATOR))
    await console.wait_text("#status", "connected")
    async with connect_agent(other.url, _provider("rec-console-agent")) as agent:
        await agent.emit({"n": 0})
        await console.wait_text("#events", "rec-console-agent")
        # The console's hub goes away; meanwhile the agent (on the other hub) publishes more
        # events than the history keeps.
        await asyncio.to_thread(first.stop)
        for n in range(1, 6):
            await agent.emit({"n": n})
        await asyncio.sleep(0.5)
        again = HubProcess({**BASE_ENV, **env}, workdir, name="again")
        again.port = first.port  # the page reconnects to the address it came from
        replacements.append(again)
        await asyncio.to_thread(again.start)
        await console.wait_text("#notice", "missed for good", timeout=20_000)
        await console.wait_text("#notice", "rec-console-agent")
        assert await console.page.get_attribute("#status", "data-unrecovered") == "rec-console-agent"
        # The events still held were replayed.
        await console.wait_text("#events", '"n":5')
    console.assert_no_csp_violation()
