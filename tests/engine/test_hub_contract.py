"""The hub part of the engine contract (connection info, presence, routing), on both engines."""

from __future__ import annotations

import asyncio

import pytest

from app.engine.base import Admitted, ConnectionInfo, Engine

from .conftest import Advance, Routed, drain_until

LIMITS = {"rate_limit": 100, "max_connections": 5, "lease_seconds": 30}
AWKWARD = ["", "*", "{x}", "a}{:b", "t:*", "ünï"]


def info(
    sub: str, conn_id: str, *, at: float = 1.0, endpoint: str = "/ws/dashboard"
) -> ConnectionInfo:
    return ConnectionInfo(conn_id, sub, endpoint, "192.0.2.1", "w1", at)


# -- connection info ---------------------------------------------------------------------------


async def test_info_is_listed_with_its_slot_and_released_with_it(engine: Engine) -> None:
    a0, a1, b0 = info("alice", "c0", at=1), info("alice", "c1", at=2), info("bob", "c0", at=3)
    for row in (a0, a1, b0):
        assert await engine.admit_user(row.sub, row.conn_id, **LIMITS, info=row) == Admitted()
    # A slot taken without info holds its place but is not listed.
    assert await engine.admit_user("carol", "c0", **LIMITS) == Admitted()

    assert await engine.list_connections("alice") == [a0, a1]
    assert await engine.list_connections("nobody") == []
    assert await engine.list_connections() == [a0, a1, b0]

    await engine.release("alice", "c0")
    assert await engine.list_connections("alice") == [a1]
    assert await engine.count_connections("alice") == 1
    await engine.release("alice", "c0")  # idempotent
    await engine.release("bob", "c0")
    assert await engine.list_connections() == [a1]


async def test_readmission_keeps_or_replaces_the_info(engine: Engine) -> None:
    first = info("alice", "c0", endpoint="/ws/agent")
    assert await engine.admit_user("alice", "c0", **LIMITS, info=first) == Admitted()
    assert await engine.admit_user("alice", "c0", **LIMITS) == Admitted()
    assert await engine.list_connections("alice") == [first]
    second = info("alice", "c0", endpoint="/ws/dashboard")
    assert await engine.admit_user("alice", "c0", **LIMITS, info=second) == Admitted()
    assert await engine.list_connections("alice") == [second]


async def test_info_of_another_slot_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="match"):
        await engine.admit_user("alice", "c0", **LIMITS, info=info("bob", "c0"))
    with pytest.raises(ValueError, match="match"):
        await engine.admit_user("alice", "c0", **LIMITS, info=info("alice", "c9"))
    assert await engine.count_connections("alice") == 0


async def test_info_expires_with_its_lease_unless_renewed(engine: Engine, advance: Advance) -> None:
    limits = {**LIMITS, "lease_seconds": 2}
    kept, dead = info("alice", "kept", at=1), info("alice", "dead", at=2)
    for row in (kept, dead):
        assert await engine.admit_user("alice", row.conn_id, **limits, info=row) == Admitted()
    await advance(1.2)
    await engine.renew([kept], lease_seconds=2, max_connections=10)
    await advance(1.2)
    # The worker of "dead" stopped renewing (killed): its connection is no longer listed.
    assert await engine.list_connections("alice") == [kept]
    assert await engine.list_connections() == [kept]
    await advance(1.2)
    assert await engine.list_connections() == []


async def test_renew_brings_an_expired_connection_back_with_its_info(
    engine: Engine, advance: Advance
) -> None:
    limits = {**LIMITS, "lease_seconds": 1}
    a0, b0 = info("alice", "c0", at=1), info("bob", "c0", at=2)
    for row in (a0, b0):
        assert await engine.admit_user(row.sub, row.conn_id, **limits, info=row) == Admitted()
    await advance(1.1)
    assert await engine.list_connections() == []
    await engine.renew([a0, b0], lease_seconds=30, max_connections=10)
    assert await engine.list_connections("alice") == [a0]
    assert await engine.list_connections() == [a0, b0]
    # A slot admitted without info gets the renewed one and is listed from then on.
    assert await engine.admit_user("carol", "c0", **LIMITS) == Admitted()
    c0 = info("carol", "c0", at=3)
    await engine.renew([c0], lease_seconds=30, max_connections=10)
    assert await engine.list_connections() == [a0, b0, c0]
    # A stored info is kept: a renewal does not overwrite what a re-admission set.
    await engine.renew([info("alice", "c0", at=9, endpoint="/ws/agent")], lease_seconds=30, max_connections=10)
    assert await engine.list_connections("alice") == [a0]


# -- presence ----------------------------------------------------------------------------------


async def test_online_and_offline_report_transitions(engine: Engine) -> None:
    assert await engine.agent_online("acme", "a1", "c1", lease_seconds=30) is True
    assert await engine.agent_online("acme", "a1", "c2", lease_seconds=30) is False
    assert await engine.agent_online("acme", "a1", "c1", lease_seconds=30) is False
    assert await engine.online_agents("acme") == {"a1"}
    assert await engine.agent_offline("acme", "a1", "c1") is False
    assert await engine.agent_offline("acme", "a1", "c2") is True
    # Idempotent: still no connection left, and no error.
    assert await engine.agent_offline("acme", "a1", "c2") is True
    assert await engine.agent_offline("acme", "never", "c0") is True
    assert await engine.online_agents("acme") == set()
    assert await engine.locate_agent("acme", "a1") is None
    assert await engine.agent_online("acme", "a1", "c3", lease_seconds=30) is True


async def test_the_most_recent_connection_is_located(engine: Engine) -> None:
    assert await engine.locate_agent("acme", "a1") is None
    await engine.agent_online("acme", "a1", "c1", lease_seconds=30)
    assert await engine.locate_agent("acme", "a1") == (engine.worker_id, "c1")
    await engine.agent_online("acme", "a1", "c2", lease_seconds=30)
    await engine.agent_online("acme", "a1", "c3", lease_seconds=30)
    assert await engine.locate_agent("acme", "a1") == (engine.worker_id, "c3")
    # Re-registering an older live connection does not make it the newest.
    await engine.agent_online("acme", "a1", "c1", lease_seconds=30)
    assert await engine.locate_agent("acme", "a1") == (engine.worker_id, "c3")
    await engine.agent_offline("acme", "a1", "c3")
    assert await engine.locate_agent("acme", "a1") == (engine.worker_id, "c2")
    await engine.agent_offline("acme", "a1", "c2")
    assert await engine.locate_agent("acme", "a1") == (engine.worker_id, "c1")


async def test_presence_expires_without_renewal(engine: Engine, advance: Advance) -> None:
    await engine.agent_online("acme", "kept", "c1", lease_seconds=2)
    await engine.agent_online("acme", "dead", "c2", lease_seconds=2)
    await engine.agent_online("acme", "both", "old", lease_seconds=2)
    await engine.agent_online("acme", "both", "new", lease_seconds=2)
    await advance(1.2)
    await engine.renew_agents(
        [("acme", "kept", "c1"), ("acme", "both", "old"), ("other", "x", "c9")], lease_seconds=2
    )
    await advance(1.2)
    assert await engine.online_agents("acme") == {"kept", "both"}
    assert await engine.locate_agent("acme", "dead") is None
    # The newest connection of "both" expired: the older, renewed one now gets its commands.
    assert await engine.locate_agent("acme", "both") == (engine.worker_id, "old")
    await engine.renew_agents([], lease_seconds=2)
    await advance(1.2)
    # No renewal came for any of them (a killed worker): all are offline.
    assert await engine.online_agents("acme") == set()
    assert await engine.locate_agent("acme", "both") is None


async def test_online_agents_among_looks_up_only_those(engine: Engine, advance: Advance) -> None:
    await engine.agent_online("acme", "short", "c1", lease_seconds=1)
    for agent in ("a1", "a2", "gone"):
        await engine.agent_online("acme", agent, f"c-{agent}", lease_seconds=30)
    await engine.agent_offline("acme", "gone", "c-gone")
    await engine.agent_online("other", "a9", "c9", lease_seconds=30)
    assert await engine.online_agents("acme", {"a1", "gone", "never", "a9", "short"}) == {"a1", "short"}
    await advance(1.1)
    # A lapsed lease is offline whether asked for by name or not.
    assert await engine.online_agents("acme", ["a2", "short"]) == {"a2"}
    assert await engine.online_agents("acme", ()) == set()
    assert await engine.online_agents("other", {"a1", "a9"}) == {"a9"}
    assert await engine.online_agents("acme") == {"a1", "a2"}


async def test_a_renewal_arriving_after_offline_does_not_bring_the_agent_back(
    engine: Engine, advance: Advance
) -> None:
    assert await engine.agent_online("acme", "a1", "c1", lease_seconds=1) is True
    assert await engine.agent_online("acme", "a2", "c2", lease_seconds=1) is True
    # The worker listed both for a renewal; c1 closed and its offline reached the store first.
    assert await engine.agent_offline("acme", "a1", "c1") is True
    await engine.renew_agents([("acme", "a1", "c1"), ("acme", "a2", "c2")], lease_seconds=30)
    assert await engine.online_agents("acme") == {"a2"}
    assert await engine.locate_agent("acme", "a1") is None
    await advance(1.1)
    await engine.renew_agents([("acme", "a1", "c1")], lease_seconds=30)
    assert await engine.online_agents("acme") == {"a2"}
    # Online again under the same conn_id (a session upgraded in place): renewed as any other.
    assert await engine.agent_online("acme", "a1", "c1", lease_seconds=1) is True
    await engine.renew_agents([("acme", "a1", "c1")], lease_seconds=30)
    await advance(1.1)
    assert await engine.locate_agent("acme", "a1") == (engine.worker_id, "c1")
    # The mark is per tenant.
    await engine.renew_agents([("other", "a1", "c1")], lease_seconds=30)
    assert await engine.online_agents("other") == {"a1"}


async def test_renew_agents_revives_an_expired_entry(engine: Engine, advance: Advance) -> None:
    assert await engine.agent_online("acme", "a1", "c1", lease_seconds=1) is True
    await advance(1.1)
    assert await engine.online_agents("acme") == set()
    assert await engine.locate_agent("acme", "a1") is None
    # The connection is still open (its renewals failed for longer than the lease).
    await engine.renew_agents([("acme", "a1", "c1"), ("acme", "a2", "c2")], lease_seconds=30)
    assert await engine.online_agents("acme") == {"a1", "a2"}
    assert await engine.locate_agent("acme", "a1") == (engine.worker_id, "c1")
    assert await engine.locate_agent("acme", "a2") == (engine.worker_id, "c2")
    # A live entry again: re-registering it is no transition.
    assert await engine.agent_online("acme", "a1", "c1", lease_seconds=30) is False
    assert await engine.agent_offline("acme", "a1", "c1") is True


async def test_a_revived_entry_does_not_take_over_from_a_newer_connection(
    engine: Engine, advance: Advance
) -> None:
    await engine.agent_online("acme", "a1", "old", lease_seconds=1)
    await advance(1.1)
    # "old" expired (and is purged by this call); a new connection of the agent arrives.
    assert await engine.agent_online("acme", "a1", "new", lease_seconds=30) is True
    await engine.renew_agents([("acme", "a1", "old")], lease_seconds=30)
    assert await engine.locate_agent("acme", "a1") == (engine.worker_id, "new")
    # The revived entry is live: it takes over once it is the agent's only connection.
    assert await engine.agent_offline("acme", "a1", "new") is False
    assert await engine.locate_agent("acme", "a1") == (engine.worker_id, "old")


async def test_a_revived_entry_keeps_its_place_while_its_expired_entry_is_known(
    engine: Engine, advance: Advance
) -> None:
    await engine.agent_online("acme", "a1", "first", lease_seconds=30)
    await engine.agent_online("acme", "a1", "second", lease_seconds=1)
    await advance(1.1)
    # Nothing purged the expired "second" yet: revived, it is still the newer connection.
    await engine.renew_agents([("acme", "a1", "second")], lease_seconds=30)
    assert await engine.locate_agent("acme", "a1") == (engine.worker_id, "second")
    assert await engine.online_agents("acme") == {"a1"}


async def test_online_agents_are_per_tenant(engine: Engine) -> None:
    for n, tenant in enumerate(AWKWARD):
        for agent in AWKWARD:
            await engine.agent_online(tenant, f"{agent}@{n}", f"c{n}", lease_seconds=30)
    for n, tenant in enumerate(AWKWARD):
        # "" is a tenant of its own; no id aliases another tenant's or agent's entry.
        assert await engine.online_agents(tenant) == {f"{agent}@{n}" for agent in AWKWARD}
        assert await engine.locate_agent(tenant, f"*@{n}") == (engine.worker_id, f"c{n}")
    assert await engine.online_agents("nobody") == set()
    assert await engine.agent_online("x:y", "z", "c0", lease_seconds=30) is True
    assert await engine.agent_online("x", "y:z", "c0", lease_seconds=30) is True
    assert await engine.online_agents("x") == {"y:z"}


# -- routing -----------------------------------------------------------------------------------


async def test_send_to_worker_reaches_this_worker_only(routed: Routed) -> None:
    engine, inbox = routed
    await engine.send_to_worker("w2", "not for me")
    await engine.send_to_worker(engine.worker_id, "hello {w1}")
    assert await drain_until(inbox, "hello {w1}") == []


async def test_routed_messages_keep_their_order(routed: Routed) -> None:
    engine, inbox = routed
    await engine.watch("acme", "*")
    for n in range(30):
        if n % 2:
            await engine.send_to_worker(engine.worker_id, f"m{n}")
        else:
            await engine.publish_agent("acme", f"a{n}", f"m{n}")
    await engine.send_to_worker(engine.worker_id, "end")
    assert await drain_until(inbox, "end") == [f"m{n}" for n in range(30)]


async def test_publish_agent_reaches_watchers_once(routed: Routed) -> None:
    engine, inbox = routed
    await engine.publish_agent("acme", "a1", "unwatched")
    await engine.watch("acme", "a1")
    await engine.publish_agent("acme", "a1", "a1#1")
    await engine.publish_agent("acme", "a2", "a2 is not watched")
    await engine.publish_agent("other", "a1", "another tenant")
    await engine.publish_agent("", "a1", "no tenant")
    await engine.send_to_worker(engine.worker_id, "end1")
    assert await drain_until(inbox, "end1") == ["a1#1"]

    # Watching the agent and all of its tenant: still once per message.
    await engine.watch("acme", "*")
    await engine.publish_agent("acme", "a1", "a1#2")
    await engine.publish_agent("acme", "a2", "a2#1")
    await engine.publish_agent("other", "a2", "another tenant")
    await engine.send_to_worker(engine.worker_id, "end2")
    assert await drain_until(inbox, "end2") == ["a1#2", "a2#1"]

    await engine.unwatch("acme", "*")
    await engine.publish_agent("acme", "a1", "a1#3")
    await engine.publish_agent("acme", "a2", "a2 again unwatched")
    await engine.send_to_worker(engine.worker_id, "end3")
    assert await drain_until(inbox, "end3") == ["a1#3"]


async def test_watches_are_counted(routed: Routed) -> None:
    engine, inbox = routed
    await engine.watch("", "a1")
    await engine.watch("", "a1")
    await engine.unwatch("", "a1")
    await engine.publish_agent("", "a1", "still watched")
    await engine.send_to_worker(engine.worker_id, "end1")
    assert await drain_until(inbox, "end1") == ["still watched"]
    await engine.unwatch("", "a1")
    await engine.unwatch("", "a1")  # one too many: harmless
    await engine.publish_agent("", "a1", "no longer watched")
    await engine.send_to_worker(engine.worker_id, "end2")
    assert await drain_until(inbox, "end2") == []
    await engine.watch("", "a1")
    await engine.publish_agent("", "a1", "watched again")
    await engine.send_to_worker(engine.worker_id, "end3")
    assert await drain_until(inbox, "end3") == ["watched again"]


async def test_awkward_ids_route_to_their_own_watchers(routed: Routed) -> None:
    engine, inbox = routed
    await engine.watch("x:y", "z")
    await engine.watch("{t}", "a}{:*")
    await engine.publish_agent("x", "y:z", "aliased tenant")
    await engine.publish_agent("x:y", "z:", "aliased agent")
    await engine.publish_agent("{t}", "a}{:", "prefix of an id")
    await engine.publish_agent("x:y", "z", "xy/z")
    await engine.publish_agent("{t}", "a}{:*", "t/a")
    await engine.send_to_worker(engine.worker_id, "end")
    assert await drain_until(inbox, "end") == ["xy/z", "t/a"]


async def test_a_failing_or_slow_handler_does_not_stop_delivery(routed: Routed) -> None:
    engine, inbox = routed
    gate = asyncio.Event()

    async def handler(message: str) -> None:
        if message == "boom":
            raise RuntimeError("handler bug")
        if message == "slow":
            await gate.wait()
        inbox.put_nowait(message)

    engine.on_message(handler)
    await engine.send_to_worker(engine.worker_id, "boom")
    await engine.send_to_worker(engine.worker_id, "slow")
    await engine.send_to_worker(engine.worker_id, "after")
    await asyncio.sleep(0.2)
    # Order is kept: "after" waits behind the slow call, it is not lost.
    assert inbox.empty()
    gate.set()
    assert await drain_until(inbox, "after") == ["slow"]
