"""The hub's messages: one pydantic model per type, shared by the server and the docs.

Client messages are parsed with :func:`parse_client`, which raises :class:`MessageError` with
``invalid_message`` or ``unknown_type``; server messages are serialised with :func:`encode`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, ValidationError

from app.errors import Code

Id = Annotated[str, Field(max_length=128)] | Annotated[int, Field(ge=-(2**53), le=2**53)]
_ID = TypeAdapter[Any](Id)
Name = Annotated[str, Field(min_length=1, max_length=256)]


class _Client(BaseModel):
    # Unknown fields are ignored so that clients can add fields before the server knows them.
    model_config = ConfigDict(extra="ignore", frozen=True)
    id: Id | None = None


class Ping(_Client):
    type: Literal["ping"]


class AuthRefresh(_Client):
    type: Literal["auth.refresh"]
    token: Annotated[str, Field(max_length=16384)]


class Since(BaseModel):
    """Where a dashboard left one agent's events: the ``epoch`` and ``seq`` of the last one seen."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    epoch: Annotated[str, Field(max_length=64)]
    seq: Annotated[int, Field(ge=0, le=2**53)]


class Subscribe(_Client):
    """Dashboard: receive presence and events of these agents (``"*"``: all of the tenant's);
    ``since``: first the events missed after these points, from the agents' histories."""

    type: Literal["subscribe"]
    agents: Literal["*"] | Annotated[list[Name], Field(max_length=1000)]
    since: Annotated[dict[Name, Since], Field(max_length=1000)] | None = None


class Command(_Client):
    """Dashboard (role ``operator``): send ``payload`` to agent ``agent_id``."""

    type: Literal["command"]
    agent_id: Name
    payload: JsonValue = None


class Result(_Client):
    """Agent: the answer to command ``command_id``."""

    type: Literal["result"]
    command_id: Name
    payload: JsonValue = None


class Event(_Client):
    """Agent: an event for every dashboard subscribed to this agent."""

    type: Literal["event"]
    payload: JsonValue = None


ClientMessage = Annotated[
    Ping | AuthRefresh | Subscribe | Command | Result | Event, Field(discriminator="type")
]
_CLIENT = TypeAdapter[ClientMessage](ClientMessage)
CLIENT_TYPES = frozenset({"ping", "auth.refresh", "subscribe", "command", "result", "event"})


class MessageError(Exception):
    def __init__(self, code: Code, message: str, ref: object = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


def parse_client(raw: str) -> ClientMessage:
    """Parse one text frame. Raises MessageError (``invalid_message`` or ``unknown_type``), with
    ``ref`` set to the message's ``id`` when one could be read."""
    try:
        return _CLIENT.validate_json(raw)
    except ValidationError as exc:
        try:
            data: Any = json.loads(raw)
        except (ValueError, RecursionError):
            raise MessageError(Code.INVALID_MESSAGE, "not JSON") from None
        if not isinstance(data, dict):
            raise MessageError(Code.INVALID_MESSAGE, "not a JSON object") from None
        ref = valid_ref(data.get("id"))
        kind = data.get("type")
        if not isinstance(kind, str) or kind not in CLIENT_TYPES:
            raise MessageError(Code.UNKNOWN_TYPE, "unknown message type", ref) from None
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "message"
        raise MessageError(Code.INVALID_MESSAGE, f"{where}: {first['msg']}"[:200], ref) from None


class _Server(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)


class Welcome(_Server):
    type: Literal["welcome"] = "welcome"
    connection_id: str
    sub: str
    roles: list[str]
    tenant: str | None
    expires_at: int
    # Report-only rollout: "unverified" when admitted without a valid token for this endpoint;
    # then ``would_refuse`` is the code the handshake would have been refused with, and
    # ``expires_at`` the end of the report-only window.
    auth: Literal["verified", "unverified"] = "verified"
    would_refuse: str | None = None


class AuthExpiring(_Server):
    type: Literal["auth.expiring"] = "auth.expiring"
    expires_at: int
    seconds_left: int


class AuthRefreshed(_Server):
    type: Literal["auth.refreshed"] = "auth.refreshed"
    expires_at: int
    ref: Id | None = None


class Error(_Server):
    type: Literal["error"] = "error"
    error: str
    message: str
    ref: Id | None = None


class Pong(_Server):
    type: Literal["pong"] = "pong"
    ref: Id | None = None


class Subscribed(_Server):
    """The answer to ``subscribe``: what this dashboard now watches (``["*"]``: all agents)."""

    type: Literal["subscribed"] = "subscribed"
    agents: list[str]
    ref: Id | None = None
    # Per agent named in ``since``: true when every missed event is replayed after this message.
    recovered: dict[str, bool] = Field(default_factory=dict)


class CommandAccepted(_Server):
    type: Literal["command.accepted"] = "command.accepted"
    command_id: str
    ref: Id | None = None


class CommandDelivery(_Server):
    type: Literal["command"] = "command"
    command_id: str
    from_: str = Field(alias="from")
    payload: JsonValue = None


class ResultDelivery(_Server):
    type: Literal["result"] = "result"
    command_id: str
    agent_id: str
    payload: JsonValue = None


class EventDelivery(_Server):
    """An agent's event; ``seq`` counts that agent's events (+1 each) within ``epoch``."""

    type: Literal["event"] = "event"
    agent_id: str
    payload: JsonValue = None
    seq: int
    epoch: str


class Presence(_Server):
    type: Literal["presence"] = "presence"
    agent_id: str
    status: Literal["online", "offline"]


class AgentStatus(_Server):
    """One agent's presence inside a :class:`PresenceSnapshot`."""

    agent_id: str
    status: Literal["online", "offline"]


class PresenceSnapshot(_Server):
    """After ``subscribed``: the current presence of many agents at once (a batch of at most
    ``SNAPSHOT_BATCH``), so that a subscription of any size is a handful of messages."""

    type: Literal["presence.snapshot"] = "presence.snapshot"
    agents: list[AgentStatus]


ServerMessage = (
    Welcome | AuthExpiring | AuthRefreshed | Error | Pong | Subscribed | CommandAccepted
    | CommandDelivery
    | ResultDelivery | EventDelivery | Presence | PresenceSnapshot
)


def encode(message: ServerMessage) -> str:
    return message.model_dump_json(by_alias=True)


def valid_ref(value: object) -> str | int | None:
    """``value`` when it is a valid message ``id`` (so it can be echoed as ``ref``), else None.

    An out-of-range id (``2**53 + 1``, a 129-character string) in a message that is invalid for
    another reason too must still get its ``error`` answer, only without a ``ref``.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    try:
        _ID.validate_python(value, strict=True)
    except ValidationError:
        return None
    return value


def error(code: Code, message: str, ref: object = None) -> str:
    """An ``error`` message; never raises (a ``ref`` that is not a valid id is left out)."""
    return encode(Error(error=code.value, message=message, ref=valid_ref(ref)))
