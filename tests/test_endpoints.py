"""The guarded endpoints through a real server (``hubctl serve``) and the `websockets` client."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from app.errors import Code, handshake_close_code, spec
from tests.conftest import SECRET, make_token
from tests.support.client import attempt, refused_socket
from tests.support.server import HubProcess

TRANSPORTS = ["header", "subprotocol", "query"]


def _events(server: HubProcess, event: str) -> list[dict[str, object]]:
    found = []
    for line in server.log_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            found.append(record)
    return found


async def _wait_for_event(server: HubProcess, event: str, **match: object) -> dict[str, object]:
    for _ in range(100):
        for record in _events(server, event):
            if all(record.get(k) == v for k, v in match.items()):
                return record
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {event} with {match} in the log")


# Scenario 1: a valid token is accepted and the user context is attached -------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_valid_token_is_accepted_with_user_context(hub: HubProcess, transport: str) -> None:
    token = make_token(f"agent-{transport}", ["agent"], tenant="t1")
    outcome = await attempt(f"{hub.url}/ws/agent", token=token, transport=transport)
    assert outcome.accepted, outcome
    welcome = outcome.messages[0]
    assert welcome["sub"] == f"agent-{transport}"
    assert welcome["roles"] == ["agent"]
    assert welcome["tenant"] == "t1"
    assert isinstance(welcome["expires_at"], int)
    assert outcome.subprotocol == ("hub.v1" if transport == "subprotocol" else None)


async def test_ping_gets_pong_and_bad_messages_get_errors_without_closing(hub: HubProcess) -> None:
    token = make_token("agent-msgs", ["agent"])
    async with websockets.connect(
        f"{hub.url}/ws/agent", additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"
        for raw, code in [("not json", "invalid_message"), ('{"type":"nope","id":"x"}', "unknown_type"),
                          ("[1,2]", "invalid_message"), ('{"type":"ping","id":{"a":1}}', "invalid_message")]:
            await ws.send(raw)
            reply = json.loads(await ws.recv())
            assert reply["type"] == "error" and reply["error"] == code, reply
        await ws.send('{"type":"ping","id":"p1"}')
        assert json.loads(await ws.recv()) == {"type": "pong", "ref": "p1"}


# Scenario 2: no token ----------------------------------------------------------------------------
async def test_no_token_is_refused_in_both_forms(hub: HubProcess) -> None:
    http = await attempt(f"{hub.url}/ws/agent")
    assert http.status == 401
    assert http.body == {"error": "token_missing", "message": spec(Code.TOKEN_MISSING).message}
    sock = await refused_socket(f"{hub.url}/ws/agent", None)
    assert sock.subprotocol == "hub.v1"
    assert (sock.close_code, sock.close_reason) == (4401, "token_missing")
    assert not sock.messages


# Scenario 3: expired token -----------------------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_expired_token_is_refused(hub: HubProcess, transport: str) -> None:
    token = make_token("agent-expired", ["agent"], ttl=-10)
    outcome = await attempt(f"{hub.url}/ws/agent", token=token, transport=transport)
    assert outcome.code == "token_expired"
    if transport == "subprotocol":
        assert outcome.close_code == 4401
    else:
        assert outcome.status == 401


# Scenario 4: role mismatch -----------------------------------------------------------------------
async def test_dashboard_token_on_agent_endpoint_is_refused(hub: HubProcess) -> None:
    token = make_token("dash-1", ["dashboard"])
    http = await attempt(f"{hub.url}/ws/agent", token=token)
    assert (http.status, http.code) == (403, "role_forbidden")
    sock = await attempt(f"{hub.url}/ws/agent", token=token, transport="subprotocol")
    assert (sock.close_code, sock.close_reason) == (4403, "role_forbidden")
    agent = await attempt(f"{hub.url}/ws/dashboard", token=make_token("a-2", ["agent"]))
    assert (agent.status, agent.code) == (403, "role_forbidden")
    ok = await attempt(f"{hub.url}/ws/dashboard", token=token)
    assert ok.accepted


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda: "not-a-token", "token_malformed"),
        (lambda: make_token("x")[:-20] + "A" * 20, "token_invalid"),
        (lambda: _nbf_token(), "token_not_yet_valid"),  # noqa: PLW0108 (defined below)
        (lambda: _unsigned("none"), "token_invalid"),
        (lambda: _claims_token({"sub": "x", "exp": "soon", "roles": ["agent"]}), "claims_invalid"),
        (lambda: "x" * 9000, "token_malformed"),
    ],
)
async def test_token_codes_in_both_forms(hub: HubProcess, make: object, code: str) -> None:
    token = make()  # type: ignore[operator]
    http = await attempt(f"{hub.url}/ws/agent", token=token, transport="query")
    assert (http.status, http.code) == (401, code), http
    sock = await attempt(f"{hub.url}/ws/agent", token=token, transport="subprotocol")
    assert (sock.close_code, sock.close_reason) == (handshake_close_code(Code(code)), code)


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims_token(claims: dict[str, object], alg: str = "HS256") -> str:
    import hashlib
    import hmac

    head = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def _nbf_token() -> str:
    import time

    now = int(time.time())
    return _claims_token({"sub": "x", "exp": now + 600, "nbf": now + 300, "roles": ["agent"]})


def _unsigned(alg: str) -> str:
    import time

    head = _b64(json.dumps({"alg": alg}).encode())
    body = _b64(json.dumps({"sub": "x", "exp": int(time.time()) + 60, "roles": ["agent"]}).encode())
    return f"{head}.{body}.{_b64(b'x')}"


async def test_header_token_wins_and_malformed_authorization_is_refused(hub: HubProcess) -> None:
    # A good header token is used even when a bad one travels in the query...
    wins = await attempt(f"{hub.url}/ws/agent?token=bad.token.here", token=make_token("agent-hdr"))
    assert wins.accepted and wins.messages[0]["sub"] == "agent-hdr"
    # ...and a present but unusable header does not fall through to a good query token.
    outcome = await attempt(f"{hub.url}/ws/agent?token={make_token('agent-q')}",
                            headers={"Authorization": "Basic abc"})
    assert (outcome.status, outcome.code) == (401, "token_malformed")


async def test_query_token_can_be_disabled(start_hub: object) -> None:
    server = start_hub({"HUB_ALLOW_QUERY_TOKEN": "false"})  # type: ignore[operator]
    outcome = await attempt(f"{server.url}/ws/agent", token=make_token("q"), transport="query")
    assert (outcome.status, outcome.code) == (401, "token_missing")


async def test_origin_is_checked_exactly(start_hub: object) -> None:
    server = start_hub({"HUB_ALLOWED_ORIGINS": "https://console.example"})  # type: ignore[operator]
    token = make_token("dash-origin", ["dashboard"])
    url = f"{server.url}/ws/dashboard"
    good = await attempt(url, token=token, origin="https://console.example")
    assert good.accepted
    for origin in ["https://console.example.evil", "https://evil.example", "null"]:
        bad = await attempt(url, token=token, origin=origin)
        assert (bad.status, bad.code) == (403, "origin_forbidden"), origin
    missing = await attempt(url, token=token)
    assert missing.code == "origin_forbidden"
    sock = await attempt(url, token=token, transport="subprotocol", origin="https://evil.example")
    assert (sock.close_code, sock.close_reason) == (4403, "origin_forbidden")


async def test_configured_ban_is_always_http(start_hub: object) -> None:
    server = start_hub({"HUB_BANNED_CIDRS": "127.0.0.0/8"})  # type: ignore[operator]
    token = make_token("banned", ["agent"])
    for transport in TRANSPORTS:
        outcome = await attempt(f"{server.url}/ws/agent", token=token, transport=transport)
        assert (outcome.status, outcome.code) == (403, "ip_banned")


# Logging: every refusal is one auth_failed line with its context and no token ------------------
async def test_refusals_are_logged_with_context_and_never_the_token(hub: HubProcess) -> None:
    token = make_token("agent-logged", ["agent"], ttl=-5)
    signature = token.rsplit(".", 1)[1]
    await attempt(f"{hub.url}/ws/agent", token=token, transport="query",
                  headers={"User-Agent": "probe/1.0"})
    record = await _wait_for_event(hub, "ws.auth_failed", code="token_expired", user_agent="probe/1.0")
    assert record["endpoint"] == "/ws/agent"
    assert record["client_ip"] == "127.0.0.1"
    assert record["claimed_sub_unverified"] == "agent-logged"
    assert isinstance(record["fingerprint"], str) and len(record["fingerprint"]) == 16
    assert record["jti"]
    # An accepted connection with a query token must not leak it through uvicorn's log either.
    good = make_token("agent-query-ok", ["agent"])
    assert (await attempt(f"{hub.url}/ws/agent", token=good, transport="query")).accepted
    # One line per connection, at its end, with its context and duration.
    line = await _wait_for_event(hub, "ws.disconnected", sub="agent-query-ok")
    assert (line["endpoint"], line["transport"], line["auth"]) == ("/ws/agent", "query", "verified")
    assert line["client_ip"] == "127.0.0.1" and isinstance(line["duration_s"], float)
    assert isinstance(line["conn_id"], str) and line["close"] is None
    text = hub.log_text()
    assert "token=[redacted]" in text
    for secret in (token, signature, good, good.rsplit(".", 1)[1], SECRET):
        assert secret not in text


async def test_oversized_header_gets_an_answer_not_a_hang(hub: HubProcess) -> None:
    for size in (10_000, 65_536):
        request = (
            f"GET /ws/agent HTTP/1.1\r\nHost: 127.0.0.1:{hub.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {'a' * size}\r\n\r\n"
        ).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 5)
        writer.close()
        # Either a clear HTTP error status or the server closing the connection, promptly.
        assert answer == b"" or answer.startswith(b"HTTP/1.1 4"), answer[:80]
    # The server is still healthy afterwards.
    assert (await attempt(f"{hub.url}/ws/agent", token=make_token("after-big"))).accepted


async def test_binary_frame_closes_1003(hub: HubProcess) -> None:
    token = make_token("agent-binary", ["agent"])
    async with websockets.connect(
        f"{hub.url}/ws/agent", additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        await ws.recv()
        await ws.send(b"\x00\x01")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1003, "unsupported_data")


@pytest.mark.parametrize("subprotocol", [None, "hub.v1"])
async def test_a_refusal_to_a_client_already_gone_raises_nothing(subprotocol: str | None) -> None:
    # Under a reconnect storm or a drain the client may vanish while its handshake is decided;
    # the server's WebSocket layer then raises when told to answer (wsproto: "Connection cannot be
    # rejected in state CLOSED"), which used to escape as "Exception in ASGI application".
    from starlette.websockets import WebSocket
    from wsproto.utilities import LocalProtocolError

    from app.endpoints import refuse
    from app.handshake import HandshakeRefused

    sent: list[str] = []

    async def receive() -> dict[str, str]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(str(message["type"]))
        raise LocalProtocolError("Connection cannot be rejected in state ConnectionState.CLOSED")

    scope = {"type": "websocket", "path": "/ws/agent", "headers": [], "query_string": b"",
             "extensions": {"websocket.http.response": {}}, "subprotocols": []}
    websocket = WebSocket(scope, receive, send)  # type: ignore[arg-type]
    answer = await refuse(websocket, HandshakeRefused(Code.TOKEN_INVALID, subprotocol=subprotocol))
    assert answer is None
    assert sent == ["websocket.accept" if subprotocol else "websocket.http.response.start"]
