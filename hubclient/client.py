"""Reconnecting clients of the hub on the ``websockets`` asyncio client.

:func:`connect_agent` and :func:`connect_dashboard` return a client that is started by awaiting it
(or by ``async with``). A client owns one background task that connects, reads every frame,
refreshes the token in-band when the hub sends ``auth.expiring``, and reconnects by the policy of
:mod:`hubclient.backoff` until it is closed or the hub ends the session for good
(:class:`~hubclient.errors.SessionTerminated`).

The token comes from ``token_provider``, an async callable returning a fresh access token; it is
called before every connection attempt and for every refresh, and the token only ever travels in
the ``Authorization: Bearer`` header or in an ``auth.refresh`` message (never logged, never in a
URL).

The implementation is split by concept; everything stays importable from here (and from
:mod:`hubclient`):

- :mod:`hubclient.options`: :data:`TokenProvider`, :class:`ClientOptions`;
- :mod:`hubclient.session`: :class:`HubClient`, the reconnecting connection loop;
- :mod:`hubclient.agent`: :class:`AgentClient`, :data:`CommandHandler`;
- :mod:`hubclient.dashboard`: :class:`DashboardClient`;
- :mod:`hubclient.feed`: :class:`Feed`, :class:`FeedIterator` (``events()``, ``presence()``);
- this module: :func:`connect_agent`, :func:`connect_dashboard` and :class:`Connecting`.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, Generic, TypeVar, Unpack

from hubclient.agent import AgentClient, CommandHandler
from hubclient.dashboard import DashboardClient
from hubclient.feed import Feed, FeedIterator
from hubclient.options import ClientOptions, Sleep, TokenProvider
from hubclient.session import HubClient

__all__ = [
    "AgentClient",
    "ClientOptions",
    "CommandHandler",
    "Connecting",
    "DashboardClient",
    "Feed",
    "FeedIterator",
    "HubClient",
    "Sleep",
    "TokenProvider",
    "connect_agent",
    "connect_dashboard",
]

C = TypeVar("C", bound=HubClient)


class Connecting(Generic[C]):
    """What :func:`connect_agent` / :func:`connect_dashboard` return: ``await`` it for a started
    client, or use ``async with`` to have it closed at the end of the block."""

    def __init__(self, client: C) -> None:
        self.client = client

    def __await__(self) -> Generator[Any, None, C]:
        return self._start().__await__()

    async def _start(self) -> C:
        await self.client.start()
        return self.client

    async def __aenter__(self) -> C:
        return await self._start()

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()


def connect_agent(
    url: str | Sequence[str],
    token_provider: TokenProvider,
    *,
    on_command: CommandHandler | None = None,
    **options: Unpack[ClientOptions],
) -> Connecting[AgentClient]:
    """Connect an agent to ``url`` (``ws://host:port`` or a list of them, tried in turn; a bare
    host gets ``/ws/agent``). ``on_command(command_id, from_sub, payload)`` returns the result
    payload; an exception in it is answered ``{"error": "handler_failed", ...}``."""
    return Connecting(AgentClient(url, token_provider, on_command=on_command, **options))


def connect_dashboard(
    url: str | Sequence[str],
    token_provider: TokenProvider,
    **options: Unpack[ClientOptions],
) -> Connecting[DashboardClient]:
    """Connect a dashboard to ``url`` (``ws://host:port`` or a list; a bare host gets
    ``/ws/dashboard``). The token needs ``dashboard`` (and ``operator`` to send commands)."""
    return Connecting(DashboardClient(url, token_provider, **options))
