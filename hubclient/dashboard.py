"""The dashboard client: subscribes to agents, reads their events and presence, sends commands.

The subscription is re-sent after every reconnect, with ``since``: the last ``(epoch, seq)`` seen of
each agent, so the hub replays what was missed (each event once, in order); ``subscriptions()``
tells whether that recovery was complete. ``events()`` and ``presence()`` iterate across
reconnects; a command's result is matched to it even when it overtakes ``command.accepted``, an
error about it (``agent_offline`` when the agent left) ends it even when it comes right behind
the acceptance, and a command whose session closes before its result raises
:class:`~hubclient.errors.ConnectionLost`.
"""

# Public coroutines take ``timeout=`` like the websockets API they sit on (ASYNC109).
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import ClassVar, Literal, Unpack

from websockets.asyncio.client import ClientConnection

from hubclient import messages
from hubclient.errors import ConnectionLost, command_error
from hubclient.feed import Feed, FeedIterator
from hubclient.messages import (
    CommandAccepted,
    Error,
    EventDelivery,
    JsonValue,
    MessageId,
    Presence,
    PresenceSnapshot,
    ProtocolError,
    ResultDelivery,
    ServerMessage,
    Subscribed,
    Welcome,
)
from hubclient.options import ClientOptions, TokenProvider
from hubclient.session import HubClient

log = logging.getLogger("hubclient")


class DashboardClient(HubClient):
    """A dashboard: subscribes to agents, reads their presence and events, sends commands."""

    endpoint: ClassVar[str] = "/ws/dashboard"

    def __init__(
        self,
        url: str | Sequence[str],
        token_provider: TokenProvider,
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(url, token_provider, **options)
        self._subscription: list[str] | Literal["*"] | None = None
        self._events: Feed[EventDelivery] = Feed()
        self._presence: Feed[Presence] = Feed()
        # Each command in flight has one future from its send on: found by its ref (an error, a
        # disconnect) and, once accepted, by its command id (its result).
        self._commands: dict[MessageId, asyncio.Future[ResultDelivery]] = {}
        self._results: dict[str, asyncio.Future[ResultDelivery]] = {}
        self._early: OrderedDict[str, ResultDelivery] = OrderedDict()
        self._subscribed: Feed[Subscribed] = Feed()
        # agent_id -> (epoch, seq) of the last event received: `since` on every resubscribe.
        self.positions: dict[str, tuple[str, int]] = {}

    def events(self) -> FeedIterator[EventDelivery]:
        """Events of the subscribed agents, from now on, across reconnects."""
        return self._events.iterate()

    def presence(self) -> FeedIterator[Presence]:
        """Presence changes of the subscribed agents (and the statuses sent after each
        ``subscribe``, including the automatic one after a reconnect)."""
        return self._presence.iterate()

    def subscriptions(self) -> FeedIterator[Subscribed]:
        """The hub's answer to every (re)subscribe, the automatic ones after a reconnect
        included: ``recovered[agent]`` is False when events of that agent were lost for good
        (history trimmed or restarted); the caller should then reload that agent's state."""
        return self._subscribed.iterate()

    async def subscribe(
        self, agents: Sequence[str] | Literal["*"], timeout: float = 10.0,
        since: dict[str, tuple[str, int]] | None = None,
    ) -> list[str]:
        """Watch ``agents`` (or ``"*"``: all, including those that come online later); replaces
        the previous subscription and is re-sent after every reconnect, with the positions of
        the events received (``since`` adds positions saved elsewhere, e.g. before a restart).
        Returns what the hub confirmed (``["*"]`` for all)."""
        wanted: list[str] | Literal["*"] = "*" if agents == "*" else list(agents)
        self._subscription = wanted
        self.positions.update(since or {})
        async with asyncio.timeout(timeout):
            await self.wait_connected()
            ws = self._require()
            ref = self._next_id("s")
            answer = await self._request(ws, self._subscribe_frame(ref), ref)
        if isinstance(answer, Subscribed):
            self._note_subscribed(answer)
            return answer.agents
        if isinstance(answer, Error):
            raise command_error(answer.error, answer.message)
        raise ProtocolError(f"unexpected answer to subscribe: {answer.type}")

    async def send_command(
        self, agent_id: str, payload: JsonValue = None, timeout: float = 30.0
    ) -> JsonValue:
        """Send ``payload`` to ``agent_id`` and return the agent's result payload.

        Raises :class:`~hubclient.errors.Forbidden` (no ``operator`` role),
        :class:`~hubclient.errors.AgentOffline`, the other
        :class:`~hubclient.errors.CommandError` subclasses, :class:`NotConnected`,
        :class:`ConnectionLost` (closed before the result; its outcome is unknown) or
        :class:`TimeoutError`.
        """
        ws = self._require()
        ref = self._next_id("c")
        # Made before the send: the reader may handle the acceptance and what follows it (an
        # error about this command, the session's close) before this task resumes.
        future: asyncio.Future[ResultDelivery] = asyncio.get_running_loop().create_future()
        self._commands[ref] = future
        command_id: str | None = None
        try:
            async with asyncio.timeout(timeout):
                answer = await self._request(ws, messages.command(agent_id, payload, ref), ref)
                if isinstance(answer, Error):
                    raise command_error(answer.error, answer.message)
                if not isinstance(answer, CommandAccepted):
                    raise ProtocolError(f"unexpected answer to command: {answer.type}")
                command_id = answer.command_id
                # A session that ended since has failed the future (ConnectionLost).
                early = self._early.pop(command_id, None)
                if early is not None and not future.done():
                    future.set_result(early)
                self._results[command_id] = future
                result = await future
        finally:
            self._commands.pop(ref, None)
            if command_id is not None:
                self._results.pop(command_id, None)
            if future.done() and not future.cancelled():
                # Failed by a disconnect just as the timeout cancelled this task: retrieved
                # here, not reported by asyncio as "Future exception was never retrieved".
                future.exception()
        return result.payload

    async def _on_welcome(self, ws: ClientConnection, welcome: Welcome) -> None:
        if self._subscription is not None:
            # Answered by `subscribed` (no waiter: ignored) then the presence of every agent.
            await ws.send(self._subscribe_frame(self._next_id("s")))

    def _subscribe_frame(self, ref: MessageId) -> str:
        wanted = self._subscription or []
        since = {a: p for a, p in self.positions.items() if wanted == "*" or a in wanted}
        return messages.subscribe(wanted, ref, since=since)

    def _handle(self, ws: ClientConnection, message: ServerMessage) -> None:
        if isinstance(message, EventDelivery):
            if message.seq is not None and message.epoch is not None:
                self.positions[message.agent_id] = (message.epoch, message.seq)
            self._events.publish(message)
        elif isinstance(message, Subscribed):
            self._note_subscribed(message)
        elif isinstance(message, Presence):
            self._presence.publish(message)
        elif isinstance(message, PresenceSnapshot):
            # A large subscription's statuses come batched; readers see one Presence per agent.
            for presence in message.agents:
                self._presence.publish(presence)
        elif isinstance(message, ResultDelivery):
            future = self._results.get(message.command_id)
            if future is not None:
                if not future.done():
                    future.set_result(message)
            else:
                # The result overtook its command.accepted (the two travel different paths).
                self._early[message.command_id] = message
                while len(self._early) > 1000:
                    self._early.popitem(last=False)
        elif isinstance(message, Error):
            future = self._commands.get(message.ref) if message.ref is not None else None
            if future is not None and not future.done():
                # e.g. agent_offline after command.accepted: the agent vanished meanwhile.
                future.set_exception(command_error(message.error, message.message))
            else:
                log.warning("hubclient.error", extra={"code": message.error, "ref": message.ref})

    def _note_subscribed(self, message: Subscribed) -> None:
        lost = sorted(agent for agent, ok in message.recovered.items() if not ok)
        if lost:
            log.warning("hubclient.recovery_incomplete", extra={"agents": lost})
        self._subscribed.publish(message)

    def _on_disconnect(self, lost: ConnectionLost) -> None:
        for future in self._commands.values():
            if not future.done():
                future.set_exception(lost)

    def _ended(self, error: BaseException | None) -> None:
        self._events.end(error)
        self._presence.end(error)
        self._subscribed.end(error)
