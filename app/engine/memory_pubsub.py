"""The embedded engine's messaging: control events and routed messages inside this process.

Guarantees (the embedded engine serves exactly one worker):

- :meth:`LocalMessaging.publish` schedules the control handler (a task per event, never called
  inline): a handler that publishes does not recurse into itself, and the publisher neither waits
  on nor fails with the handler, as on Redis.
- Routed messages (:meth:`LocalMessaging.send_to_worker` for this worker,
  :meth:`LocalMessaging.publish_agent` for a watched agent) go through a
  :class:`~app.engine._delivery.MessageInbox`: scheduled, never called inline, delivered in order
  by one consumer task, as on Redis. A message for another worker is dropped. A message for an
  agent watched both by id and by ``*`` is delivered once.
- Watches are counted: each :meth:`LocalMessaging.watch` needs one :meth:`LocalMessaging.unwatch`.
- After :meth:`LocalMessaging.close` nothing is delivered any more.
"""

from __future__ import annotations

from app.engine._delivery import WILDCARD, ControlDelivery, MessageInbox
from app.engine.base import ControlEvent, ControlHandler, MessageHandler


class LocalMessaging:
    """Control-event and routed-message delivery of one in-process worker."""

    def __init__(self, *, worker_id: str) -> None:
        self.worker_id = worker_id
        self._control = ControlDelivery()
        self._inbox = MessageInbox()
        # (tenant, agent_id or "*") -> watch count.
        self._watches: dict[tuple[str, str], int] = {}
        self._closed = False

    async def close(self) -> None:
        """Stop delivering; cancel control deliveries still running. Idempotent."""
        self._closed = True
        await self._control.close()
        await self._inbox.close()

    # -- control events ----------------------------------------------------------------------

    def subscribe(self, handler: ControlHandler) -> None:
        self._control.handler = handler

    async def publish(self, event: ControlEvent) -> None:
        if not self._closed:
            self._control.put(event)

    # -- routing -----------------------------------------------------------------------------

    def on_message(self, handler: MessageHandler) -> None:
        self._inbox.handler = handler

    async def send_to_worker(self, worker_id: str, message: str) -> None:
        if worker_id == self.worker_id and not self._closed:
            self._inbox.put(message)

    async def publish_agent(self, tenant: str, agent_id: str, message: str) -> None:
        watched = (tenant, agent_id) in self._watches or (tenant, WILDCARD) in self._watches
        if watched and not self._closed:
            self._inbox.put(message)

    async def watch(self, tenant: str, agent_id: str) -> None:
        key = (tenant, agent_id)
        self._watches[key] = self._watches.get(key, 0) + 1

    async def unwatch(self, tenant: str, agent_id: str) -> None:
        key = (tenant, agent_id)
        count = self._watches.get(key, 0)
        if count <= 1:
            self._watches.pop(key, None)
        else:
            self._watches[key] = count - 1
