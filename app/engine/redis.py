"""The Redis engine: limits, leases and control events shared by every worker and host.

Guarantees beyond :class:`app.engine.base.Engine`:

- Every multi-step operation is one Lua script (``app/engine/lua/<name>.lua``), so it is atomic
  across workers; :meth:`check_ip` and :meth:`admit_user` are one round trip each once the
  scripts are loaded (``start`` loads them; after a Redis restart redis-py reloads on NOSCRIPT).
- The clock is Redis ``TIME``: hosts with skewed clocks still agree on windows and leases.
- Keys are ``{prefix}:{u:<sub>}:slots|rate`` and ``{prefix}:{ip:<ip>}:rate|fails|ban``. The part in
  braces is the Redis Cluster hash tag, so each script touches one slot; ``<sub>`` is base64url of
  its UTF-8 bytes so no ``{``, ``}`` or ``:`` in a subject can move the tag or alias another key.
  Every key has a TTL: idle users and addresses vanish by themselves.
- Unreachable or failing Redis raises :class:`EngineUnavailable` within about a second (short
  socket timeouts, one immediate reconnect attempt, no backoff), so a handshake fails closed fast.
  redis-py reconnects on the next call: the engine recovers without a restart.
- Control events go through PUBLISH on ``{prefix}:control``; the subscriber task reconnects with
  capped backoff. Delivery is at most once (events published during an outage are lost).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
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
from redis.exceptions import RedisError

from app.engine.base import (
    Admitted,
    ControlEvent,
    ControlHandler,
    ControlKind,
    EngineUnavailable,
    IpVerdict,
    Refused,
    UserVerdict,
)
from app.engine.memory import normalize_ip
from app.errors import Code

log = structlog.get_logger("app.engine")

SOCKET_TIMEOUT_SECONDS = 1.0
PING_TIMEOUT_SECONDS = 1.0
SUBSCRIBER_BACKOFF_START = 0.1
SUBSCRIBER_BACKOFF_CAP = 5.0
# How long start() waits for the first subscription, so events published right after start are
# delivered; past it, start() returns and the subscriber keeps trying in the background.
SUBSCRIBE_WAIT_SECONDS = 2.0

SCRIPTS = ("check_ip", "admit_user", "renew", "count_connections", "record_auth_failure")
_KINDS: frozenset[str] = frozenset(get_args(ControlKind))
_VERDICTS = {1: Code.IP_BANNED, 2: Code.RATE_LIMITED, 3: Code.CONNECTION_LIMIT}
# Failures that mean "shared state is unreachable or refusing": the caller fails closed.
_UNAVAILABLE = (RedisError, OSError, asyncio.TimeoutError)


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
        self._handler: ControlHandler | None = None
        self._sub_client: aioredis.Redis | None = None
        self._subscriber: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
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
        if self._handler is not None:
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
    ) -> UserVerdict:
        keys = [self.user_key(sub, "slots"), self.user_key(sub, "rate")]
        args: list[str | int] = [
            conn_id, rate_limit, max_connections, lease_seconds, window, secrets.token_hex(8)
        ]
        return self._verdict(await self._run("admit_user", keys, args))

    async def release(self, sub: str, conn_id: str) -> None:
        try:
            await self._client.zrem(self.user_key(sub, "slots"), conn_id)
        except _UNAVAILABLE as exc:
            # The lease runs out by itself within lease_seconds; nothing else to do.
            log.warning("engine.release_failed", error=type(exc).__name__)

    async def renew(self, leases: Iterable[tuple[str, str]], *, lease_seconds: int) -> None:
        by_sub: defaultdict[str, list[str]] = defaultdict(list)
        for sub, conn_id in leases:
            by_sub[sub].append(conn_id)
        if not by_sub:
            return
        script = self._scripts["renew"]
        try:
            # One script per user (one hash slot each), all in one pipelined round trip.
            async with self._client.pipeline(transaction=False) as pipe:
                for sub, conn_ids in by_sub.items():
                    await script(
                        keys=[self.user_key(sub, "slots")], args=[lease_seconds, *conn_ids],
                        client=pipe,
                    )
                await pipe.execute()
        except _UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis renew: {type(exc).__name__}: {exc}") from exc

    async def count_connections(self, sub: str) -> int:
        return int(await self._run("count_connections", [self.user_key(sub, "slots")], []))

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

    async def _subscribe_forever(self) -> None:
        assert self._sub_client is not None
        backoff = SUBSCRIBER_BACKOFF_START
        lost = False
        while True:
            pubsub: PubSub = self._sub_client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                if lost:
                    log.info("engine.subscriber_restored", channel=self.channel)
                    lost = False
                backoff = SUBSCRIBER_BACKOFF_START
                self._subscribed.set()
                while True:
                    # A bounded wait, so a silently dead connection is noticed by the next read.
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._dispatch(message["data"])
            except _UNAVAILABLE as exc:
                self._subscribed.clear()
                if not lost:
                    log.warning(
                        "engine.subscriber_lost", channel=self.channel, error=type(exc).__name__
                    )
                    lost = True
            except Exception:
                # A bug here must not end cluster-wide messaging for this worker: log, go on.
                self._subscribed.clear()
                log.exception("engine.subscriber_error", channel=self.channel)
            finally:
                with contextlib.suppress(*_UNAVAILABLE):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, SUBSCRIBER_BACKOFF_CAP)

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
