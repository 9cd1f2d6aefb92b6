"""Bad client messages through a real server: each gets its `error` answer and the connection stays
open (issue 13, item 13), and a fuzz of every client message type finds nothing that escapes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from app.messages import MessageError, error, parse_client
from tests.conftest import make_token
from tests.support.peer import Peer
from tests.support.server import HubProcess

BAD_IDS: list[object] = [2**53 + 1, -(2**53) - 1, "x" * 129, 10**400, 1.5, True]


@pytest.mark.parametrize("bad_id", BAD_IDS, ids=["2^53+1", "-2^53-1", "129-chars", "10^400", "float", "true"])
async def test_out_of_range_id_in_an_invalid_message_gets_an_error(hub: HubProcess, bad_id: object) -> None:
    raw = json.dumps({"type": "subscribe", "agents": 5, "id": bad_id}) if bad_id != 10**400 else (
        '{"type": "subscribe", "agents": 5, "id": 1' + "0" * 400 + "}"
    )
    peer = await Peer.connect(f"{hub.url}/ws/dashboard", make_token("inputs-dash", ["dashboard"]))
    try:
        await peer.ws.send(raw)
        answer = await peer.expect("error")
        assert answer["error"] == "invalid_message" and answer.get("ref") is None
        # Still open: a ping is answered.
        await peer.send(type="ping", id=7)
        assert (await peer.expect("pong"))["ref"] == 7
    finally:
        await peer.close()
    assert "Exception in ASGI application" not in hub.log_text()


# -- fuzz -----------------------------------------------------------------------------------------

TYPES = ["ping", "auth.refresh", "subscribe", "command", "result", "event", "nope", ""]
ids = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False), st.text(max_size=200),
)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40))
json_any = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=30,
)
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES)},
    optional={
        "id": ids,
        "agents": st.one_of(st.just("*"), st.lists(st.text(max_size=300), max_size=5), json_any),
        "agent_id": st.one_of(st.text(max_size=300), json_any),
        "command_id": st.one_of(st.text(max_size=300), json_any),
        "token": st.one_of(st.text(max_size=50), json_any),
        "payload": json_any,
    },
)


def _frame(message: dict[str, Any], nesting: int) -> str:
    # Deep nesting is added around the payload by text, past what json.dumps would build quickly.
    text = json.dumps(message, ensure_ascii=False)
    if nesting and text.endswith("}"):
        text = text[:-1] + (", " if len(message) else "") + '"deep": ' + "[" * nesting + "]" * nesting + "}"
    return text


@given(message=messages, nesting=st.integers(min_value=0, max_value=3000))
@settings(max_examples=300, deadline=None)
def test_parse_client_fuzz_raises_only_message_errors(message: dict[str, Any], nesting: int) -> None:
    try:
        parsed = parse_client(_frame(message, nesting))
    except MessageError as exc:
        json.loads(error(exc.code, exc.message, exc.ref))
    else:
        assert parsed.type == message["type"]


@pytest.fixture
def fuzz_sockets(start_hub: Any) -> Iterator[list[ClientConnection]]:
    server = start_hub({"HUB_MESSAGE_RATE_PER_SECOND": "100000", "HUB_MESSAGE_BURST": "100000"}, name="fuzz")
    agent = make_token("fuzz-agent", ["agent"])
    dash = make_token("fuzz-dash", ["dashboard", "operator"])
    with connect(f"{server.url}/ws/agent", additional_headers={"Authorization": f"Bearer {agent}"}) as a, \
            connect(f"{server.url}/ws/dashboard", additional_headers={"Authorization": f"Bearer {dash}"}) as d:
        for ws in (a, d):
            assert json.loads(ws.recv(5))["type"] == "welcome"
        yield [a, d]
    assert "Exception in ASGI application" not in server.log_text()
    assert "Traceback" not in server.log_text()


@pytest.mark.slow
def test_fuzz_through_a_real_server_never_drops_the_connection(fuzz_sockets: list[ClientConnection]) -> None:
    @given(message=messages, nesting=st.integers(min_value=0, max_value=3000), side=st.sampled_from([0, 1]))
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    def one(message: dict[str, Any], nesting: int, side: int) -> None:
        ws = fuzz_sockets[side]
        # A refresh with a random token counts towards the refresh failures that close a session.
        message = {**message, "type": message["type"] if message["type"] != "auth.refresh" else "ping"}
        ws.send(_frame(message, nesting))
        ws.send(json.dumps({"type": "ping", "id": "alive"}))
        while True:
            answer = json.loads(ws.recv(5))
            if answer.get("type") == "pong" and answer.get("ref") == "alive":
                return

    one()
