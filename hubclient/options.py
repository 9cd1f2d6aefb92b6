"""What a client is configured with: the token provider, the keyword options, the URL(s).

Shared by :mod:`hubclient.session` and the two kinds of client; re-exported by
:mod:`hubclient.client` and :mod:`hubclient`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypedDict
from urllib.parse import urlsplit, urlunsplit

from hubclient.backoff import Backoff

TokenProvider = Callable[[], Awaitable[str]]
"""An async callable returning a fresh access token (like centrifuge-js ``getToken``)."""
Sleep = Callable[[float], Awaitable[None]]


class ClientOptions(TypedDict, total=False):
    """Keyword options shared by :func:`connect_agent` and :func:`connect_dashboard`."""

    backoff: Backoff
    """The reconnect schedule (default ``Backoff()``: 0.5 s doubling to 30 s, half jitter)."""
    sleep: Sleep
    """Waits between attempts (default :func:`asyncio.sleep`; inject a fake to control time)."""
    refresh: bool
    """Answer ``auth.expiring`` with ``auth.refresh`` (default ``True``)."""
    max_auth_failures: int
    """Handshakes refused with 401 in a row before giving up (default 3)."""
    open_timeout: float
    """Seconds for the TCP+WebSocket handshake and the ``welcome`` (default 10)."""
    restart_jitter: float
    """Upper bound of the random pause before reconnecting after 1012 (default 0.25 s)."""


def resolve_url(url: str, endpoint: str) -> str:
    """``ws://host:port`` (no path) becomes ``ws://host:port/ws/agent`` (or dashboard)."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
    if parts.path in ("", "/"):
        parts = parts._replace(path=endpoint)
    return urlunsplit(parts)
