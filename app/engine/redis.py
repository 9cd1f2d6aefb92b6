"""The Redis engine: limits, leases and control events shared by every worker and host.

Guarantees beyond :class:`app.engine.base.Engine`:

- Every multi-step operation is one Lua script (``app/engine/lua/<name>.lua``), so it is atomic
  across workers; :meth:`check_ip` and :meth:`admit_user` are one round trip each once the
  scripts are loaded (``start`` loads them; after a Redis restart redis-py reloads on NOSCRIPT).
- The clock is Redis ``TIME``: hosts with skewed clocks still agree on windows and leases.
- Keys are ``{prefix}:{u:<sub>}:slots|rate|info``, ``{prefix}:{ip:<ip>}:rate|fails|ban`` and, for
  presence, ``{prefix}:{t:<tenant>}:agents`` (zset agent_id -> latest lease expiry) and
  ``{prefix}:{t:<tenant>}:a:<agent>`` (hash conn_id -> ``expiry_ms:connected_us:worker``). The
  part in braces is the Redis Cluster hash tag, so each script touches one slot; ``<sub>``,
  ``<tenant>`` and ``<agent>`` are base64url of their UTF-8 bytes, so no ``{``, ``}``, ``:`` or
  ``*`` in an id can move the tag or alias another key, and the tenant "" is ``{t:}``. Every key
  has a TTL: idle users, addresses and tenants vanish by themselves. :meth:`RedisEngine.renew`
  and :meth:`RedisEngine.renew_agents` write back what is gone (a lease that ran out during an
  outage, or data Redis lost), since the worker renews only connections that are open (see
  ``renew.lua`` and ``renew_agents.lua`` for the rules, notably "connected at"). A slot's
  :class:`ConnectionInfo` (JSON in ``info``) is written, released and expired with the slot, in
  the same script; a slot admitted without info is not listed.
- Unreachable or failing Redis raises :class:`EngineUnavailable` within about a second (short
  socket timeouts, one immediate reconnect attempt, no backoff), so a handshake fails closed fast.
  redis-py reconnects on the next call: the engine recovers without a restart.
- Control events go through PUBLISH on ``{prefix}:control``; routed messages on
  ``{prefix}:w:<worker_id>`` (:meth:`RedisEngine.send_to_worker`), ``{prefix}:ag:<tenant>:<agent>``
  and ``{prefix}:ag:<tenant>:*`` (:meth:`RedisEngine.publish_agent` publishes on both in one
  round trip). One subscriber connection carries them all; its task reconnects with capped backoff
  and resubscribes every channel (control, own worker, every watched agent) each time. Delivery is
  at most once (messages published during an outage are lost).
- A worker watching an agent *and* ``*`` of its tenant gets each message on both channels; it
  delivers the tenant-wide copy only, so each message reaches its handler once.
- Routed messages go to the handler through a :class:`MessageInbox` (one consumer task, arrival
  order kept, bounded; the subscriber loop never waits for the handler). Control events keep a
  task each.
- Round trips: one per call (a script, a PUBLISH or a pipeline), except
  :meth:`RedisEngine.list_connections` of everyone (SCAN pages, then one pipeline per
  ``LIST_BATCH`` users) and :meth:`RedisEngine.watch` / :meth:`RedisEngine.unwatch`, which send
  SUBSCRIBE / UNSUBSCRIBE on the subscriber connection when the count leaves / reaches zero.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import secrets
from collections import defaultdict
from collections.abc import Iterable
from importlib import resources
from typing import Any, get_args

import redis.asyncio as aioredis
import structlog
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from app.engine.base import (
    Admitted,
    ConnectionInfo,
    ControlEvent,
    ControlHandler,
    ControlKind,
    EngineUnavailable,
    IpVerdict,
    MessageHandler,
    Refused,
    UserVerdict,
)
from app.engine.memory import (
    WILDCARD,
    MessageInbox,
    check_info,
    normalize_ip,
    sort_connections,
)
from app.errors import Code

log = structlog.get_logger("app.engine")

SOCKET_TIMEOUT_SECONDS = 1.0
PING_TIMEOUT_SECONDS = 1.0
SUBSCRIBER_BACKOFF_START = 0.1
SUBSCRIBER_BACKOFF_CAP = 5.0
# How long start() waits for the first subscription, so events published right after start are
# delivered; past it, start() returns and the subscriber keeps trying in the background.
SUBSCRIBE_WAIT_SECONDS = 2.0

# How long watch() waits for Redis to confirm a new subscription (so a message published right
# after it returns is received); past it, watch() returns and the subscription follows later.
WATCH_WAIT_SECONDS = 1.0
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
    "online_agents",
)
_KINDS: frozenset[str] = frozenset(get_args(ControlKind))
_VERDICTS = {1: Code.IP_BANNED, 2: Code.RATE_LIMITED, 3: Code.CONNECTION_LIMIT}
# Failures that mean "shared state is unreachable or refusing": the caller fails closed.
_UNAVAILABLE = (RedisError, OSError, asyncio.TimeoutError)
# One script run: (keys, args).
_Call = tuple[list[str], list[str | int]]


def load_script(name: str) -> str:
    """The source of ``app/engine/lua/<name>.lua`` (a package resource)."""
    return resources.files("app.engine").joinpath("lua", f"{name}.lua").read_text("utf-8")


def _tag(value: str) -> str:
    # surrogatepass: a JSON subject may hold a lone surrogate; it must still get its own key.
    raw = value.encode("utf-8", "surrogatepass")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class RedisEngine:
    """The shared engine (see the module docstring for its guarantees)."""

    name = "redis"

    def __init__(self, url: str, *, prefix: str = "hub", worker_id: str) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError("the Redis key prefix must be non-empty and hold no braces")
        self.worker_id = worker_id
        self.prefix = prefix
        self.channel = f"{prefix}:control"
        self._url = url
        self._client = self._connect(url, f"{prefix}:{worker_id}")
        self._scripts: dict[str, AsyncScript] = {
            name: self._client.register_script(load_script(name)) for name in SCRIPTS
        }
        self.worker_channel = f"{prefix}:w:{worker_id}"
        self._handler: ControlHandler | None = None
        self._inbox = MessageInbox()
        self._sub_client: aioredis.Redis | None = None
        self._subscriber: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        # The subscriber's live PubSub (None while (re)connecting) and the lock that serialises
        # SUBSCRIBE / UNSUBSCRIBE on it between the subscriber loop and watch() / unwatch().
        self._pubsub: PubSub | None = None
        self._sub_lock = asyncio.Lock()
        self._initial_pending: set[str] = set()
        # Channels Redis has confirmed on the current subscriber connection.
        self._confirmed: set[str] = set()
        self._sub_waiters: dict[str, list[asyncio.Future[None]]] = {}
        # (tenant, agent_id or "*") -> watch count; channel -> the watch it serves.
        self._watches: dict[tuple[str, str], int] = {}
        self._watch_channels: dict[str, tuple[str, str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @staticmethod
    def _connect(url: str, client_name: str) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            url,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
            # One immediate retry on a dropped connection (a pooled socket Redis closed); none on
            # timeouts, which would only double the wait before failing closed. Scripts are safe
            # to retry: their nonce makes a second run count nothing twice.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            client_name=client_name,
        )

    # -- keys ---------------------------------------------------------------------------------

    def user_key(self, sub: str, kind: str) -> str:
        return f"{self.prefix}:{{u:{_tag(sub)}}}:{kind}"

    def ip_key(self, ip: str, kind: str) -> str:
        return f"{self.prefix}:{{ip:{_tag(normalize_ip(ip))}}}:{kind}"

    def agents_key(self, tenant: str) -> str:
        """The tenant's zset of agents (member = agent_id, score = latest lease expiry, ms)."""
        return f"{self.prefix}:{{t:{_tag(tenant)}}}:agents"

    def agent_key(self, tenant: str, agent_id: str) -> str:
        """One agent's hash of connections (conn_id -> ``expiry_ms:connected_us:worker``)."""
        return f"{self.prefix}:{{t:{_tag(tenant)}}}:a:{_tag(agent_id)}"

    def agent_channel(self, tenant: str, agent_id: str) -> str:
        """The channel of one agent's messages; ``agent_id="*"`` is the tenant-wide channel
        (base64url never yields ``*``, so no agent id can alias it)."""
        agent = WILDCARD if agent_id == WILDCARD else _tag(agent_id)
        return f"{self.prefix}:ag:{_tag(tenant)}:{agent}"

    def worker_channel_of(self, worker_id: str) -> str:
        return f"{self.prefix}:w:{worker_id}"

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._closed or self._subscriber is not None:
            return
        try:
            for script in self._scripts.values():
                # Preloaded so the first handshake is already one round trip (EVALSHA).
                await self._client.script_load(script.script)
        except _UNAVAILABLE as exc:
            # Not fatal: the hub starts, refuses handshakes (fail closed) and recovers later;
            # redis-py loads the scripts on the first NOSCRIPT.
            log.warning("engine.start_degraded", error=type(exc).__name__)
        if self._handler is not None or self._inbox.handler is not None:
            self._sub_client = self._connect(self._url, f"{self.prefix}:{self.worker_id}:sub")
            self._subscriber = asyncio.create_task(self._subscribe_forever(), name="engine-sub")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), SUBSCRIBE_WAIT_SECONDS)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in (self._subscriber, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        await self._inbox.close()
        for client in (self._sub_client, self._client):
            if client is not None:
                with contextlib.suppress(*_UNAVAILABLE):
                    await client.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self._client.ping(), PING_TIMEOUT_SECONDS))
        except _UNAVAILABLE:
            return False

    # -- limits -------------------------------------------------------------------------------

    async def _run(self, name: str, keys: list[str], args: list[str | int]) -> Any:
        try:
            return await self._scripts[name](keys=keys, args=args)
        except _UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis {name}: {type(exc).__name__}: {exc}") from exc

    async def _run_many(self, name: str, calls: list[_Call]) -> list[Any]:
        """Run script ``name`` once per ``(keys, args)``, all in one pipelined round trip.

        Plain EVALSHA: redis-py's pipelined Script objects would first send SCRIPT EXISTS (a second
        round trip) on every call. After a Redis restart the whole pipeline answers NOSCRIPT (so
        nothing ran): the script is loaded and the pipeline sent once more. Raises the redis-py
        errors; callers map them.
        """
        script = self._scripts[name]
        for attempt in range(2):
            async with self._client.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
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
        rate_limit: int,
        max_connections: int,
        lease_seconds: int,
        window: int = 60,
        info: ConnectionInfo | None = None,
    ) -> UserVerdict:
        check_info(sub, conn_id, info)
        keys = [self.user_key(sub, "slots"), self.user_key(sub, "rate"), self.user_key(sub, "info")]
        args: list[str | int] = [
            conn_id, rate_limit, max_connections, lease_seconds, window, secrets.token_hex(8),
            _info_json(info) if info is not None else "",
        ]
        return self._verdict(await self._run("admit_user", keys, args))

    async def release(self, sub: str, conn_id: str) -> None:
        keys = [self.user_key(sub, "slots"), self.user_key(sub, "info")]
        try:
            await self._scripts["release"](keys=keys, args=[conn_id])
        except _UNAVAILABLE as exc:
            # The lease runs out by itself within lease_seconds; nothing else to do.
            log.warning("engine.release_failed", error=type(exc).__name__)

    async def list_connections(self, sub: str | None = None) -> list[ConnectionInfo]:
        if sub is not None:
            keys = [self.user_key(sub, "slots"), self.user_key(sub, "info")]
            return sort_connections(_parse_infos(await self._run("list_connections", keys, [])))
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
                    rows.extend(_parse_infos(reply))
        except _UNAVAILABLE as exc:
            raise EngineUnavailable(
                f"redis list_connections: {type(exc).__name__}: {exc}"
            ) from exc
        return sort_connections(rows)

    async def _scan_info_keys(self) -> list[str]:
        pattern = f"{_glob_escape(self.prefix)}:{{u:*}}:info"
        keys: set[str] = set()
        cursor: int = 0
        while True:
            cursor, page = await self._client.scan(cursor, match=pattern, count=SCAN_COUNT)
            keys.update(k.decode() if isinstance(k, bytes) else str(k) for k in page)
            if cursor == 0:
                break
            if len(keys) >= LIST_MAX_USERS:
                log.warning("engine.list_connections_truncated", users=len(keys))
                break
        return sorted(keys)

    async def renew(self, connections: Iterable[ConnectionInfo], *, lease_seconds: int) -> None:
        by_sub: defaultdict[str, list[str | int]] = defaultdict(list)
        for info in connections:
            by_sub[info.sub] += [info.conn_id, _info_json(info)]
        if not by_sub:
            return
        calls: list[_Call] = [
            ([self.user_key(sub, "slots"), self.user_key(sub, "info")], [lease_seconds, *args])
            for sub, args in by_sub.items()
        ]
        try:
            # One script per user (one hash slot each), all in one pipelined round trip.
            replies = await self._run_many("renew", calls)
        except _UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis renew: {type(exc).__name__}: {exc}") from exc
        _log_revived("engine.leases_revived", replies)

    async def count_connections(self, sub: str) -> int:
        keys = [self.user_key(sub, "slots"), self.user_key(sub, "info")]
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
        except _UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis ban_ip: {type(exc).__name__}: {exc}") from exc

    async def unban_ip(self, ip: str) -> None:
        try:
            # Same hash tag: one DEL is cluster-safe. The failures go too, or the next one re-bans.
            await self._client.delete(self.ip_key(ip, "ban"), self.ip_key(ip, "fails"))
        except _UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis unban_ip: {type(exc).__name__}: {exc}") from exc

    # -- control events -----------------------------------------------------------------------

    async def publish(self, event: ControlEvent) -> None:
        payload = json.dumps(
            {"kind": event.kind, "data": event.data, "from": self.worker_id}, separators=(",", ":")
        )
        try:
            await self._client.publish(self.channel, payload)
        except _UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis publish: {type(exc).__name__}: {exc}") from exc

    def subscribe(self, handler: ControlHandler) -> None:
        self._handler = handler

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
        except _UNAVAILABLE as exc:
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
        except _UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis renew_agents: {type(exc).__name__}: {exc}") from exc
        _log_revived("engine.presence_revived", replies)

    async def locate_agent(self, tenant: str, agent_id: str) -> tuple[str, str] | None:
        reply = await self._run("locate_agent", [self.agent_key(tenant, agent_id)], [])
        if not reply:
            return None
        worker, conn_id = reply
        return _text(worker), _text(conn_id)

    async def online_agents(self, tenant: str) -> set[str]:
        reply = await self._run("online_agents", [self.agents_key(tenant)], [])
        return {_text(agent) for agent in reply}

    # -- routing ------------------------------------------------------------------------------

    def on_message(self, handler: MessageHandler) -> None:
        self._inbox.handler = handler

    async def send_to_worker(self, worker_id: str, message: str) -> None:
        try:
            await self._client.publish(self.worker_channel_of(worker_id), message)
        except _UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis send_to_worker: {type(exc).__name__}: {exc}") from exc

    async def publish_agent(self, tenant: str, agent_id: str, message: str) -> None:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.publish(self.agent_channel(tenant, agent_id), message)
                if agent_id != WILDCARD:
                    pipe.publish(self.agent_channel(tenant, WILDCARD), message)
                await pipe.execute()
        except _UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis publish_agent: {type(exc).__name__}: {exc}") from exc

    async def watch(self, tenant: str, agent_id: str) -> None:
        key = (tenant, agent_id)
        count = self._watches.get(key, 0)
        self._watches[key] = count + 1
        if count == 0:
            self._watch_channels[self.agent_channel(tenant, agent_id)] = key
            await self._sync_channel(self.agent_channel(tenant, agent_id))

    async def unwatch(self, tenant: str, agent_id: str) -> None:
        key = (tenant, agent_id)
        count = self._watches.get(key, 0)
        if count == 0:
            return
        if count > 1:
            self._watches[key] = count - 1
            return
        del self._watches[key]
        channel = self.agent_channel(tenant, agent_id)
        self._watch_channels.pop(channel, None)
        await self._sync_channel(channel)

    async def _sync_channel(self, channel: str) -> None:
        """Bring the live subscription of ``channel`` in line with the watch counts.

        Decided under the lock from the counts *then*, so concurrent watch/unwatch calls settle on
        the last state. Never raises: when the subscriber is down (or the write fails) the
        subscriber loop resubscribes the watched set on its next connection.
        """
        waiter: asyncio.Future[None] | None = None
        async with self._sub_lock:
            pubsub = self._pubsub
            if pubsub is None:
                return
            wanted = channel in self._watch_channels
            try:
                if wanted:
                    waiter = asyncio.get_running_loop().create_future()
                    self._sub_waiters.setdefault(channel, []).append(waiter)
                    await pubsub.subscribe(channel)
                else:
                    await pubsub.unsubscribe(channel)
            except _UNAVAILABLE as exc:
                log.warning("engine.watch_deferred", error=type(exc).__name__)
                self._drop_waiter(channel, waiter)
                return
        if waiter is not None:
            try:
                # Confirmed by Redis: a message published from now on reaches this worker.
                await asyncio.wait_for(asyncio.shield(waiter), WATCH_WAIT_SECONDS)
            except TimeoutError:
                log.warning("engine.watch_unconfirmed")
            finally:
                self._drop_waiter(channel, waiter)

    def _drop_waiter(self, channel: str, waiter: asyncio.Future[None] | None) -> None:
        waiters = self._sub_waiters.get(channel)
        if waiter is None or waiters is None:
            return
        with contextlib.suppress(ValueError):
            waiters.remove(waiter)
        if not waiters:
            del self._sub_waiters[channel]

    # -- the subscriber -----------------------------------------------------------------------

    def _base_channels(self) -> list[str]:
        channels = []
        if self._handler is not None:
            channels.append(self.channel)
        if self._inbox.handler is not None:
            channels.append(self.worker_channel)
        return channels

    async def _subscribe_forever(self) -> None:
        assert self._sub_client is not None
        backoff = SUBSCRIBER_BACKOFF_START
        lost = False
        while True:
            pubsub: PubSub = self._sub_client.pubsub()
            try:
                async with self._sub_lock:
                    # Everything at once, watched agents included: after a reconnect nothing
                    # that was watched is left out.
                    channels = [*self._base_channels(), *self._watch_channels]
                    self._initial_pending = set(channels)
                    self._confirmed.clear()
                    await pubsub.subscribe(*channels)
                    self._pubsub = pubsub
                if lost:
                    log.info("engine.subscriber_restored", channel=self.channel)
                    lost = False
                backoff = SUBSCRIBER_BACKOFF_START
                while True:
                    # A bounded wait, so a silently dead connection is noticed by the next read.
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._on_pubsub(message)
            except _UNAVAILABLE as exc:
                if not lost:
                    log.warning(
                        "engine.subscriber_lost", channel=self.channel, error=type(exc).__name__
                    )
                    lost = True
            except Exception:
                # A bug here must not end cluster-wide messaging for this worker: log, go on.
                log.exception("engine.subscriber_error", channel=self.channel)
            finally:
                self._subscribed.clear()
                # Under the lock: no watch() is mid-SUBSCRIBE on the connection being closed.
                async with self._sub_lock:
                    self._pubsub = None
                with contextlib.suppress(*_UNAVAILABLE):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, SUBSCRIBER_BACKOFF_CAP)

    def _on_pubsub(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = _text(message.get("channel", b""))
        if kind == "unsubscribe":
            self._confirmed.discard(channel)
            return
        if kind == "subscribe":
            self._confirmed.add(channel)
            for waiter in self._sub_waiters.pop(channel, []):
                if not waiter.done():
                    waiter.set_result(None)
            self._initial_pending.discard(channel)
            if not self._initial_pending:
                self._subscribed.set()
            return
        if kind != "message":
            return
        data = message["data"]
        if channel == self.channel:
            self._dispatch(data)
        elif channel == self.worker_channel:
            self._inbox.put(_text(data))
        else:
            key = self._watch_channels.get(channel)
            if key is not None and (key[1] == WILDCARD or not self._tenant_copy_coming(key[0])):
                self._inbox.put(_text(data))

    def _tenant_copy_coming(self, tenant: str) -> bool:
        """True when the tenant-wide copy of an agent message will be delivered too, so the
        agent-channel copy must be dropped: ``*`` is watched *and* Redis has confirmed that
        subscription (until then the tenant copy is not sent to this worker).

        A message on a channel no longer watched (in flight at UNSUBSCRIBE) is dropped, so while
        ``*`` is being unwatched the agent copy is the one delivered. Only a watch of ``*`` that
        Redis applies between the two PUBLISHes of one :meth:`publish_agent` can deliver a
        message twice.
        """
        channel = self.agent_channel(tenant, WILDCARD)
        return channel in self._watch_channels and channel in self._confirmed

    def _dispatch(self, raw: bytes | str) -> None:
        event = _parse_event(raw)
        handler = self._handler
        if event is None:
            log.warning("engine.bad_control_event", channel=self.channel)
            return
        if handler is None:
            return
        # A task per event: a slow handler must not stall the subscriber (Redis drops a pubsub
        # client whose output buffer grows), and the loop starts tasks in arrival order.
        task = asyncio.create_task(_deliver(handler, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _glob_escape(value: str) -> str:
    """``value`` matched literally by a Redis glob (SCAN MATCH)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in value)


def _log_revived(event: str, replies: list[Any]) -> None:
    """Log how many leases the renew scripts (``{renewed, revived}`` each) re-established."""
    revived = sum(int(reply[1]) for reply in replies if isinstance(reply, list) and len(reply) > 1)
    if revived:
        log.warning(event, count=revived)


def _info_json(info: ConnectionInfo) -> str:
    return json.dumps(dataclasses.asdict(info), separators=(",", ":"))


def _parse_infos(reply: Any) -> list[ConnectionInfo]:
    rows = []
    for raw in reply or []:
        try:
            body = json.loads(raw)
            rows.append(
                ConnectionInfo(
                    conn_id=str(body["conn_id"]),
                    sub=str(body["sub"]),
                    endpoint=str(body["endpoint"]),
                    client_ip=str(body["client_ip"]),
                    worker=str(body["worker"]),
                    connected_at=float(body["connected_at"]),
                )
            )
        except (ValueError, KeyError, TypeError):
            log.warning("engine.bad_connection_info")
    return rows


def _parse_event(raw: bytes | str) -> ControlEvent | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    kind, data = body.get("kind"), body.get("data", {})
    if kind not in _KINDS or not isinstance(data, dict):
        return None
    return ControlEvent(kind=kind, data=data)


async def _deliver(handler: ControlHandler, event: ControlEvent) -> None:
    try:
        await handler(event)
    except Exception:
        log.exception("engine.handler_failed", kind=event.kind)
