"""The Redis engine: limits, leases and control events shared by every worker and host.

Guarantees beyond :class:`app.engine.base.Engine`:

- Every multi-step operation is one Lua script, so it is atomic across workers
  (:mod:`app.engine.redis_scripts`); :meth:`check_ip` and :meth:`admit_user` are one round trip
  each once the scripts are loaded (``start`` loads them; NOSCRIPT reloads them).
- The clock is Redis ``TIME``: hosts with skewed clocks still agree on windows and leases.
- One hash slot per user, address, tenant and agent history (:mod:`app.engine.redis_keys`);
  every key has a TTL. :meth:`RedisEngine.renew` and :meth:`RedisEngine.renew_agents` write back
  what is gone (a lease that ran out during an outage, or data Redis lost), since the worker
  renews only connections that are open (see ``renew.lua`` and ``renew_agents.lua`` for the
  rules, notably "connected at"), but never what was released or went offline in the last
  ``RELEASED_SECONDS``: a renewal sent just before a connection closed can reach Redis after its
  release (another pooled connection), and must not bring a closed connection's slot back. A
  slot's :class:`ConnectionInfo` (JSON in ``info``) is written, released and expired with the
  slot, in the same script; a slot admitted without info is not listed.
- One primary, Sentinel or Redis Cluster, chosen by the URL's scheme
  (:func:`app.engine._redis_client.parse_redis_url`), with the same guarantees on each. On a
  cluster every script touches one slot (the hash tags above); pipelined batches are split by
  node, so every batched script is safe to run twice; listing everyone walks every primary.
- Unreachable or failing Redis (a dead primary included, until a replica is promoted) raises
  :class:`EngineUnavailable` within about a second (short socket timeouts, one immediate
  reconnect attempt, no backoff), so a handshake fails closed fast. The next call reconnects (to
  the new primary after a failover; scripts missing there are reloaded on NOSCRIPT): the engine
  recovers without a restart. :meth:`RedisEngine.ping` is true only when every primary answers.
- Control events and routed messages are delegated to a
  :class:`~app.engine.redis_pubsub.RedisMessaging` (see its module for channels and guarantees).
- Round trips: one per call (a script, a PUBLISH or a pipeline), except :meth:`RedisEngine.renew`
  (one pipeline per ``RENEW_USERS`` users), :meth:`RedisEngine.list_connections` of everyone
  (SCAN pages, then one pipeline per ``LIST_BATCH`` users) and :meth:`RedisEngine.watch` /
  :meth:`RedisEngine.unwatch` (see :mod:`app.engine.redis_pubsub`).
"""

from __future__ import annotations

import asyncio
import secrets
from collections import defaultdict
from collections.abc import Collection, Iterable
from typing import Any

import structlog

from app.engine._redis_client import (
    UNAVAILABLE,
    aclose,
    connect,
    parse_redis_url,
    ping_primaries,
    text,
)
from app.engine._shared import (
    RELEASED_SECONDS,
    DelegatedMessaging,
    check_info,
    matches,
    sort_connections,
)
from app.engine.base import (
    Admitted,
    ConnectionInfo,
    EngineUnavailable,
    History,
    HistoryPolicy,
    IpVerdict,
    Refused,
    UserVerdict,
)
from app.engine.memory_history import META_TTL_SECONDS
from app.engine.redis_infos import info_json, parse_infos
from app.engine.redis_keys import RedisKeys
from app.engine.redis_pubsub import RedisMessaging
from app.engine.redis_scripts import Call, Scripts
from app.errors import Code

log = structlog.get_logger("app.engine")

PING_TIMEOUT_SECONDS = 1.0
# list_connections() of everyone: SCAN page size, users per pipelined round trip, and a bound.
SCAN_COUNT = 500
LIST_BATCH = 500
LIST_MAX_USERS = 100_000
# renew_agents(): entries per script call (all calls go in one pipelined round trip).
RENEW_BATCH = 1_000
# renew(): users per pipelined round trip.
RENEW_USERS = 100

_VERDICTS = {1: Code.IP_BANNED, 2: Code.RATE_LIMITED, 3: Code.CONNECTION_LIMIT}


class RedisEngine(DelegatedMessaging):
    """The shared engine (see the module docstring for its guarantees)."""

    _messaging: RedisMessaging

    name = "redis"

    def __init__(self, url: str, *, prefix: str = "hub", worker_id: str) -> None:
        self.keys = RedisKeys(prefix)
        self.worker_id = worker_id
        self.prefix = prefix
        self.target = parse_redis_url(url)
        self._client = connect(self.target, f"{prefix}:{worker_id}")
        self._messaging = RedisMessaging(
            self._client, target=self.target, prefix=prefix, worker_id=worker_id
        )
        self._scripts = Scripts(self._client, self._messaging.batch)
        self.channel = self._messaging.channel
        self.worker_channel = self._messaging.worker_channel
        self._closed = False

    # -- channels -----------------------------------------------------------------------------

    def agent_channel(self, tenant: str, agent_id: str) -> str:
        """The channel of one agent's messages (``agent_id="*"``: the tenant-wide channel)."""
        return self._messaging.agent_channel(tenant, agent_id)

    def worker_channel_of(self, worker_id: str) -> str:
        return self._messaging.worker_channel_of(worker_id)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._closed or self._messaging.started:
            return
        try:
            # Preloaded so the first handshake is already one round trip (EVALSHA).
            await self._scripts.load()
        except UNAVAILABLE as exc:
            # Not fatal: the hub starts, refuses handshakes (fail closed) and recovers later;
            # redis-py loads the scripts on the first NOSCRIPT.
            log.warning("engine.start_degraded", error=type(exc).__name__)
        log.info("engine.redis_started", topology=self.target.describe())
        await self._messaging.start()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._messaging.close()
        await aclose(self._client)

    async def ping(self) -> bool:
        try:
            # Every primary: on a cluster one dead shard is enough to refuse some handshakes.
            return await asyncio.wait_for(ping_primaries(self._client), PING_TIMEOUT_SECONDS)
        except UNAVAILABLE:
            return False

    # -- limits -------------------------------------------------------------------------------

    async def _hot(self, name: str, keys: list[str], args: list[str | int]) -> Any:
        """A script of every handshake or event: on one primary or Sentinel, on the hot
        connection (:mod:`app.engine.redis_pipe`), so that the calls of a reconnect storm or a
        flood reach Redis in a few writes (a cluster pipeline may split: one call there). Raises
        EngineUnavailable."""
        if self.target.cluster:
            return await self._scripts.run(name, keys, args)
        return await self._scripts.run_batched(name, keys, args)

    @staticmethod
    def _verdict(reply: list[int]) -> Admitted | Refused:
        verdict, retry_after = int(reply[0]), int(reply[1])
        if verdict == 0:
            return Admitted()
        return Refused(_VERDICTS[verdict], retry_after)

    async def check_ip(self, ip: str, *, limit: int, window: int = 60) -> IpVerdict:
        keys = [self.keys.ip_key(ip, "ban"), self.keys.ip_key(ip, "rate")]
        reply = await self._hot("check_ip", keys, [limit, window, secrets.token_hex(8)])
        return self._verdict(reply)

    async def admit_user(
        self,
        sub: str,
        conn_id: str,
        *,
        tenant: str = "",
        rate_limit: int,
        max_connections: int,
        lease_seconds: int,
        window: int = 60,
        info: ConnectionInfo | None = None,
    ) -> UserVerdict:
        check_info(sub, conn_id, info, tenant)
        keys = self.keys.user_keys(sub, tenant, "slots", "rate", "info", "released")
        args: list[str | int] = [
            conn_id, rate_limit, max_connections, lease_seconds, window, secrets.token_hex(8),
            info_json(info) if info is not None else "",
        ]
        return self._verdict(await self._hot("admit_user", keys, args))

    async def release(self, sub: str, conn_id: str, *, tenant: str = "") -> None:
        keys = self.keys.user_keys(sub, tenant, "slots", "info", "released")
        try:
            await self._hot("release", keys, [conn_id, RELEASED_SECONDS])
        except EngineUnavailable as exc:
            # The lease runs out by itself within lease_seconds; nothing else to do.
            log.warning("engine.release_failed", error=type(exc).__name__)

    async def list_connections(
        self, sub: str | None = None, *, tenant: str | None = None
    ) -> list[ConnectionInfo]:
        if sub is not None and tenant is not None:
            keys = self.keys.user_keys(sub, tenant, "slots", "info")
            return sort_connections(parse_infos(await self._scripts.run("list_connections", keys, [])))
        rows: list[ConnectionInfo] = []
        try:
            info_keys = await self._scan_info_keys()
            for start in range(0, len(info_keys), LIST_BATCH):
                # One script per user (one hash slot each), a batch per pipelined round trip.
                calls: list[Call] = [
                    ([info_key[: -len("info")] + "slots", info_key], [])
                    for info_key in info_keys[start : start + LIST_BATCH]
                ]
                for reply in await self._scripts.run_many("list_connections", calls):
                    rows.extend(info for info in parse_infos(reply) if matches(info, sub, tenant))
        except UNAVAILABLE as exc:
            raise EngineUnavailable(
                f"redis list_connections: {type(exc).__name__}: {exc}"
            ) from exc
        return sort_connections(rows)

    async def _scan_info_keys(self) -> list[str]:
        pattern = self.keys.info_pattern()
        keys: set[str] = set()
        # scan_iter, not a loop on SCAN's cursor: a cluster answers one cursor per primary (a
        # loop waiting for cursor 0 never ends); scan_iter walks every primary to its end.
        async for key in self._client.scan_iter(match=pattern, count=SCAN_COUNT):
            keys.add(text(key))
            if len(keys) >= LIST_MAX_USERS:
                log.warning("engine.list_connections_truncated", users=len(keys))
                break
        return sorted(keys)

    async def renew(
        self, connections: Iterable[ConnectionInfo], *, lease_seconds: int, max_connections: int
    ) -> list[ConnectionInfo]:
        by_user: defaultdict[tuple[str, str], list[ConnectionInfo]] = defaultdict(list)
        for info in connections:
            by_user[(info.tenant, info.sub)].append(info)
        if not by_user:
            return []
        calls: list[Call] = []
        for (tenant, sub), infos in by_user.items():
            args: list[str | int] = [lease_seconds, max_connections]
            for info in infos:
                args += [info.conn_id, info_json(info)]
            calls.append((self.keys.user_keys(sub, tenant, "slots", "info", "released"), args))
        replies: list[Any] = []
        try:
            # One script per user (one hash slot each), RENEW_USERS per pipelined round trip: a
            # worker with thousands of connections does not hold its event loop (nor Redis) for
            # the whole renewal at once (a fan-out's p99 showed it).
            for start in range(0, len(calls), RENEW_USERS):
                replies += await self._scripts.run_many("renew", calls[start : start + RENEW_USERS])
        except UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis renew: {type(exc).__name__}: {exc}") from exc
        _log_revived("engine.leases_revived", replies)
        refused: list[ConnectionInfo] = []
        for infos, reply in zip(by_user.values(), replies, strict=True):
            lost = {text(conn_id) for conn_id in reply[2:]}
            refused += [info for info in infos if info.conn_id in lost]
        return refused

    async def count_connections(self, sub: str, *, tenant: str = "") -> int:
        keys = self.keys.user_keys(sub, tenant, "slots", "info")
        return int(await self._scripts.run("count_connections", keys, []))

    async def record_auth_failure(
        self, ip: str, *, threshold: int, window: int, ban_seconds: int
    ) -> bool:
        keys = [self.keys.ip_key(ip, "fails"), self.keys.ip_key(ip, "ban")]
        args: list[str | int] = [threshold, window, ban_seconds, secrets.token_hex(8)]
        return int(await self._scripts.run("record_auth_failure", keys, args)) == 1

    async def ban_ip(self, ip: str, *, seconds: int) -> None:
        try:
            await self._client.set(self.keys.ip_key(ip, "ban"), "manual", ex=seconds)
        except UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis ban_ip: {type(exc).__name__}: {exc}") from exc

    async def unban_ip(self, ip: str) -> None:
        try:
            # Same hash tag: one DEL is cluster-safe. The failures go too, or the next one re-bans.
            await self._client.delete(self.keys.ip_key(ip, "ban"), self.keys.ip_key(ip, "fails"))
        except UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis unban_ip: {type(exc).__name__}: {exc}") from exc

    # -- presence -----------------------------------------------------------------------------

    async def agent_online(
        self, tenant: str, agent_id: str, conn_id: str, *, lease_seconds: int
    ) -> bool:
        keys = [
            self.keys.agents_key(tenant), self.keys.agent_key(tenant, agent_id),
            self.keys.released_key(tenant),
        ]
        args: list[str | int] = [agent_id, conn_id, self.worker_id, lease_seconds]
        return int(await self._hot("agent_online", keys, args)) == 1

    async def agent_offline(self, tenant: str, agent_id: str, conn_id: str) -> bool:
        keys = [
            self.keys.agents_key(tenant), self.keys.agent_key(tenant, agent_id),
            self.keys.released_key(tenant),
        ]
        try:
            # On the hot connection: a drain closes thousands of agents at once, and one pooled
            # connection each ran the pool out (MaxConnectionsError for 5,303 of them in a soak).
            reply = await self._hot("agent_offline", keys, [agent_id, conn_id, RELEASED_SECONDS])
            return int(reply) == 1
        except EngineUnavailable as exc:
            # The presence lease runs out by itself; the caller announces nothing.
            log.warning("engine.agent_offline_failed", error=type(exc.__cause__ or exc).__name__)
            return False

    async def renew_agents(
        self, entries: Iterable[tuple[str, str, str]], *, lease_seconds: int
    ) -> None:
        by_tenant: defaultdict[str, list[tuple[str, str]]] = defaultdict(list)
        for tenant, agent_id, conn_id in entries:
            by_tenant[tenant].append((agent_id, conn_id))
        if not by_tenant:
            return
        calls: list[Call] = []
        for tenant, pairs in by_tenant.items():
            for start in range(0, len(pairs), RENEW_BATCH):
                keys = [self.keys.agents_key(tenant), self.keys.released_key(tenant)]
                args: list[str | int] = [lease_seconds, self.worker_id]
                for agent_id, conn_id in pairs[start : start + RENEW_BATCH]:
                    keys.append(self.keys.agent_key(tenant, agent_id))
                    args += [agent_id, conn_id]
                calls.append((keys, args))
        try:
            # One script per tenant (one hash slot each) and batch, in one pipelined round trip.
            replies = await self._scripts.run_many("renew_agents", calls)
        except UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis renew_agents: {type(exc).__name__}: {exc}") from exc
        _log_revived("engine.presence_revived", replies)

    async def locate_agent(self, tenant: str, agent_id: str) -> tuple[str, str] | None:
        reply = await self._scripts.run("locate_agent", [self.keys.agent_key(tenant, agent_id)], [])
        if not reply:
            return None
        worker, conn_id = reply
        return text(worker), text(conn_id)

    async def send_to_agent(self, tenant: str, agent_id: str, head: str, tail: str) -> bool:
        if self.target.cluster:
            # The agent's key and the worker channel are in different slots: two round trips.
            return await super().send_to_agent(tenant, agent_id, head, tail)
        keys = [self.keys.agent_key(tenant, agent_id)]
        args: list[str | int] = [self.worker_channel_of(""), head, tail]
        return bool(await self._scripts.run_batched("send_to_agent", keys, args))

    async def online_agents(self, tenant: str, among: Collection[str] | None = None) -> set[str]:
        keys = [self.keys.agents_key(tenant)]
        if among is None:
            reply = await self._scripts.run("online_agents", keys, [])
        elif not among:
            return set()
        else:
            reply = await self._hot("online_agents", keys, list(among))
        return {text(agent) for agent in reply}

    # -- event history ------------------------------------------------------------------------

    async def append_event(
        self, tenant: str, agent_id: str, payload: str, *, policy: HistoryPolicy,
        last: tuple[str, int] | None = None,
    ) -> tuple[str, int]:
        known_epoch, known_seq = last or ("", 0)
        args: list[str | int] = [
            secrets.token_hex(8), policy.size, policy.seconds, META_TTL_SECONDS, payload,
            known_epoch, known_seq,
        ]
        # Not in run_many (it resends a whole pipeline); a retry of the same call is answered,
        # not appended, again. On one primary it goes on the routing path's hot connection.
        epoch, seq = await self._hot("append_event", self.keys.history_keys(tenant, agent_id), args)
        return text(epoch), int(seq)

    async def read_history(
        self, tenant: str, after: dict[str, int], *, policy: HistoryPolicy
    ) -> dict[str, History]:
        agents = list(after)
        calls: list[Call] = [
            (self.keys.history_keys(tenant, a), [after[a], policy.seconds]) for a in agents
        ]
        try:
            replies = await self._scripts.run_many("read_history", calls) if calls else []
        except UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis read_history: {type(exc).__name__}: {exc}") from exc
        found: dict[str, History] = {}
        for agent_id, reply in zip(agents, replies, strict=True):
            rest = reply[2:]
            events = tuple((int(rest[i]), text(rest[i + 1])) for i in range(0, len(rest), 2))
            found[agent_id] = History(text(reply[0]), int(reply[1]), events)
        return found


def _log_revived(event: str, replies: list[Any]) -> None:
    """Log how many leases the renew scripts (``{renewed, revived}`` each) re-established."""
    revived = sum(int(reply[1]) for reply in replies if isinstance(reply, list) and len(reply) > 1)
    if revived:
        log.warning(event, count=revived)
