"""``GET /asyncapi.json`` from a real hub: the same bytes as the committed docs/asyncapi.json, and
every message of app/messages.py in it. Its validity against the AsyncAPI 3.0 schema is checked
by @asyncapi/parser in tests/test_js_client.py (clients/js/test/asyncapi.test.mjs)."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import pytest

from app import asyncapi, messages
from tests.support.server import ROOT, HubProcess

COMMITTED = ROOT / "docs" / "asyncapi.json"


def test_the_served_document_is_the_committed_one(hub: HubProcess) -> None:
    response = httpx.get(f"{hub.http}/asyncapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.content == COMMITTED.read_bytes(), (
        "docs/asyncapi.json is stale: python -m app.asyncapi > docs/asyncapi.json"
    )


def test_every_message_type_is_described_on_its_endpoints() -> None:
    document = asyncapi.build()
    described = {(m["name"], "server to client" in m["title"]) for m in document["components"]["messages"].values()}
    client = {(asyncapi._type_of(m), False) for m in asyncapi._models(messages.ClientMessage)}
    server = {(asyncapi._type_of(m), True) for m in asyncapi._models(messages.ServerMessage)}
    assert described == client | server
    dashboard = document["channels"]["dashboard"]["messages"]
    agent = document["channels"]["agent"]["messages"]
    assert {"Subscribe", "Command", "Presence", "ResultDelivery"} <= set(dashboard)
    assert {"Result", "Event", "CommandDelivery"} <= set(agent)
    assert "Subscribe" not in agent and "CommandDelivery" not in dashboard
    # A request and its answer are tied by id -> ref.
    ping = document["operations"]["dashboard.receive.ping"]
    assert [r["$ref"].rsplit("/", 1)[1] for r in ping["reply"]["messages"]] == ["Pong", "Error"]
    assert document["components"]["messages"]["Ping"]["correlationId"]["$ref"].endswith("/id")
    assert document["components"]["messages"]["Pong"]["correlationId"]["$ref"].endswith("/ref")
    # What the schema cannot carry is in x- fields: the close codes of every code.
    assert document["x-codes"]["kicked"] == {"closeCode": 4403, "message": "Disconnected by an administrator."}
    assert document["x-codes"]["ip_banned"]["httpOnly"] is True


def test_a_message_no_endpoint_is_assigned_to_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class Novel(messages._Server):
        type: Literal["novel"] = "novel"

    monkeypatch.setattr(messages, "ServerMessage", messages.ServerMessage | Novel)
    with pytest.raises(LookupError, match="novel"):
        asyncapi.build()


def test_the_document_is_deterministic() -> None:
    assert asyncapi.render() == asyncapi.render()
    json.loads(asyncapi.render())
