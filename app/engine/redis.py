"""The Redis engine: limits, leases and control events shared by every worker and host.

Guarantees beyond :class:`app.engine.base.Engine`:

- Every multi-step operation is one Lua script (``app/engine/lua/<name>.lua``), so it is atomic
  across workers; :meth:`check_ip` and :meth:`admit_user` are one round trip each once the
  scripts are loaded (``start`` loads them; after a Redis restart redis-py reloads on NOSCRIPT).
- The clock is Redis ``TIME``: hosts with skewed clocks still agree on windows and leases.
- Keys are ``{prefix}:{u:<sub>}:slots|rate|info`` (a user without tenant) or
  ``{prefix}:{u:<tenant>:<sub>}:slots|rate|info`` (a user is the pair tenant, sub),
  ``{prefix}:{ip:<ip>}:rate|fails|ban`` (``<ip>`` an IPv4 address or an IPv6 network) and, for
  presence, ``{prefix}:{t:<tenant>}:agents`` (zset agent_id -> latest lease expiry) and
  ``{prefix}:{t:<tenant>}:a:<agent>`` (hash conn_id -> ``expiry_ms:connected_us:worker``), and
  for event history ``{prefix}:{h:<tenant>:<agent>}:meta|ev`` (epoch and counter; a stream trimmed
  by MAXLEN and MINID), one slot per agent. The
  part in braces is the Redis Cluster hash tag, so each script touches one slot; ``<sub>``,
  ``<tenant>`` and ``<agent>`` are base64url of their UTF-8 bytes, so no ``{``, ``}``, ``:`` or
  ``*`` in an id can move the tag or alias another key, and the tenant "" is ``{t:}``. Every key
  has a TTL: idle users, addresses and tenants vanish by themselves. :meth:`RedisEngine.renew`
  and :meth:`RedisEngine.renew_agents` write back what is gone (a lease that ran out during an
  outage, or data Redis lost), since the worker renews only connections that are open (see
  ``renew.lua`` and ``renew_agents.lua`` for the rules, notably "connected at"). A slot's
  :class:`ConnectionInfo` (JSON in ``info``) is written, released and expired with the slot, in
  the same script; a slot admitted without info is not listed.
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
- Round trips: one per call (a script, a PUBLISH or a pipeline), except
  :meth:`RedisEngine.list_connections` of everyone (SCAN pages, then one pipeline per
  ``LIST_BATCH`` users) and :meth:`RedisEngine.watch` / :meth:`RedisEngine.unwatch` (see
  :mod:`app.engine.redis_pubsub`).
"""

from __future__ import annotations

import asyncio
import secrets
from collections import defaultdict
from collections.abc import Iterable
from importlib import resources
from typing import Any

import structlog
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from app.engine._redis_client import (
    UNAVAILABLE,
    aclose,
    connect,
    parse_redis_url,
    ping_primaries,
    tag,
    text,
)
from app.engine._shared import (
    DelegatedMessaging,
    check_info,
    matches,
    normalize_ip,
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
from app.engine.redis_infos import glob_escape, info_json, parse_infos
from app.engine.redis_pubsub import RedisMessaging
from app.errors import Code

log = structlog.get_logger("app.engine")

PING_TIMEOUT_SECONDS = 1.0
# list_connections() of everyone: SCAN page size, users per pipelined round trip, and a bound.
SCAN_COUNT = 500
LIST_BATCH = 500
LIST_MAX_USERS = 100_000
# renew_agents(): entries per script call (all calls go in one pipelined round trip).
RENEW_BATCH = 1_000

SCRIPTS = (
    "check_ip",
    "admit_user",
    "release",
    "renew",
    "count_connections",
    "list_connections",
    "record_auth_failure",
    "agent_online",
    "agent_offline",
    "renew_agents",
    "locate_agent",
    "send_to_agent",
    "online_agents",
    "append_event",
    "read_history",
)
_VERDICTS = {1: Code.IP_BANNED, 2: Code.RATE_LIMITED, 3: Code.CONNECTION_LIMIT}
# One script run: (keys, args).
_Call = tuple[list[str], list[str | int]]


def load_script(name: str) -> str:
    """The source of ``app/engine/lua/<name>.lua`` (a package resource)."""
    return resources.files("app.engine").joinpath("lua", f"{name}.lua").read_text("utf-8")


class RedisEngine(DelegatedMessaging):
    """The shared engine (see the module docstring for its guarantees)."""

    _messaging: RedisMessaging

    name = "redis"

    def __init__(self, url: str, *, prefix: str = "hub", worker_id: str) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError("the Redis key prefix must be non-empty and hold no braces")
        self.worker_id = worker_id
        self.prefix = prefix
        self.target = parse_redis_url(url)
        self._client = connect(self.target, f"{prefix}:{worker_id}")
        self._scripts: dict[str, AsyncScript] = {
            name: self._client.register_script(load_script(name)) for name in SCRIPTS
        }
        self._messaging = RedisMessaging(
            self._client, target=self.target, prefix=prefix, worker_id=worker_id
        )
        self.channel = self._messaging.channel
        self.worker_channel = self._messaging.worker_channel
        self._closed = False

    # -- keys ---------------------------------------------------------------------------------

    def user_key(self, sub: str, kind: str, tenant: str = "") -> str:
        # base64url holds no ":", so "<tenant>:<sub>" cannot alias another pair; a user without a
        # tenant keeps the key it had before tenants were part of it.
        user = f"{tag(tenant)}:{tag(sub)}" if tenant else tag(sub)
        return f"{self.prefix}:{{u:{user}}}:{kind}"

    def ip_key(self, ip: str, kind: str) -> str:
        return f"{self.prefix}:{{ip:{tag(normalize_ip(ip))}}}:{kind}"

    def agents_key(self, tenant: str) -> str:
        """The tenant's zset of agents (member = agent_id, score = latest lease expiry, ms)."""
        return f"{self.prefix}:{{t:{tag(tenant)}}}:agents"

    def agent_key(self, tenant: str, agent_id: str) -> str:
        """One agent's hash of connections (conn_id -> ``expiry_ms:connected_us:worker``)."""
        return f"{self.prefix}:{{t:{tag(tenant)}}}:a:{tag(agent_id)}"

    def history_keys(self, tenant: str, agent_id: str) -> list[str]:
        """One agent's history: its ``meta`` hash (epoch, last seq) and ``ev`` stream, in one
        hash slot of their own (histories spread over a cluster's shards)."""
        return [f"{self.prefix}:{{h:{tag(tenant)}:{tag(agent_id)}}}:{kind}" for kind in ("meta", "ev")]

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
            for script in self._scripts.values():
                # Preloaded so the first handshake is already one round trip (EVALSHA).
                await self._client.script_load(script.script)
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

    async def _run(self, name: str, keys: list[str], args: list[str | int]) -> Any:
        try:
            return await self._scripts[name](keys=keys, args=args)
        except UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis {name}: {type(exc).__name__}: {exc}") from exc

    async def _run_batched(self, name: str, keys: list[str], args: list[str | int]) -> Any:
        """:meth:`_run` in the routing path's shared pipelines (one primary only: a cluster
        pipeline may split). NOSCRIPT means it did not run: it runs once more, loaded first."""
        script = self._scripts[name]
        try:
            return await self._messaging.batch.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._run(name, keys, args)
        except UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis {name}: {type(exc).__name__}: {exc}") from exc

    async def _run_many(self, name: str, calls: list[_Call]) -> list[Any]:
        """Run script ``name`` once per ``(keys, args)``, all in one pipelined round trip.

        Plain EVALSHA: redis-py's pipelined Script objects would first send SCRIPT EXISTS (a second
        round trip) on every call; given as a raw command, since a cluster pipeline refuses its
        ``evalsha`` method. After a Redis restart or a failover (scripts are not replicated) the
        pipeline answers NOSCRIPT: the script is loaded (on every primary of a cluster) and the
        whole pipeline sent once more. On a cluster the batch is split by node and part of it may
        have run before the error, so every batched script must be safe to run twice (they are:
        list_connections reads, renew and renew_agents set absolute leases). Raises the redis-py
        errors; callers map them.
        """
        script = self._scripts[name]
        for attempt in range(2):
            async with self._client.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                try:
                    return list(await pipe.execute())
                except NoScriptError:
                    if attempt:
                        raise
            await self._client.script_load(script.script)
        raise AssertionError("unreachable")

    @staticmethod
    def _verdict(reply: list[int]) -> Admitted | Refused:
        verdict, retry_after = int(reply[0]), int(reply[1])
        if verdict == 0:
            return Admitted()
        return Refused(_VERDICTS[verdict], retry_after)

    async def check_ip(self, ip: str, *, limit: int, window: int = 60) -> IpVerdict:
        keys = [self.ip_key(ip, "ban"), self.ip_key(ip, "rate")]
        reply = await self._run("check_ip", keys, [limit, window, secrets.token_hex(8)])
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
        keys = [self.user_key(sub, kind, tenant) for kind in ("slots", "rate", "info")]
        args: list[str | int] = [
            conn_id, rate_limit, max_connections, lease_seconds, window, secrets.token_hex(8),
            info_json(info) if info is not None else "",
        ]
        return self._verdict(await self._run("admit_user", keys, args))

    async def release(self, sub: str, conn_id: str, *, tenant: str = "") -> None:
        keys = [self.user_key(sub, "slots", tenant), self.user_key(sub, "info", tenant)]
        try:
            await self._scripts["release"](keys=keys, args=[conn_id])
        except UNAVAILABLE as exc:
            # The lease runs out by itself within lease_seconds; nothing else to do.
            log.warning("engine.release_failed", error=type(exc).__name__)

    async def list_connections(
        self, sub: str | None = None, *, tenant: str | None = None
    ) -> list[ConnectionInfo]:
        if sub is not None and tenant is not None:
            keys = [self.user_key(sub, "slots", tenant), self.user_key(sub, "info", tenant)]
            return sort_connections(parse_infos(await self._run("list_connections", keys, [])))
        rows: list[ConnectionInfo] = []
        try:
            info_keys = await self._scan_info_keys()
            for start in range(0, len(info_keys), LIST_BATCH):
                # One script per user (one hash slot each), a batch per pipelined round trip.
                calls: list[_Call] = [
                    ([info_key[: -len("info")] + "slots", info_key], [])
                    for info_key in info_keys[start : start + LIST_BATCH]
                ]
                for reply in await self._run_many("list_connections", calls):
                    rows.extend(info for info in parse_infos(reply) if matches(info, sub, tenant))
        except UNAVAILABLE as exc:
            raise EngineUnavailable(
                f"redis list_connections: {type(exc).__name__}: {exc}"
            ) from exc
        return sort_connections(rows)

    async def _scan_info_keys(self) -> list[str]:
        pattern = f"{glob_escape(self.prefix)}:{{u:*}}:info"
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
        calls: list[_Call] = []
        for (tenant, sub), infos in by_user.items():
            args: list[str | int] = [lease_seconds, max_connections]
            for info in infos:
                args += [info.conn_id, info_json(info)]
            calls.append(([self.user_key(sub, "slots", tenant), self.user_key(sub, "info", tenant)], args))
        try:
            # One script per user (one hash slot each), all in one pipelined round trip.
            replies = await self._run_many("renew", calls)
        except UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis renew: {type(exc).__name__}: {exc}") from exc
        _log_revived("engine.leases_revived", replies)
        refused: list[ConnectionInfo] = []
        for infos, reply in zip(by_user.values(), replies, strict=True):
            lost = {text(conn_id) for conn_id in reply[2:]}
            refused += [info for info in infos if info.conn_id in lost]
        return refused

    async def count_connections(self, sub: str, *, tenant: str = "") -> int:
        keys = [self.user_key(sub, "slots", tenant), self.user_key(sub, "info", tenant)]
        return int(await self._run("count_connections", keys, []))

    async def record_auth_failure(
        self, ip: str, *, threshold: int, window: int, ban_seconds: int
    ) -> bool:
        keys = [self.ip_key(ip, "fails"), self.ip_key(ip, "ban")]
        args: list[str | int] = [threshold, window, ban_seconds, secrets.token_hex(8)]
        return int(await self._run("record_auth_failure", keys, args)) == 1

    async def ban_ip(self, ip: str, *, seconds: int) -> None:
        try:
            await self._client.set(self.ip_key(ip, "ban"), "manual", ex=seconds)
        except UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis ban_ip: {type(exc).__name__}: {exc}") from exc

    async def unban_ip(self, ip: str) -> None:
        try:
            # Same hash tag: one DEL is cluster-safe. The failures go too, or the next one re-bans.
            await self._client.delete(self.ip_key(ip, "ban"), self.ip_key(ip, "fails"))
        except UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis unban_ip: {type(exc).__name__}: {exc}") from exc

    # -- presence -----------------------------------------------------------------------------

    async def agent_online(
        self, tenant: str, agent_id: str, conn_id: str, *, lease_seconds: int
    ) -> bool:
        keys = [self.agents_key(tenant), self.agent_key(tenant, agent_id)]
        args: list[str | int] = [agent_id, conn_id, self.worker_id, lease_seconds]
        return int(await self._run("agent_online", keys, args)) == 1

    async def agent_offline(self, tenant: str, agent_id: str, conn_id: str) -> bool:
        keys = [self.agents_key(tenant), self.agent_key(tenant, agent_id)]
        try:
            reply = await self._scripts["agent_offline"](keys=keys, args=[agent_id, conn_id])
            return int(reply) == 1
        except UNAVAILABLE as exc:
            # The presence lease runs out by itself; the caller announces nothing.
            log.warning("engine.agent_offline_failed", error=type(exc).__name__)
            return False

    async def renew_agents(
        self, entries: Iterable[tuple[str, str, str]], *, lease_seconds: int
    ) -> None:
        by_tenant: defaultdict[str, list[tuple[str, str]]] = defaultdict(list)
        for tenant, agent_id, conn_id in entries:
            by_tenant[tenant].append((agent_id, conn_id))
        if not by_tenant:
            return
        calls: list[_Call] = []
        for tenant, pairs in by_tenant.items():
            for start in range(0, len(pairs), RENEW_BATCH):
                keys = [self.agents_key(tenant)]
                args: list[str | int] = [lease_seconds, self.worker_id]
                for agent_id, conn_id in pairs[start : start + RENEW_BATCH]:
                    keys.append(self.agent_key(tenant, agent_id))
                    args += [agent_id, conn_id]
                calls.append((keys, args))
        try:
            # One script per tenant (one hash slot each) and batch, in one pipelined round trip.
            replies = await self._run_many("renew_agents", calls)
        except UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis renew_agents: {type(exc).__name__}: {exc}") from exc
        _log_revived("engine.presence_revived", replies)

    async def locate_agent(self, tenant: str, agent_id: str) -> tuple[str, str] | None:
        reply = await self._run("locate_agent", [self.agent_key(tenant, agent_id)], [])
        if not reply:
            return None
        worker, conn_id = reply
        return text(worker), text(conn_id)

    async def send_to_agent(self, tenant: str, agent_id: str, head: str, tail: str) -> bool:
        if self.target.cluster:
            # The agent's key and the worker channel are in different slots: two round trips.
            return await super().send_to_agent(tenant, agent_id, head, tail)
        keys = [self.agent_key(tenant, agent_id)]
        return bool(await self._run_batched("send_to_agent", keys, [self.worker_channel_of(""), head, tail]))

    async def online_agents(self, tenant: str) -> set[str]:
        reply = await self._run("online_agents", [self.agents_key(tenant)], [])
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
        # Not in _run_many (it resends a whole pipeline); a retry of the same call is answered,
        # not appended, again. On one primary it shares the routing path's pipelines.
        keys = self.history_keys(tenant, agent_id)
        run = self._run if self.target.cluster else self._run_batched
        epoch, seq = await run("append_event", keys, args)
        return text(epoch), int(seq)

    async def read_history(
        self, tenant: str, after: dict[str, int], *, policy: HistoryPolicy
    ) -> dict[str, History]:
        agents = list(after)
        calls: list[_Call] = [
            (self.history_keys(tenant, a), [after[a], policy.seconds]) for a in agents
        ]
        try:
            replies = await self._run_many("read_history", calls) if calls else []
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
