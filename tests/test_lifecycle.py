"""The session lifecycle through a real server: expiry, in-band refresh, message hygiene, drain."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.conftest import make_token
from tests.support.server import HubProcess

StartHub = Callable[..., HubProcess]


async def _open(server: HubProcess, token: str, path: str = "/ws/agent", **kw: Any) -> ClientConnection:
    ws = await websockets.connect(
        f"{server.url}{path}", additional_headers={"Authorization": f"Bearer {token}"}, **kw
    )
    welcome = json.loads(await ws.recv())
    assert welcome["type"] == "welcome", welcome
    return ws


async def _recv(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(ws.recv(), timeout)))


async def _closed(ws: ClientConnection, timeout: float = 5.0) -> tuple[int, str]:
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    assert info.value.rcvd is not None, "the server sent no close frame"
    return info.value.rcvd.code, info.value.rcvd.reason


@pytest.fixture(scope="module")
def fast_hub(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.conftest import BASE_ENV

    server = HubProcess(
        {**BASE_ENV, "HUB_REFRESH_WARNING_SECONDS": "2", "HUB_MESSAGE_RATE_PER_SECOND": "20",
         "HUB_MESSAGE_BURST": "10", "HUB_MAX_MESSAGE_BYTES": "4096"},
        tmp_path_factory.mktemp("fast"), name="fast",
    ).start()
    yield server
    server.stop()


async def test_expired_session_is_closed_4401_within_a_second(fast_hub: HubProcess) -> None:
    token = make_token("exp-1", ttl=3)
    exp = json.loads(__import__("base64").urlsafe_b64decode(token.split(".")[1] + "=="))["exp"]
    ws = await _open(fast_hub, token)
    warning = await _recv(ws)
    assert warning["type"] == "auth.expiring" and warning["expires_at"] == exp
    code, reason = await _closed(ws, timeout=6)
    assert (code, reason) == (4401, "token_expired")
    assert time.time() - exp < 1.0


async def test_expiring_is_sent_once_at_the_warning_time(fast_hub: HubProcess) -> None:
    ttl = 5
    ws = await _open(fast_hub, make_token("exp-2", ttl=ttl))
    warning = await _recv(ws)
    assert warning["type"] == "auth.expiring"
    assert 1.0 <= warning["seconds_left"] <= 2
    # Not before its time: measured from the token's own `exp`, which is whole seconds (a
    # clock taken after the handshake can be up to a second late against it).
    assert time.time() >= warning["expires_at"] - 2 - 0.05
    await ws.send('{"type":"ping"}')
    assert (await _recv(ws))["type"] == "pong"  # no second warning in between
    await ws.close()


async def test_scenario_6_refresh_keeps_the_connection_past_the_first_exp(fast_hub: HubProcess) -> None:
    ws = await _open(fast_hub, make_token("refresh-1", ttl=3))
    deadline = time.time() + 8
    refreshes = 0
    while time.time() < deadline:
        message = await _recv(ws, timeout=5)
        if message["type"] == "auth.expiring":
            await ws.send(json.dumps({"type": "auth.refresh", "id": refreshes,
                                      "token": make_token("refresh-1", ttl=3)}))
        elif message["type"] == "auth.refreshed":
            assert message["ref"] == refreshes
            refreshes += 1
    assert refreshes >= 3
    await ws.send('{"type":"ping"}')
    kinds = []
    while not kinds or kinds[-1] != "pong":
        kinds.append((await _recv(ws))["type"])
    assert set(kinds) <= {"auth.expiring", "auth.refreshed", "pong"}
    await ws.close()


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (lambda: "garbage", "token_malformed"),
        (lambda: make_token("refresh-bad", ttl=-5), "token_expired"),
        (lambda: make_token("refresh-bad")[:-4] + "AAAA", "token_invalid"),
    ],
)
async def test_failed_refresh_is_an_error_and_the_old_session_goes_on(
    fast_hub: HubProcess, bad: Callable[[], str], code: str
) -> None:
    ws = await _open(fast_hub, make_token("refresh-bad", ttl=60))
    await ws.send(json.dumps({"type": "auth.refresh", "id": "r", "token": bad()}))
    reply = await _recv(ws)
    assert (reply["type"], reply["error"], reply["ref"]) == ("error", code, "r")
    await ws.send('{"type":"ping"}')
    assert (await _recv(ws))["type"] == "pong"
    await ws.close()


async def test_three_failed_refreshes_close_4401(fast_hub: HubProcess) -> None:
    ws = await _open(fast_hub, make_token("refresh-3", ttl=60))
    for _ in range(2):
        await ws.send(json.dumps({"type": "auth.refresh", "token": "x.y.z"}))
        assert (await _recv(ws))["type"] == "error"
    await ws.send(json.dumps({"type": "auth.refresh", "token": "x.y.z"}))
    assert await _closed(ws) == (4401, "token_invalid")


async def test_refresh_for_another_sub_closes_4403(fast_hub: HubProcess) -> None:
    ws = await _open(fast_hub, make_token("refresh-who", ttl=60))
    await ws.send(json.dumps({"type": "auth.refresh", "token": make_token("someone-else", ttl=60)}))
    assert await _closed(ws) == (4403, "identity_changed")


async def test_refresh_whose_roles_no_longer_fit_closes_4403(fast_hub: HubProcess) -> None:
    ws = await _open(fast_hub, make_token("refresh-role", ttl=60))
    await ws.send(json.dumps({"type": "auth.refresh",
                              "token": make_token("refresh-role", ["dashboard"], ttl=60)}))
    assert await _closed(ws) == (4403, "role_forbidden")


async def test_message_flood_gets_errors_then_4429(fast_hub: HubProcess) -> None:
    ws = await _open(fast_hub, make_token("flood-1", ttl=60))
    for _ in range(60):
        await ws.send('{"type":"ping"}')
    kinds: list[str] = []
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            message = await _recv(ws)
            kinds.append(message.get("error", message["type"]))
    assert "pong" in kinds and "rate_limited" in kinds
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4429, "rate_limited")


async def test_oversized_frame_closes_1009(fast_hub: HubProcess) -> None:
    ws = await _open(fast_hub, make_token("big-1", ttl=60))
    await ws.send(json.dumps({"type": "ping", "id": "x" * 5000}))
    code, _ = await _closed(ws)
    assert code == 1009


async def test_slow_reader_is_closed_without_stalling_others(start_hub: StartHub) -> None:
    server = start_hub({"HUB_SEND_QUEUE_SIZE": "4", "HUB_MESSAGE_RATE_PER_SECOND": "100000",
                        "HUB_MESSAGE_BURST": "100000"})
    # A dashboard that stops reading (max_queue=1: its client stops reading the socket), a
    # dashboard that keeps reading, and an agent whose large events both are subscribed to.
    slow = await _open(server, make_token("slow-1", ["dashboard"], ttl=600), "/ws/dashboard", max_queue=1)
    other = await _open(server, make_token("fast-1", ["dashboard"], ttl=600), "/ws/dashboard")
    source = await _open(server, make_token("slow-src", ttl=600))
    for ws in (slow, other):
        await ws.send(json.dumps({"type": "subscribe", "agents": ["slow-src"]}))
    event = json.dumps({"type": "event", "payload": "x" * 50_000})
    # Enough to fill the kernel's buffers on loopback (megabytes): then the server's writes to the
    # slow reader stop making progress, and its queue passes the bound. Each round stays under
    # the queue's memory bound (4 x 64 KiB), so the reading dashboard is never closed.
    for _ in range(100):
        await asyncio.gather(*(source.send(event) for _ in range(4)))
        await other.send('{"type":"ping","id":"ok"}')
        while (message := await _recv(other))["type"] != "pong":
            assert message["type"] in ("event", "subscribed", "presence"), message
        assert message["ref"] == "ok"
    code, reason = await _closed(slow, timeout=10)
    assert (code, reason) == (4408, "slow_consumer")
    await other.close()
    await source.close()


async def test_sigterm_drains_with_1012_service_restart(start_hub: StartHub) -> None:
    server = start_hub()
    sockets = [await _open(server, make_token(f"drain-{i}", ttl=60)) for i in range(3)]
    server.stop()
    for ws in sockets:
        assert await _closed(ws) == (1012, "service_restart")
    # uvicorn re-raises the signal it handled once it has shut down cleanly.
    assert server.process is not None and server.process.returncode in (0, -15)
    assert '"hub.stopped"' in server.log_text()
