"""``GET /asyncapi.json``: the AsyncAPI 3.0 document of both WebSocket endpoints.

Generated from the pydantic models that validate and serialise the messages (:mod:`app.messages`)
and from the table of codes (:mod:`app.errors`), so the document cannot drift from the server.
``docs/asyncapi.json`` is a committed copy (a test compares the two); regenerate it with
``python -m app.asyncapi > docs/asyncapi.json``.

Guarantees: the document is deterministic (same models, same bytes); every message type of
:data:`app.messages.ClientMessage` and :data:`app.messages.ServerMessage` appears, on the endpoints
that use it; building it raises :class:`LookupError` for a message type no endpoint is assigned to
(so a new message cannot be left out silently). What JSON Schema cannot say (the ``bearer.<jwt>``
subprotocol, close codes, the order of messages) is in descriptions and ``x-`` fields.
"""

from __future__ import annotations

import json
import sys
from typing import Any, get_args

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel

from app import messages
from app.errors import TABLE, Code
from app.roles import Endpoint

VERSION = "0.1.0"
REF = "#/components/schemas/{model}"

# Which endpoint sends (client) or receives (server) each message type. "both" means both.
# A type may be listed before its model exists; only the types of the unions are emitted.
_CLIENT_ENDPOINTS: dict[str, tuple[str, ...]] = {
    "ping": ("agent", "dashboard"),
    "auth.refresh": ("agent", "dashboard"),
    "subscribe": ("dashboard",),
    "command": ("dashboard",),
    "result": ("agent",),
    "event": ("agent",),
}
_SERVER_ENDPOINTS: dict[str, tuple[str, ...]] = {
    "welcome": ("agent", "dashboard"),
    "auth.expiring": ("agent", "dashboard"),
    "auth.refreshed": ("agent", "dashboard"),
    "error": ("agent", "dashboard"),
    "pong": ("agent", "dashboard"),
    "subscribed": ("dashboard",),
    "command.accepted": ("dashboard",),
    "command": ("agent",),
    "result": ("dashboard",),
    "event": ("dashboard",),
    "presence": ("dashboard",),
    "presence.snapshot": ("dashboard",),
}
# The server's answer (carrying ``ref``) to a client message (carrying ``id``), besides ``error``.
_ANSWERS: dict[str, tuple[str, ...]] = {
    "ping": ("pong",),
    "auth.refresh": ("auth.refreshed",),
    "subscribe": ("subscribed",),
    "command": ("command.accepted",),
}

_CONNECTION = """\
The token travels, in this order of precedence: `Authorization: Bearer <jwt>`; the WebSocket \
subprotocol list `["hub.v1", "bearer.<jwt>"]` (browsers cannot set headers; the server selects \
`hub.v1`); the query parameter `token` when the server allows it. A refused handshake is an HTTP \
status with a JSON body `{"error": CODE, "message": TEXT}`; a client that offered `hub.v1` gets it \
instead (except `ip_banned` and the per-address `rate_limited`) as a socket accepted and closed at \
once with the close code of `x-codes` and CODE as the reason. The first message of a session is \
`welcome`. Text frames of one JSON object each; binary frames close 1003, frames over the size \
limit close 1009. A client message may carry `id`; the server's answer carries `ref` with it."""


def _models(union: Any) -> list[type[BaseModel]]:
    args = get_args(union)
    if len(args) == 1 or (args and not isinstance(args[0], type)):
        args = get_args(args[0])  # Annotated[Union[...], Field(...)]
    return [arg for arg in args if isinstance(arg, type) and issubclass(arg, BaseModel)]


def _type_of(model: type[BaseModel]) -> str:
    field = model.model_fields["type"]
    (value,) = get_args(field.annotation)
    return str(value)


def _schema(model: type[BaseModel], server: bool, schemas: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(
        by_alias=True, mode="serialization" if server else "validation", ref_template=REF
    )
    for name, definition in schema.pop("$defs", {}).items():
        if schemas.setdefault(name, definition) != definition:
            # Each model's schema is generated on its own: one name must mean one shape.
            raise ValueError(f"app/asyncapi.py: two different schemas are both named {name!r}")
    if server:
        # The server serialises every field (``encode`` drops nothing), so every one is present.
        schema["required"] = list(schema["properties"])
    elif "type" not in schema.get("required", []):
        schema["required"] = ["type", *schema.get("required", [])]
    return schema


def _message(model: type[BaseModel], server: bool, schemas: dict[str, Any]) -> dict[str, Any]:
    kind = _type_of(model)
    payload = _schema(model, server, schemas)
    message: dict[str, Any] = {
        "name": kind,
        "title": f"{kind} ({'server to client' if server else 'client to server'})",
        "contentType": "application/json",
        "payload": payload,
    }
    if model.__doc__ and model.__doc__.strip():
        message["summary"] = model.__doc__.strip().splitlines()[0]
    key = "ref" if server else "id"
    if key in payload["properties"]:
        message["correlationId"] = {"$ref": f"#/components/correlationIds/{key}"}
    return message


def _codes() -> dict[str, Any]:
    return {
        code.value: {
            key: value for key, value in (
                ("httpStatus", spec.status or None), ("closeCode", spec.close or None),
                ("httpOnly", spec.http_only or None), ("message", spec.message),
            ) if value is not None
        }
        for code, spec in TABLE.items()
    }


def build() -> dict[str, Any]:
    """The AsyncAPI 3.0 document (a fresh dict each call)."""
    schemas: dict[str, Any] = {}
    component_messages: dict[str, Any] = {}
    by_endpoint: dict[str, dict[str, list[str]]] = {
        e.value: {"client": [], "server": []} for e in Endpoint
    }
    keys: dict[tuple[str, str], str] = {}
    for side, union, table in (
        ("client", messages.ClientMessage, _CLIENT_ENDPOINTS),
        ("server", messages.ServerMessage, _SERVER_ENDPOINTS),
    ):
        for model in _models(union):
            kind = _type_of(model)
            if kind not in table:
                raise LookupError(f"app/asyncapi.py: say which endpoint uses the {side} message {kind!r}")
            component_messages[model.__name__] = _message(model, side == "server", schemas)
            keys[(side, kind)] = model.__name__
            for endpoint in table[kind]:
                by_endpoint[endpoint][side].append(model.__name__)

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for endpoint in Endpoint:
        name = endpoint.value
        used = by_endpoint[name]
        channels[name] = {
            "address": endpoint.path,
            "title": f"/ws/{name}",
            "description": _CONNECTION,
            "servers": [{"$ref": "#/servers/hub"}],
            "messages": {
                key: {"$ref": f"#/components/messages/{key}"} for key in [*used["client"], *used["server"]]
            },
            "bindings": {"ws": {"bindingVersion": "0.1.0", "method": "GET"}},
        }
        channel_ref = {"$ref": f"#/channels/{name}"}
        for key in used["client"]:
            kind = component_messages[key]["name"]
            answers = [keys[("server", a)] for a in _ANSWERS.get(kind, ()) if ("server", a) in keys]
            answers.append(keys[("server", "error")])
            operations[f"{name}.receive.{kind}"] = {
                "action": "receive",
                "title": f"{name} sends {kind}",
                "channel": channel_ref,
                "messages": [{"$ref": f"#/channels/{name}/messages/{key}"}],
                "reply": {
                    "channel": channel_ref,
                    "messages": [{"$ref": f"#/channels/{name}/messages/{a}"} for a in answers],
                },
            }
        operations[f"{name}.send"] = {
            "action": "send",
            "title": f"the hub sends to a {name}",
            "channel": channel_ref,
            "messages": [{"$ref": f"#/channels/{name}/messages/{key}"} for key in used["server"]],
        }

    return {
        "asyncapi": "3.0.0",
        "id": "urn:agent-hub:ws",
        "info": {
            "title": "Agent hub WebSocket API",
            "version": VERSION,
            "description": (
                "Agents connect to /ws/agent, dashboards to /ws/dashboard; every connection presents "
                "a JWT. Generated from the server's message models (app/messages.py); the prose "
                "reference is docs/protocol.md."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "hub": {
                "host": "{host}",
                "protocol": "ws",
                "description": "The hub itself (wss behind TLS).",
                "variables": {"host": {"default": "127.0.0.1:8000"}},
                "security": [
                    {"$ref": "#/components/securitySchemes/bearer"},
                    {"$ref": "#/components/securitySchemes/subprotocol"},
                    {"$ref": "#/components/securitySchemes/query"},
                ],
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": component_messages,
            "schemas": dict(sorted(schemas.items())),
            "correlationIds": {
                "id": {"description": "A client message's own id.", "location": "$message.payload#/id"},
                "ref": {
                    "description": "The id of the client message this answers.",
                    "location": "$message.payload#/ref",
                },
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "subprotocol": {
                    "type": "httpApiKey", "in": "header", "name": "Sec-WebSocket-Protocol",
                    "description": "Offer `hub.v1` and `bearer.<jwt>`; the server selects `hub.v1`.",
                },
                "query": {
                    "type": "httpApiKey", "in": "query", "name": "token",
                    "description": "Only when HUB_ALLOW_QUERY_TOKEN is on; tokens in URLs leak into logs.",
                },
            },
        },
        "x-subprotocol": "hub.v1",
        "x-codes": _codes(),
        "x-handshake-close-codes": {"401": 4401, "403": 4403, "429": 4429, "503": 1013},
        "x-service-restart": {"closeCode": TABLE[Code.SERVICE_RESTART].close, "reason": "service_restart"},
    }


def render() -> bytes:
    """The document as served and committed: two-space indented JSON with a final newline."""
    return (json.dumps(build(), indent=2, ensure_ascii=False) + "\n").encode()


router = APIRouter(include_in_schema=False)
_BODY = render()


@router.get("/asyncapi.json")
async def asyncapi_document() -> Response:
    return Response(_BODY, media_type="application/json")


if __name__ == "__main__":
    sys.stdout.buffer.write(render())
