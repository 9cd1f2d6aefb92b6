"""Connection limits, attempt rate limits and IP bans across processes, through real servers on
one real Redis (and the embedded engine where one process suffices)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest
import redis
import websockets
from websockets.exceptions import InvalidStatus

from app.engine._redis_client import tag
from tests.conftest import make_token, redis_env
from tests.support.client import attempt
from tests.support.peer import Peer
from tests.support.redis_server import RedisServer
from tests.support.server import HubProcess

StartHub = Callable[..., HubProcess]
pytestmark = pytest.mark.redis


async def _open(server: HubProcess, sub: str) -> Peer:
    return await Peer.connect(f"{server.url}/ws/agent", make_token(sub, ["agent"]))


async def test_scenario_5_split_over_two_processes(start_hub: StartHub, redis_url: str) -> None:
    env = redis_env(redis_url)
    a, b = start_hub(env, name="a"), start_hub(env, name="b")
    peers = [await _open(a, "limit-user") for _ in range(5)] + [await _open(b, "limit-user") for _ in range(5)]
    for server in (a, b):
        outcome = await attempt(f"{server.url}/ws/agent", token=make_token("limit-user"))
        assert (outcome.status, outcome.code) == (429, "connection_limit")
        sock = await attempt(f"{server.url}/ws/agent", token=make_token("limit-user"), transport="subprotocol")
        assert (sock.close_code, sock.close_reason) == (4429, "connection_limit")
    # The refused attempts left the open sessions alone.
    for peer in peers:
        await peer.send(type="ping", id="still")
        await peer.expect("pong", ref="still")
    # Another user is unaffected, and a freed slot can be taken again.
    assert (await attempt(f"{a.url}/ws/agent", token=make_token("other-user"))).accepted
    await peers.pop().close()
    # The slot is free once b has seen the close and released it in Redis: wait for that (not
    # by retrying, which would spend the user's connection attempts), then take it on a.
    slots = f"{env['HUB_REDIS_PREFIX']}:{{u:{tag('limit-user')}}}:slots"
    deadline = time.monotonic() + 10
    with redis.Redis.from_url(redis_url) as client:
        while client.zcard(slots) > len(peers):
            assert time.monotonic() < deadline, "b did not release the closed connection's slot"
            await asyncio.sleep(0.05)
    peers.append(await _open(a, "limit-user"))
    for peer in peers:
        await peer.close()


async def test_fifty_simultaneous_attempts_yield_exactly_ten(start_hub: StartHub, redis_url: str) -> None:
    env = redis_env(redis_url)
    servers = [start_hub(env, name="a"), start_hub(env, name="b")]
    token = make_token("racer")
    done = asyncio.Event()

    async def hold(url: str) -> str:
        try:
            async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"},
                                          open_timeout=10) as ws:
                assert json.loads(await ws.recv())["type"] == "welcome"
                await done.wait()  # keep the slot until every attempt has been decided
                return "accepted"
        except InvalidStatus as exc:
            return json.loads(exc.response.body)["error"]

    tasks = [asyncio.create_task(hold(f"{servers[i % 2].url}/ws/agent")) for i in range(50)]
    while sum(t.done() for t in tasks) < 40:
        await asyncio.sleep(0.05)
        assert not any(t.done() and t.result() == "accepted" for t in tasks)
    await asyncio.sleep(0.5)
    done.set()
    results = await asyncio.gather(*tasks)
    assert results.count("accepted") == 10
    assert results.count("connection_limit") == 40


async def test_killed_worker_gives_its_slots_back_within_the_lease(start_hub: StartHub, redis_url: str) -> None:
    env = redis_env(redis_url, HUB_CONNECTION_LEASE_SECONDS="3", HUB_MAX_CONNECTIONS_PER_USER="2")
    a, b = start_hub(env, name="a"), start_hub(env, name="b")
    await _open(b, "killed-user")
    await _open(b, "killed-user")
    assert (await attempt(f"{a.url}/ws/agent", token=make_token("killed-user"))).code == "connection_limit"
    b.kill()
    killed_at = time.monotonic()
    while True:
        outcome = await attempt(f"{a.url}/ws/agent", token=make_token("killed-user"))
        if outcome.accepted:
            break
        assert outcome.code == "connection_limit"
        assert time.monotonic() - killed_at < 3 + 1.5, "slots not back within the lease"
        await asyncio.sleep(0.2)


async def test_a_lapsed_slot_is_not_revived_past_the_limit(start_hub: StartHub, redis_url: str) -> None:
    """Slots that lapse while their connections stay open (Redis lost them, or a partition outlived
    the lease) are taken again only within the limit: whichever of the renewal and the new
    handshakes comes first, the user ends with two open connections, the others closed 4429."""
    env = redis_env(redis_url, HUB_CONNECTION_LEASE_SECONDS="3", HUB_MAX_CONNECTIONS_PER_USER="2")
    a, b = start_hub(env, name="a"), start_hub(env, name="b")
    on_a = [await _open(a, "lapse-user") for _ in range(2)]
    client = redis.Redis.from_url(redis_url)
    user_keys = f"{env['HUB_REDIS_PREFIX']}:{{u:{tag('lapse-user')}}}"
    # Both keys gone at once: Redis lost them, or renewals could not get through for a lease.
    assert client.delete(f"{user_keys}:slots", f"{user_keys}:info") == 2
    outcomes = [await attempt_hold(b, "lapse-user") for _ in range(2)]
    on_b = [peer for peer in outcomes if peer is not None]
    # At a's next renewal (a third of the lease) the lapsed ones it lost are closed; wait for
    # its log line (written before the close), then exactly two stay open, whichever they are.
    deadline = time.monotonic() + 10
    while a.log_text().count('"ws.closed_over_limit"') < len(on_b):
        assert time.monotonic() < deadline, "the lapsed connections were not closed"
        await asyncio.sleep(0.1)
    alive, closed = [], []
    for peer in on_a + on_b:
        try:
            await peer.send(type="ping", id="alive")
            await peer.expect("pong", timeout=2, ref="alive")
            alive.append(peer)
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None and (exc.rcvd.code, exc.rcvd.reason) == (4429, "connection_limit")
            closed.append(peer)
    assert len(alive) == 2, f"{len(alive)} open connections for a limit of 2"
    assert len(closed) == len(on_b), "only lapsed connections are closed, never newly admitted ones"
    assert client.zcard(f"{user_keys}:slots") == 2
    if closed:
        assert "ws.closed_over_limit" in a.log_text()
    for peer in alive:
        await peer.close()


async def attempt_hold(server: HubProcess, sub: str) -> Peer | None:
    """A connection held open, or None if the handshake was refused ``connection_limit``."""
    try:
        return await _open(server, sub)
    except InvalidStatus as exc:
        assert json.loads(exc.response.body)["error"] == "connection_limit"
        return None


async def test_user_rate_limit_with_retry_after(start_hub: StartHub, redis_url: str) -> None:
    server = start_hub(redis_env(redis_url, HUB_CONNECT_RATE_PER_USER="3"))
    open_peer = await _open(server, "rate-user")
    for _ in range(2):
        assert (await attempt(f"{server.url}/ws/agent", token=make_token("rate-user"))).accepted
    refused = await attempt(f"{server.url}/ws/agent", token=make_token("rate-user"))
    assert (refused.status, refused.code) == (429, "rate_limited")
    assert 55 <= int(refused.headers["retry-after"]) <= 60
    sock = await attempt(f"{server.url}/ws/agent", token=make_token("rate-user"), transport="subprotocol")
    assert (sock.close_code, sock.close_reason) == (4429, "rate_limited")
    # The session that was open goes on; another user is not limited.
    await open_peer.send(type="ping", id="p")
    await open_peer.expect("pong", ref="p")
    assert (await attempt(f"{server.url}/ws/agent", token=make_token("rate-other"))).accepted


async def test_ip_rate_limit_is_always_http(start_hub: StartHub, redis_url: str) -> None:
    server = start_hub(redis_env(redis_url, HUB_CONNECT_RATE_PER_IP="4"))
    for i in range(4):
        assert (await attempt(f"{server.url}/ws/agent", token=make_token(f"ip-{i}"))).accepted
    for transport in ("header", "subprotocol"):
        refused = await attempt(f"{server.url}/ws/agent", token=make_token("ip-x"), transport=transport)
        assert (refused.status, refused.code) == (429, "rate_limited")
        assert 1 <= int(refused.headers["retry-after"]) <= 60
    # Another address is not limited.
    other = await attempt(f"{server.url}/ws/agent", token=make_token("ip-y"), local_addr=("127.0.0.3", 0))
    assert other.accepted


async def test_repeated_failures_ban_the_address(start_hub: StartHub, redis_url: str) -> None:
    server = start_hub(redis_env(redis_url, HUB_AUTH_FAILURES_BEFORE_BAN="3",
                                 HUB_AUTH_FAILURE_BAN_SECONDS="60"))
    here = ("127.0.0.2", 0)
    for _ in range(3):
        bad = await attempt(f"{server.url}/ws/agent", token="bad.token.here", local_addr=here)
        assert bad.code in {"token_malformed", "token_invalid"}
    banned = await attempt(f"{server.url}/ws/agent", token=make_token("good"), local_addr=here,
                           subprotocols=["hub.v1"])
    assert (banned.status, banned.code) == (403, "ip_banned")
    assert (await attempt(f"{server.url}/ws/agent", token=make_token("good"))).accepted


async def test_banned_address_and_spoofed_forwarded_for(start_hub: StartHub) -> None:
    server = start_hub({"HUB_BANNED_CIDRS": "127.0.0.2/32,2001:db8::/32"})
    banned = ("127.0.0.2", 0)
    outcome = await attempt(f"{server.url}/ws/agent", token=make_token("b"), local_addr=banned,
                            headers={"X-Forwarded-For": "198.51.100.7"})
    assert (outcome.status, outcome.code) == (403, "ip_banned")
    # From an untrusted peer, X-Forwarded-For cannot get an innocent address banned either.
    ok = await attempt(f"{server.url}/ws/agent", token=make_token("c"), headers={"X-Forwarded-For": "127.0.0.2"})
    assert ok.accepted


async def test_forwarded_for_is_believed_only_from_trusted_proxies(start_hub: StartHub) -> None:
    server = start_hub({"HUB_TRUSTED_PROXIES": "127.0.0.1", "HUB_BANNED_CIDRS": "198.51.100.0/24"})
    via_proxy = await attempt(f"{server.url}/ws/agent", token=make_token("p1"),
                              headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.7"})
    assert (via_proxy.status, via_proxy.code) == (403, "ip_banned")
    # Left of the first untrusted hop is the client's own writing: not believed.
    spoof = await attempt(f"{server.url}/ws/agent", token=make_token("p2"),
                          headers={"X-Forwarded-For": "198.51.100.7, 203.0.113.9"})
    assert spoof.accepted
    untrusted = await attempt(f"{server.url}/ws/agent", token=make_token("p3"), local_addr=("127.0.0.2", 0),
                              headers={"X-Forwarded-For": "198.51.100.7"})
    assert untrusted.accepted


async def test_a_connection_whose_lease_cannot_be_confirmed_is_closed_before_it_ends(
    start_hub: StartHub,
) -> None:
    """Redis out of reach for longer than a lease: the worker can no longer vouch for its
    connections' slots, which lapse there and may go to new connections on other workers; it
    closes them 1013 ``unavailable`` first, so the limit holds while both could be open."""
    redis = RedisServer()
    redis.start()
    try:
        server = start_hub(redis_env(redis.url, HUB_CONNECTION_LEASE_SECONDS="3"))
        peer = await _open(server, "fenced-user")
        redis.stop()
        await peer.closed(1013, "unavailable", timeout=10)
        closed = [json.loads(line) for line in server.log_text().splitlines()
                  if '"ws.closed_lease_unconfirmed"' in line]
        assert [entry["sub"] for entry in closed] == ["fenced-user"]
    finally:
        redis.close()


async def test_redis_outage_fails_closed_and_recovers(start_hub: StartHub, tmp_path: object) -> None:
    redis = RedisServer()
    redis.start()
    try:
        server = start_hub(redis_env(redis.url, HUB_MAX_CONNECTIONS_PER_USER="3"))
        peers = [await _open(server, "outage-user") for _ in range(2)]
        redis.stop()
        refused = await attempt(f"{server.url}/ws/agent", token=make_token("outage-user"))
        assert (refused.status, refused.code) == (503, "unavailable")
        assert int(refused.headers["retry-after"]) >= 1
        sock = await attempt(f"{server.url}/ws/agent", token=make_token("outage-other"), transport="subprotocol")
        assert (sock.close_code, sock.close_reason) == (1013, "unavailable")
        for peer in peers:  # open connections keep working
            await peer.send(type="ping", id="up")
            await peer.expect("pong", ref="up")
        ready = await asyncio.to_thread(__import__("httpx").get, f"{server.http}/readyz")
        assert ready.status_code == 503 and json.loads(ready.text)["engine"] is False
        await peers.pop().close()  # closed during the outage: its slot expires with its lease
        redis.start()
        deadline = time.monotonic() + 10
        while True:
            outcome = await attempt(f"{server.url}/ws/agent", token=make_token("outage-user"))
            if outcome.accepted or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert outcome.accepted, outcome
    finally:
        redis.close()
