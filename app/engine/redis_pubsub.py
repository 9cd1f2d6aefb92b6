"""The Redis engine's messaging: control events and routed messages between workers.

Guarantees:

- Control events go on ``{<prefix>}:control``; routed messages on ``{<prefix>}:w:<worker_id>``
  (:meth:`RedisMessaging.send_to_worker`), ``{<prefix>}:ag:<tenant>:<agent>`` and
  ``{<prefix>}:ag:<tenant>:*`` (:meth:`RedisMessaging.publish_agent` publishes on both in one
  round trip). ``<tenant>`` and ``<agent>`` are base64url (never ``*``), so no id aliases another
  channel. One subscriber connection carries them all; its task reconnects with capped backoff
  and resubscribes every channel (control, own worker, every watched agent) each time. Delivery
  is at most once (messages published during an outage or a failover are lost).
- Messages of one worker reach each other worker in the order they were published, whatever
  their channels, on every topology. On a single primary and on Sentinel that is classic
  PUBLISH / SUBSCRIBE on the primary. On a Redis Cluster every channel carries the hash tag
  ``{<prefix>}``, so all of them live in one slot and go through sharded pub/sub (SPUBLISH /
  SSUBSCRIBE) on the primary that owns it: classic PUBLISH would go to the node of each channel's
  own slot and lose the order between channels. The price: messaging is carried by one shard
  (as by the one primary of the other topologies); keys stay spread over all of them.
- After a failover the subscriber reconnects to the new primary: the Sentinel client asks the
  sentinels again, the cluster subscriber re-reads the slot map first (a pub/sub connection does
  not refresh it by itself), and a shard that moves away (``sunsubscribe`` from Redis) makes it
  reconnect too.
- A worker watching an agent *and* ``*`` of its tenant gets each message on both channels; it
  delivers the tenant-wide copy only, so each message reaches its handler once.
- Routed messages go to the handler through a :class:`~app.engine._delivery.MessageInbox` (one
  consumer task, arrival order kept, bounded; the subscriber loop never waits for the handler).
  Control events keep a task each (:class:`~app.engine._delivery.ControlDelivery`).
- Round trips: one per publish, except :meth:`RedisMessaging.watch` /
  :meth:`RedisMessaging.unwatch`, which send SUBSCRIBE / UNSUBSCRIBE on the subscriber connection
  when the count leaves / reaches zero (and wait up to ``WATCH_WAIT_SECONDS`` for Redis to confirm
  a new subscription). Publishing fails with :class:`EngineUnavailable`; watching never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, get_args

import redis.asyncio as aioredis
import structlog
from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError

from app.engine._delivery import WILDCARD, ControlDelivery, MessageInbox
from app.engine._redis_client import (
    UNAVAILABLE,
    Client,
    RedisTarget,
    aclose,
    subscriber_client,
    tag,
    text,
)
from app.engine.base import (
    ControlEvent,
    ControlHandler,
    ControlKind,
    EngineUnavailable,
    MessageHandler,
)
from app.engine.redis_pipe import hot_path

log = structlog.get_logger("app.engine")

# What redis-py raises on a reply it cannot take apart, seen during a Sentinel failover (its
# PubSub.handle_message indexing a reply that was not a list: KeyError 0): the connection's state
# is unknown, so it is dropped and the subscriptions made afresh, as for a lost connection.
GARBLED = (KeyError, IndexError, TypeError)
SUBSCRIBER_BACKOFF_START = 0.1
# Low, so the subscriber is back within about a second of a replica's promotion.
SUBSCRIBER_BACKOFF_CAP = 0.5
# How long start() waits for the first subscription, so events published right after start are
# delivered; past it, start() returns and the subscriber keeps trying in the background.
SUBSCRIBE_WAIT_SECONDS = 2.0
# How long watch() waits for Redis to confirm a new subscription (so a message published right
# after it returns is received); past it, watch() returns and the subscription follows later.
WATCH_WAIT_SECONDS = 1.0

_KINDS: frozenset[str] = frozenset(get_args(ControlKind))
# Sharded pub/sub's message types, as their classic counterparts.
_SHARDED = {"smessage": "message", "ssubscribe": "subscribe", "sunsubscribe": "unsubscribe"}


class RedisMessaging:
    """Pub/sub of one worker (see the module docstring for its guarantees).

    Publishes with the engine's ``client`` (never closed here); subscribes on a connection of its
    own, opened by :meth:`start` when a handler is set.
    """

    def __init__(self, client: Client, *, target: RedisTarget, prefix: str, worker_id: str) -> None:
        self.worker_id = worker_id
        self.prefix = prefix
        # One hash tag for every channel: one slot on a cluster (see the module docstring).
        self._tag = f"{{{prefix}}}"
        self.channel = f"{self._tag}:control"
        self.worker_channel = self.worker_channel_of(worker_id)
        self._client = client
        # Routed messages and the engine's scripts of every handshake and message share one
        # pipelined connection (redis-py's pipelines on a cluster).
        self.batch = hot_path(client, target, f"{prefix}:{worker_id}:hot")
        self._target = target
        self._sharded = target.cluster
        self._publish_command = "SPUBLISH" if self._sharded else "PUBLISH"
        self._control = ControlDelivery()
        self._inbox = MessageInbox()
        self._sub_client: aioredis.Redis | None = None
        # Set when Redis moved a shard channel away (an unsubscribe nobody asked for): the
        # subscriber reconnects. Counts the unsubscribes asked for and not yet confirmed.
        self._moved = False
        self._unsubscribing: dict[str, int] = {}
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

    # -- channels -----------------------------------------------------------------------------

    def agent_channel(self, tenant: str, agent_id: str) -> str:
        """The channel of one agent's messages; ``agent_id="*"`` is the tenant-wide channel
        (base64url never yields ``*``, so no agent id can alias it)."""
        agent = WILDCARD if agent_id == WILDCARD else tag(agent_id)
        return f"{self._tag}:ag:{tag(tenant)}:{agent}"

    def worker_channel_of(self, worker_id: str) -> str:
        return f"{self._tag}:w:{worker_id}"

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """True once the subscriber task runs (it then runs until :meth:`close`)."""
        return self._subscriber is not None

    async def start(self) -> None:
        """Start the subscriber when a handler is set; wait up to ``SUBSCRIBE_WAIT_SECONDS`` for
        its first subscription."""
        if self._subscriber is not None:
            return
        if self._control.handler is not None or self._inbox.handler is not None:
            self._subscriber = asyncio.create_task(self._subscribe_forever(), name="engine-sub")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), SUBSCRIBE_WAIT_SECONDS)

    async def close(self) -> None:
        """Stop the subscriber and the deliveries; close the subscriber connection."""
        subscriber = self._subscriber
        if subscriber is not None:
            subscriber.cancel()
        await self._control.close()
        if subscriber is not None:
            await asyncio.gather(subscriber, return_exceptions=True)
        await self._inbox.close()
        await self._close_sub_client()
        await self.batch.aclose()

    async def _close_sub_client(self) -> None:
        if self._sub_client is not None:
            await aclose(self._sub_client)
            self._sub_client = None

    # -- control events -----------------------------------------------------------------------

    async def publish(self, event: ControlEvent) -> None:
        payload = json.dumps(
            {"kind": event.kind, "data": event.data, "from": self.worker_id}, separators=(",", ":")
        )
        try:
            await self._client.execute_command(self._publish_command, self.channel, payload)
        except UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis publish: {type(exc).__name__}: {exc}") from exc

    def subscribe(self, handler: ControlHandler) -> None:
        self._control.handler = handler

    # -- routing ------------------------------------------------------------------------------

    def on_message(self, handler: MessageHandler) -> None:
        self._inbox.handler = handler

    async def send_to_worker(self, worker_id: str, message: str) -> None:
        try:
            await self.batch.call(self._publish_command, self.worker_channel_of(worker_id), message)
        except UNAVAILABLE as exc:
            raise EngineUnavailable(f"redis send_to_worker: {type(exc).__name__}: {exc}") from exc

    async def publish_agent(self, tenant: str, agent_id: str, message: str) -> None:
        commands = [(self._publish_command, self.agent_channel(tenant, agent_id), message)]
        if agent_id != WILDCARD:
            commands.append((self._publish_command, self.agent_channel(tenant, WILDCARD), message))
        try:
            # Raw commands: a cluster pipeline refuses its publish method. One slot: one node.
            await self.batch.call_many(*commands)
        except UNAVAILABLE as exc:
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
                    await self._subscribe(pubsub, channel)
                else:
                    await self._unsubscribe(pubsub, channel)
            except UNAVAILABLE as exc:
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
        if self._control.handler is not None:
            channels.append(self.channel)
        if self._inbox.handler is not None:
            channels.append(self.worker_channel)
        return channels

    async def _subscribe(self, pubsub: PubSub, *channels: str) -> None:
        if self._sharded:
            await pubsub.ssubscribe(*channels)
        else:
            await pubsub.subscribe(*channels)

    async def _unsubscribe(self, pubsub: PubSub, channel: str) -> None:
        if self._sharded:
            self._unsubscribing[channel] = self._unsubscribing.get(channel, 0) + 1
            await pubsub.sunsubscribe(channel)
        else:
            await pubsub.unsubscribe(channel)

    async def _open_pubsub(self) -> PubSub:
        """A pub/sub connection to the primary that carries this worker's channels now."""
        if self._sub_client is None or self._sharded:
            # On a cluster, anew each time: the owner of the messaging slot may have changed.
            await self._close_sub_client()
            self._sub_client = await subscriber_client(
                self._target, self.channel, f"{self.prefix}:{self.worker_id}:sub"
            )
        return self._sub_client.pubsub()

    async def _subscribe_forever(self) -> None:
        backoff = SUBSCRIBER_BACKOFF_START
        lost = False
        while True:
            pubsub: PubSub | None = None
            try:
                pubsub = await self._open_pubsub()
                async with self._sub_lock:
                    # Everything at once, watched agents included: after a reconnect nothing
                    # that was watched is left out.
                    channels = [*self._base_channels(), *self._watch_channels]
                    self._initial_pending = set(channels)
                    self._confirmed.clear()
                    self._unsubscribing.clear()
                    self._moved = False
                    await self._subscribe(pubsub, *channels)
                    self._pubsub = pubsub
                if lost:
                    log.info("engine.subscriber_restored", channel=self.channel)
                    lost = False
                backoff = SUBSCRIBER_BACKOFF_START
                while True:
                    # A bounded wait, so a silently dead connection is noticed by the next read.
                    try:
                        message = await pubsub.get_message(timeout=1.0)
                    except GARBLED as exc:
                        raise RedisConnectionError(f"unreadable reply: {exc!r}") from exc
                    if message is not None:
                        self._on_pubsub(message)
                    if self._moved:
                        raise RedisConnectionError("a shard channel moved to another node")
            except UNAVAILABLE as exc:
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
                if pubsub is not None:
                    with contextlib.suppress(*UNAVAILABLE):
                        await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, SUBSCRIBER_BACKOFF_CAP)

    def _on_pubsub(self, message: dict[str, Any]) -> None:
        kind = _SHARDED.get(text(message.get("type")), message.get("type"))
        channel = text(message.get("channel", b""))
        if kind == "unsubscribe":
            self._confirmed.discard(channel)
            asked = self._unsubscribing.get(channel, 0)
            if asked > 1:
                self._unsubscribing[channel] = asked - 1
            elif asked == 1:
                del self._unsubscribing[channel]
            elif self._sharded:
                # Not asked for: Redis moved the slot away (a failover, a resharding).
                self._moved = True
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
            self._inbox.put(text(data))
        else:
            key = self._watch_channels.get(channel)
            if key is not None and (key[1] == WILDCARD or not self._tenant_copy_coming(key[0])):
                self._inbox.put(text(data))

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
        if event is None:
            log.warning("engine.bad_control_event", channel=self.channel)
            return
        # A task per event: a slow handler must not stall the subscriber (Redis drops a pubsub
        # client whose output buffer grows), and the loop starts tasks in arrival order.
        self._control.put(event)


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
