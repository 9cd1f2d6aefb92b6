"""The Python client library (``hubclient``) against real hub processes, plus its backoff policy
as pure units (seeded random, fake sleep: no waiting)."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from hubclient import (
    Action,
    AgentOffline,
    Backoff,
    ConnectionLost,
    Forbidden,
    SessionTerminated,
    connect_agent,
    connect_dashboard,
    decide_close,
    decide_status,
)
from hubclient.client import AgentClient, DashboardClient
from hubclient.messages import Error, JsonValue
from tests.conftest import make_token, redis_env
from tests.support.server import ROOT, HubProcess

StartHub = Callable[..., HubProcess]


class Tokens:
    """A token provider that mints a fresh token per call and counts the calls."""

    def __init__(self, sub: str, roles: list[str], ttl: float = 300) -> None:
        self.sub, self.roles, self.ttl = sub, roles, ttl
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        return make_token(self.sub, self.roles, self.ttl)


async def _until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# --- the backoff policy, with time controlled ---------------------------------------------------


def test_backoff_grows_to_the_cap_and_is_jittered() -> None:
    exact = Backoff(base=0.5, cap=8, factor=2, jitter=0)
    assert [exact.next() for _ in range(7)] == [0.5, 1, 2, 4, 8, 8, 8]

    jittered = Backoff(base=0.5, cap=8, factor=2, jitter=0.5, rng=random.Random(7))
    delays = [jittered.next() for _ in range(8)]
    ceilings = [0.5, 1, 2, 4, 8, 8, 8, 8]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling * 0.5 <= delay <= ceiling
    assert len(set(delays)) == len(delays)  # jittered: no two equal
    assert delays[3] > delays[0]  # and growing
    # Reproducible from the seed; different with another seed.
    again = Backoff(base=0.5, cap=8, factor=2, jitter=0.5, rng=random.Random(7))
    assert [again.next() for _ in range(8)] == delays
    other = Backoff(base=0.5, cap=8, factor=2, jitter=0.5, rng=random.Random(8))
    assert [other.next() for _ in range(8)] != delays
    jittered.reset()
    assert jittered.next() <= 0.5


def test_retry_after_is_a_floor_with_a_little_spread() -> None:
    backoff = Backoff(base=0.5, cap=30, jitter=0.5, rng=random.Random(1))
    delays = [backoff.next(retry_after=20) for _ in range(3)]
    assert all(20 <= d <= 20 * 1.125 for d in delays), delays
    # Past the point where the exponential schedule is longer, it wins.
    late = Backoff(base=0.5, cap=30, jitter=0, rng=random.Random(1))
    late.attempts = 10
    assert late.next(retry_after=2) == 30


def test_policy_by_close_code_and_status() -> None:
    assert decide_close(4401, "token_expired").action is Action.NEW_TOKEN
    for reason in ("kicked", "token_revoked", "identity_changed", "role_forbidden", "ip_banned"):
        assert decide_close(4403, reason).action is Action.STOP
    assert decide_close(1012, "service_restart").action is Action.RECONNECT_NOW
    assert decide_close(4429, "rate_limited").action is Action.BACKOFF
    unavailable = decide_close(1013, "unavailable")
    assert unavailable.action is Action.BACKOFF and unavailable.min_delay == 5
    assert decide_close(1006).action is Action.BACKOFF
    assert decide_close(None).action is Action.BACKOFF
    assert decide_status(401).action is Action.NEW_TOKEN
    assert decide_status(403).action is Action.STOP
    assert decide_status(429, 12).retry_after == 12
    assert decide_status(503, 1).action is Action.BACKOFF


async def test_http_429_is_retried_after_its_retry_after(start_hub: StartHub) -> None:
    """A real refusal: one attempt per minute allowed, so the second connection gets HTTP 429
    `rate_limited` with Retry-After; the client's (fake) sleep is asked for at least that long."""
    server = start_hub({"HUB_CONNECT_RATE_PER_USER": "1"})
    tokens = Tokens("limited-agent", ["agent"])
    first = await connect_agent(server.url, tokens)
    delays: list[float] = []
    slept = asyncio.Event()

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)
        slept.set()
        await asyncio.Event().wait()  # time stands still

    second = AgentClient(server.url, tokens, sleep=fake_sleep, backoff=Backoff(rng=random.Random(3)))
    starting = asyncio.create_task(second.start())
    await asyncio.wait_for(slept.wait(), 10)
    assert second.last_refusal is not None
    status, code, retry_after = second.last_refusal
    assert (status, code) == (429, "rate_limited")
    assert retry_after is not None and retry_after > 5  # far above the first backoff step (0.5 s)
    assert len(delays) == 1 and delays[0] >= retry_after, (delays, retry_after)
    assert not second.connected
    starting.cancel()
    await second.close()
    await first.close()


# --- sessions against a real hub ----------------------------------------------------------------


async def test_agent_and_dashboard_round_trip(hub: HubProcess) -> None:
    async def on_command(command_id: str, sender: str, payload: JsonValue) -> JsonValue:
        return {"echo": payload, "from": sender, "command_id": command_id}

    async with (
        connect_agent(hub.url, Tokens("rt-agent", ["agent"]), on_command=on_command) as agent,
        connect_dashboard(hub.url, Tokens("rt-op", ["dashboard", "operator"])) as dash,
    ):
        assert agent.welcome is not None and agent.welcome.sub == "rt-agent"
        presence, events = dash.presence(), dash.events()
        assert await dash.subscribe(["rt-agent"]) == ["rt-agent"]
        first = await asyncio.wait_for(anext(presence), 5)
        assert (first.agent_id, first.status) == ("rt-agent", "online")

        result = await dash.send_command("rt-agent", {"op": "uptime"})
        assert isinstance(result, dict)
        assert result["echo"] == {"op": "uptime"} and result["from"] == "rt-op"

        await agent.emit({"cpu": 0.5})
        event = await asyncio.wait_for(anext(events), 5)
        assert (event.agent_id, event.payload) == ("rt-agent", {"cpu": 0.5})

        with pytest.raises(AgentOffline):
            await dash.send_command("nobody-here", {})

        async with connect_dashboard(hub.url, Tokens("rt-viewer", ["dashboard"])) as viewer:
            with pytest.raises(Forbidden):
                await viewer.send_command("rt-agent", {})

        await agent.close()
        gone = await asyncio.wait_for(anext(presence), 5)
        assert (gone.agent_id, gone.status) == ("rt-agent", "offline")


@pytest.mark.parametrize(("then", "raised"), [("lost", ConnectionLost), ("error", AgentOffline)])
async def test_what_comes_right_behind_command_accepted_ends_the_command(
    hub: HubProcess, monkeypatch: pytest.MonkeyPatch, then: str, raised: type[Exception]
) -> None:
    """The reader can handle what comes right behind `command.accepted` before send_command
    resumes with the acceptance: the session's close (the result cannot come any more), or an
    `error` with the command's ref (the agent left with it unanswered). Either ends the command
    at once; both once left it waiting for its whole timeout (found by the soak)."""
    async def slow(command_id: str, sender: str, payload: JsonValue) -> JsonValue:
        await asyncio.sleep(30)
        return None

    async with (
        connect_agent(hub.url, Tokens(f"race-agent-{then}", ["agent"]), on_command=slow),
        connect_dashboard(hub.url, Tokens(f"race-op-{then}", ["dashboard", "operator"])) as dash,
    ):
        real = dash._request

        async def accepted_then(ws: Any, frame: str, ref: Any) -> Any:
            answer = await real(ws, frame, ref)
            if then == "lost":
                await ws.close()
                while dash._ws is ws:
                    await asyncio.sleep(0.01)
            else:
                dash._dispatch(ws, Error(error="agent_offline", message="the agent disconnected", ref=ref))
            return answer

        monkeypatch.setattr(dash, "_request", accepted_then)
        with pytest.raises(raised):
            await dash.send_command(f"race-agent-{then}", {}, timeout=5)


async def test_refresh_keeps_one_connection_across_several_token_lifetimes(start_hub: StartHub) -> None:
    server = start_hub({"HUB_REFRESH_WARNING_SECONDS": "2"})
    tokens = Tokens("refresh-agent", ["agent"], ttl=3)
    async with connect_agent(server.url, tokens) as agent:
        connection_id = agent.connection_id
        first_expiry = agent.expires_at
        assert connection_id and first_expiry
        await asyncio.sleep(10)  # more than three 3-second token lifetimes
        assert agent.connection_id == connection_id
        assert agent.sessions == 1 and agent.last_close is None
        assert agent.refreshes >= 3
        assert agent.expires_at is not None and agent.expires_at > first_expiry + 6
        await agent.ping()


async def test_token_expiry_4401_fetches_a_new_token_and_reconnects(start_hub: StartHub) -> None:
    server = start_hub({"HUB_REFRESH_WARNING_SECONDS": "1"})
    tokens = Tokens("expiring-agent", ["agent"], ttl=2)
    async with connect_agent(server.url, tokens, refresh=False) as agent:
        first = agent.connection_id
        await _until(lambda: agent.sessions >= 2 and agent.connected, 10, "a second session")
        assert agent.last_close == (4401, "token_expired")
        assert agent.connection_id != first
        assert tokens.calls >= 2
        await agent.ping()


async def test_wrong_role_is_terminal(hub: HubProcess) -> None:
    tokens = Tokens("agent-with-dashboard-role", ["dashboard"])
    with pytest.raises(SessionTerminated) as caught:
        await connect_agent(hub.url, tokens)
    assert (caught.value.status, caught.value.code) == (403, "role_forbidden")
    assert tokens.calls == 1  # not retried


async def test_admin_kick_stops_the_client(hub: HubProcess) -> None:
    agent = await connect_agent(hub.url, Tokens("kick-me", ["agent"]))
    events = DashboardClient(hub.url, Tokens("kick-me", ["dashboard"]))
    await events.start()
    iterator = events.events()
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{hub.http}/admin/users/kick-me/disconnect",
            headers={"Authorization": f"Bearer {make_token('root', ['admin'])}"},
        )
    assert response.status_code == 202, response.text
    for client in (agent, events):
        with pytest.raises(SessionTerminated) as caught:
            await asyncio.wait_for(client.wait_closed(), 5)
        assert (caught.value.close_code, caught.value.code) == (4403, "kicked")
        assert not client.connected
    # The dashboard's iterators end with the same error.
    with pytest.raises(SessionTerminated):
        await anext(iterator)
    await agent.close()
    await events.close()


@pytest.mark.redis
async def test_service_restart_1012_moves_to_the_second_process(start_hub: StartHub, redis_url: str) -> None:
    env = redis_env(redis_url)
    a = start_hub(env, name="a")
    b = start_hub(env, name="b")
    handled: list[str] = []

    async def on_command(command_id: str, sender: str, payload: JsonValue) -> JsonValue:
        handled.append(command_id)
        return {"ok": True}

    agent = await connect_agent([a.url, b.url], Tokens("restart-agent", ["agent"]), on_command=on_command)
    assert agent.url.startswith(a.url)
    first = agent.connection_id
    await asyncio.to_thread(a.stop)  # SIGTERM: the drain closes 1012 service_restart
    await _until(lambda: agent.sessions >= 2 and agent.connected, 10, "the reconnect to b")
    assert agent.last_close == (1012, "service_restart")
    assert agent.url.startswith(b.url) and agent.connection_id != first
    async with connect_dashboard(b.url, Tokens("restart-op", ["dashboard", "operator"])) as dash:
        assert await dash.send_command("restart-agent", {"op": "ping"}) == {"ok": True}
    assert len(handled) == 1
    await agent.close()


# --- hubctl agent / hubctl watch ----------------------------------------------------------------


def _hubctl(server: HubProcess, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args],
        cwd=server.workdir, env={**server.env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _read_until(process: subprocess.Popen[str], needle: str, timeout: float = 20) -> list[str]:
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"no {needle!r} in {lines}; stderr: {process.stderr.read() if process.poll() is not None and process.stderr else ''}")


async def test_hubctl_agent_and_watch(hub: HubProcess) -> None:
    agent = _hubctl(hub, "agent", "--url", hub.url, "--sub", "cli-agent", "--events-every", "0.3")
    watch = _hubctl(hub, "watch", "--url", hub.url, "--sub", "cli-watcher", "--agents", "cli-agent")
    try:
        lines = await asyncio.to_thread(_read_until, watch, "event cli-agent")
        assert any("presence cli-agent online" in line for line in lines), lines
        async with connect_dashboard(hub.url, Tokens("cli-op", ["dashboard", "operator"])) as dash:
            result: Any = await dash.send_command("cli-agent", {"op": "hello"})
        assert result["echo"] == {"op": "hello"} and "host" in result and "at" in result
        agent.terminate()
        assert await asyncio.to_thread(agent.wait, 10) == 0
        await asyncio.to_thread(_read_until, watch, "presence cli-agent offline")
    finally:
        for process in (agent, watch):
            if process.poll() is None:
                process.terminate()
            await asyncio.to_thread(process.wait, 10)
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
