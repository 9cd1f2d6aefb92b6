"""The agent client: answers the commands the hub delivers with its handler, and emits events.

A command is always answered (``{"error": "no_handler"}`` without a handler,
``{"error": "handler_failed", ...}`` when the handler raises) on the connection it was delivered
to; events are never queued while reconnecting (the hub stores none).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar, Unpack

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from hubclient import messages
from hubclient.errors import NotConnected
from hubclient.messages import CommandDelivery, Error, JsonValue, ServerMessage
from hubclient.options import ClientOptions, TokenProvider
from hubclient.session import HubClient

log = logging.getLogger("hubclient")

CommandHandler = Callable[[str, str, JsonValue], Awaitable[JsonValue]]
"""An agent's command handler: ``(command_id, from_sub, payload) -> result payload``."""


class AgentClient(HubClient):
    """An agent: answers commands with its handler and emits events."""

    endpoint: ClassVar[str] = "/ws/agent"

    def __init__(
        self,
        url: str | Sequence[str],
        token_provider: TokenProvider,
        *,
        on_command: CommandHandler | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(url, token_provider, **options)
        self._handler = on_command

    def set_command_handler(self, handler: CommandHandler | None) -> None:
        """Handle commands with ``handler`` from now on (``None``: answer ``no_handler``)."""
        self._handler = handler

    async def emit(self, payload: JsonValue) -> None:
        """Send an event to every dashboard subscribed to this agent. Raises
        :class:`NotConnected` while reconnecting (events are not queued: the hub stores none)."""
        ws = self._require()
        try:
            await ws.send(messages.event(payload))
        except ConnectionClosed:
            raise NotConnected("the session closed while sending") from None

    def _handle(self, ws: ClientConnection, message: ServerMessage) -> None:
        if isinstance(message, CommandDelivery):
            self._spawn(self._answer(ws, message))
        elif isinstance(message, Error):
            log.warning("hubclient.error", extra={"code": message.error, "ref": message.ref})

    async def _answer(self, ws: ClientConnection, command: CommandDelivery) -> None:
        handler = self._handler
        payload: JsonValue
        if handler is None:
            payload = {"error": "no_handler"}
        else:
            try:
                payload = await handler(command.command_id, command.from_, command.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("hubclient.handler_failed", extra={"command_id": command.command_id})
                payload = {"error": "handler_failed", "exception": type(exc).__name__}
        # The hub remembers the command on the connection it was delivered to: answer there.
        try:
            await ws.send(messages.result(command.command_id, payload))
        except ConnectionClosed:
            log.info("hubclient.result_dropped", extra={"command_id": command.command_id})
