"""The hub's messages as seen by a client: frozen dataclasses and a strict parser.

These mirror the server's models (``docs/protocol.md``, "Messages") without importing the server:
``hubclient`` is installable and usable on its own, with ``websockets`` as its only dependency.
Unknown fields are ignored (the server may add fields); a frame of an unknown ``type`` parses to
:class:`Unknown` so that a newer server never breaks an older client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

JsonValue: TypeAlias = bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"] | None
"""Any JSON value (what ``json.loads`` can return)."""

MessageId: TypeAlias = str | int
"""A client message ``id``: a string of at most 128 characters or an integer within ±2**53."""


class ProtocolError(ValueError):
    """A frame from the server that is not a well-formed hub message."""


# --- server to client -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    """The first message of every session."""

    connection_id: str
    sub: str
    roles: list[str]
    tenant: str | None
    expires_at: int
    type: Literal["welcome"] = "welcome"
    # Report-only rollout: "unverified" when the hub admitted this client without a valid token;
    # then ``would_refuse`` is the code it will be refused with once the window ends.
    auth: str = "verified"
    would_refuse: str | None = None


@dataclass(frozen=True, slots=True)
class AuthExpiring:
    """The token expires soon: send ``auth.refresh`` with a new one."""

    expires_at: int
    seconds_left: int
    type: Literal["auth.expiring"] = "auth.expiring"


@dataclass(frozen=True, slots=True)
class AuthRefreshed:
    """A good ``auth.refresh``: the session now runs until ``expires_at``."""

    expires_at: int
    ref: MessageId | None = None
    type: Literal["auth.refreshed"] = "auth.refreshed"


@dataclass(frozen=True, slots=True)
class Error:
    """An error answer; the connection stays open unless a close follows."""

    error: str
    message: str
    ref: MessageId | None = None
    type: Literal["error"] = "error"


@dataclass(frozen=True, slots=True)
class Pong:
    ref: MessageId | None = None
    type: Literal["pong"] = "pong"


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The answer to ``subscribe``: the agents now watched (``["*"]`` for all); ``recovered``:
    for each agent named in ``since``, whether every missed event follows (false: some are lost)."""

    agents: list[str]
    ref: MessageId | None = None
    type: Literal["subscribed"] = "subscribed"
    recovered: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CommandAccepted:
    command_id: str
    ref: MessageId | None = None
    type: Literal["command.accepted"] = "command.accepted"


@dataclass(frozen=True, slots=True)
class CommandDelivery:
    """A command for this agent (``from_`` is the sending dashboard's ``sub``)."""

    command_id: str
    from_: str
    payload: JsonValue = None
    type: Literal["command"] = "command"


@dataclass(frozen=True, slots=True)
class ResultDelivery:
    """An agent's answer to a command this dashboard connection sent."""

    command_id: str
    agent_id: str
    payload: JsonValue = None
    type: Literal["result"] = "result"


@dataclass(frozen=True, slots=True)
class EventDelivery:
    """An event of a subscribed agent; ``seq`` counts that agent's events within ``epoch`` (None
    from a hub that does not number them)."""

    agent_id: str
    payload: JsonValue = None
    type: Literal["event"] = "event"
    seq: int | None = None
    epoch: str | None = None


@dataclass(frozen=True, slots=True)
class Presence:
    """A subscribed agent came online or went offline."""

    agent_id: str
    status: Literal["online", "offline"]
    type: Literal["presence"] = "presence"


@dataclass(frozen=True, slots=True)
class PresenceSnapshot:
    """The current presence of many subscribed agents at once (sent after ``subscribed`` for a
    large subscription instead of one ``presence`` per agent)."""

    agents: tuple[Presence, ...]
    type: Literal["presence.snapshot"] = "presence.snapshot"


@dataclass(frozen=True, slots=True)
class Unknown:
    """A message of a type this client does not know (kept whole in ``data``)."""

    type: str
    data: dict[str, JsonValue]


ServerMessage: TypeAlias = (
    Welcome | AuthExpiring | AuthRefreshed | Error | Pong | Subscribed | CommandAccepted
    | CommandDelivery | ResultDelivery | EventDelivery | Presence | PresenceSnapshot | Unknown
)


def _str(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"{data.get('type')}: {key} must be a string")
    return value


def _int(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{data.get('type')}: {key} must be a number")
    return int(value)


def _ref(data: dict[str, Any]) -> MessageId | None:
    value = data.get("ref")
    if value is None or (isinstance(value, str | int) and not isinstance(value, bool)):
        return value
    raise ProtocolError(f"{data.get('type')}: ref must be a string, an integer or null")


def _str_list(data: dict[str, Any], key: str) -> list[str]:
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ProtocolError(f"{data.get('type')}: {key} must be a list of strings")
    return list(value)


def parse_server(raw: str | bytes) -> ServerMessage:
    """Parse one text frame from the server. Raises :class:`ProtocolError` on a malformed one."""
    try:
        data: Any = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("not JSON") from exc
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError("not a JSON object with a type")
    kind: str = data["type"]
    if kind == "welcome":
        tenant = data.get("tenant")
        if tenant is not None and not isinstance(tenant, str):
            raise ProtocolError("welcome: tenant must be a string or null")
        return Welcome(
            connection_id=_str(data, "connection_id"),
            sub=_str(data, "sub"),
            roles=_str_list(data, "roles"),
            tenant=tenant,
            expires_at=_int(data, "expires_at"),
            auth=data["auth"] if isinstance(data.get("auth"), str) else "verified",
            would_refuse=data["would_refuse"] if isinstance(data.get("would_refuse"), str) else None,
        )
    if kind == "auth.expiring":
        return AuthExpiring(expires_at=_int(data, "expires_at"), seconds_left=_int(data, "seconds_left"))
    if kind == "auth.refreshed":
        return AuthRefreshed(expires_at=_int(data, "expires_at"), ref=_ref(data))
    if kind == "error":
        return Error(error=_str(data, "error"), message=_str(data, "message"), ref=_ref(data))
    if kind == "pong":
        return Pong(ref=_ref(data))
    if kind == "subscribed":
        return Subscribed(agents=_str_list(data, "agents"), ref=_ref(data),
                          recovered=_recovered(data))
    if kind == "command.accepted":
        return CommandAccepted(command_id=_str(data, "command_id"), ref=_ref(data))
    if kind == "command":
        return CommandDelivery(
            command_id=_str(data, "command_id"), from_=_str(data, "from"), payload=data.get("payload")
        )
    if kind == "result":
        return ResultDelivery(
            command_id=_str(data, "command_id"), agent_id=_str(data, "agent_id"), payload=data.get("payload")
        )
    if kind == "event":
        seq, epoch = data.get("seq"), data.get("epoch")
        numbered = isinstance(seq, int) and not isinstance(seq, bool) and isinstance(epoch, str)
        return EventDelivery(agent_id=_str(data, "agent_id"), payload=data.get("payload"),
                             seq=seq if numbered else None, epoch=epoch if numbered else None)
    if kind == "presence":
        return _presence(data)
    if kind == "presence.snapshot":
        agents = data.get("agents")
        if not isinstance(agents, list) or not all(isinstance(a, dict) for a in agents):
            raise ProtocolError("presence.snapshot: agents must be a list of objects")
        return PresenceSnapshot(agents=tuple(
            _presence(agent) for agent in agents if isinstance(agent, dict)
        ))
    return Unknown(type=kind, data=data)


def _recovered(data: dict[str, Any]) -> dict[str, bool]:
    value = data.get("recovered", {})
    if not isinstance(value, dict) or not all(isinstance(v, bool) for v in value.values()):
        raise ProtocolError("subscribed: recovered must map agent ids to booleans")
    return dict(value)


def _presence(data: dict[str, JsonValue]) -> Presence:
    status = data.get("status")
    if status == "online":
        return Presence(agent_id=_str(data, "agent_id"), status="online")
    if status == "offline":
        return Presence(agent_id=_str(data, "agent_id"), status="offline")
    raise ProtocolError("presence: status must be online or offline")


# --- client to server -------------------------------------------------------------------------


def _frame(kind: str, id: MessageId | None, **fields: JsonValue) -> str:
    message: dict[str, JsonValue] = {"type": kind, **fields}
    if id is not None:
        message["id"] = id
    return json.dumps(message, separators=(",", ":"))


def ping(id: MessageId | None = None) -> str:
    return _frame("ping", id)


def auth_refresh(token: str, id: MessageId | None = None) -> str:
    return _frame("auth.refresh", id, token=token)


def subscribe(
    agents: list[str] | Literal["*"], id: MessageId | None = None,
    since: dict[str, tuple[str, int]] | None = None,
) -> str:
    """``since``: agent id -> ``(epoch, seq)`` of the last event seen (missed ones are replayed)."""
    extra: dict[str, Any] = {}
    if since:
        extra["since"] = {agent: {"epoch": epoch, "seq": seq} for agent, (epoch, seq) in since.items()}
    return _frame("subscribe", id, agents="*" if agents == "*" else list(agents), **extra)


def command(agent_id: str, payload: JsonValue, id: MessageId | None = None) -> str:
    return _frame("command", id, agent_id=agent_id, payload=payload)


def result(command_id: str, payload: JsonValue, id: MessageId | None = None) -> str:
    return _frame("result", id, command_id=command_id, payload=payload)


def event(payload: JsonValue) -> str:
    return _frame("event", None, payload=payload)
