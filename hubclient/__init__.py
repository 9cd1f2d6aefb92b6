"""A Python client library for the hub: reconnecting agents and dashboards.

>>> async with connect_dashboard("ws://127.0.0.1:8000", get_token) as dash:   # doctest: +SKIP
...     await dash.subscribe("*")
...     async for event in dash.events():
...         print(event.agent_id, event.payload)

See ``docs/clients.md`` for the reconnect policy by close code. This package does not import the
server (``app``): it needs only ``websockets``.
"""

from hubclient.backoff import Action, Backoff, Decision, decide_close, decide_status
from hubclient.client import (
    AgentClient,
    ClientOptions,
    CommandHandler,
    Connecting,
    DashboardClient,
    HubClient,
    TokenProvider,
    connect_agent,
    connect_dashboard,
)
from hubclient.errors import (
    AgentOffline,
    CommandError,
    CommandExpired,
    ConnectionLost,
    Forbidden,
    HubError,
    InvalidMessage,
    NotConnected,
    RateLimited,
    SessionTerminated,
    Unavailable,
)
from hubclient.messages import EventDelivery, JsonValue, Presence, Welcome

__all__ = [
    "Action",
    "AgentClient",
    "AgentOffline",
    "Backoff",
    "ClientOptions",
    "CommandError",
    "CommandExpired",
    "CommandHandler",
    "Connecting",
    "ConnectionLost",
    "DashboardClient",
    "Decision",
    "EventDelivery",
    "Forbidden",
    "HubClient",
    "HubError",
    "InvalidMessage",
    "JsonValue",
    "NotConnected",
    "Presence",
    "RateLimited",
    "SessionTerminated",
    "TokenProvider",
    "Unavailable",
    "Welcome",
    "connect_agent",
    "connect_dashboard",
    "decide_close",
    "decide_status",
]
