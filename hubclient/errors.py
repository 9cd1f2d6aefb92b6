"""The exceptions of :mod:`hubclient`. Branch on the class (or on ``code``), never on the text."""

from __future__ import annotations


class HubError(Exception):
    """Base class of every error this package raises."""


class SessionTerminated(HubError):
    """The hub refused or closed the session for good: the client stopped and will not reconnect.

    Raised for a decision, not an accident: close 4403 (``kicked``, ``token_revoked``,
    ``identity_changed``, ``role_forbidden``, ``ip_banned``...), an HTTP 403 refusal, or too many
    handshakes refused with 401 in a row. ``close_code`` is the WebSocket close code (``None`` for an
    HTTP refusal), ``status`` the HTTP status (``None`` for a close), ``code`` the hub's code string
    (``"kicked"``...; ``""`` when the hub sent none).
    """

    def __init__(self, code: str, *, close_code: int | None = None, status: int | None = None) -> None:
        where = f"close {close_code}" if close_code is not None else f"HTTP {status}"
        super().__init__(f"the hub ended the session ({where}): {code or 'no reason given'}")
        self.code = code
        self.close_code = close_code
        self.status = status


class NotConnected(HubError):
    """The client has no open session right now (it is reconnecting, or it was closed)."""


class ConnectionLost(HubError):
    """The session closed while a command was waiting for its answer; the hub drops the answer
    of a closed dashboard connection, so the command's outcome is unknown."""


class CommandError(HubError):
    """The hub answered a ``command`` with an ``error`` (see the subclasses)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Forbidden(CommandError):
    """``forbidden``: the token lacks the ``operator`` role (or the message is not allowed)."""


class AgentOffline(CommandError):
    """``agent_offline``: the agent is not connected (or belongs to another tenant)."""


class CommandExpired(CommandError):
    """``command_expired``: no result came within the hub's command TTL (none will come now)."""


class InvalidMessage(CommandError):
    """``invalid_message``: a field has the wrong shape."""


class Unavailable(CommandError):
    """``unavailable``: the hub's shared state is unreachable; retry later."""


class RateLimited(CommandError):
    """``rate_limited``: this connection sends too fast; slow down."""


_BY_CODE: dict[str, type[CommandError]] = {
    "forbidden": Forbidden,
    "agent_offline": AgentOffline,
    "command_expired": CommandExpired,
    "invalid_message": InvalidMessage,
    "unavailable": Unavailable,
    "rate_limited": RateLimited,
}


def command_error(code: str, message: str) -> CommandError:
    """The exception for an ``error`` answer with ``code``."""
    return _BY_CODE.get(code, CommandError)(code, message)
