"""The WebSocket endpoints: thin loops that drive the handshake, the session and the hub.

``/ws/agent`` and ``/ws/dashboard`` share one handshake dependency. A refusal is raised as
:class:`HandshakeRefused` and answered by :func:`refuse`, in one of the contract's two forms.
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Annotated

from fastapi import APIRouter, Depends, WebSocket
from fastapi.responses import JSONResponse, Response
from prometheus_client import Counter
from starlette.requests import HTTPConnection
from wsproto.utilities import LocalProtocolError

from app import metrics
from app.connections import Connection
from app.errors import Code, handshake_close_code, spec
from app.handshake import UNAVAILABLE_RETRY_AFTER, Admission, HandshakeRefused, HandshakeRequest
from app.messages import AuthRefresh, MessageError, Ping, Pong, encode, error, parse_client
from app.roles import Endpoint, may_connect
from app.runtime import Runtime
from app.security_log import SecurityEvent
from app.session import Session
from app.tokens import Principal, TokenError

router = APIRouter()


def _runtime(websocket: WebSocket) -> Runtime:
    runtime: Runtime = websocket.app.state.runtime
    return runtime


class Handshake:
    """The handshake dependency of one endpoint: decides the handshake and returns the admission.

    The admission holds a connection slot, which the endpoint gives back through
    :func:`_release`. A plain coroutine, not a generator: FastAPI runs an async-generator
    dependency inside an exit stack and cancel scopes, a measurable share of every handshake.
    """

    __slots__ = ("endpoint",)

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    async def __call__(self, websocket: WebSocket) -> Admission:
        runtime = _runtime(websocket)
        scope = websocket.scope
        client = scope.get("client")
        headers, forwarded_for = _headers(scope["headers"])
        request = HandshakeRequest(
            endpoint=self.endpoint,
            path=self.endpoint.path,
            peer=client[0] if client else None,
            headers=headers,
            forwarded_for=forwarded_for,
            raw_query=scope.get("query_string", b""),
            subprotocols=scope.get("subprotocols", ()),
        )
        admission = await runtime.gatekeeper.admit(request)
        websocket.state.admission = admission
        return admission


def _headers(raw: list[tuple[bytes, bytes]]) -> tuple[dict[str, str], list[str]]:
    """The request's headers by lower-case name (the first of a repeated one, as Starlette
    reads them), and every ``X-Forwarded-For`` value in order: a dict look-up per header the
    gatekeeper reads, instead of a scan of the raw list each time."""
    headers: dict[str, str] = {}
    forwarded_for: list[str] = []
    for key, value in raw:
        name = key.decode("latin-1").lower()
        text = value.decode("latin-1")
        if name == "x-forwarded-for":
            forwarded_for.append(text)
        headers.setdefault(name, text)
    return headers, forwarded_for


async def _release(websocket: WebSocket) -> None:
    """Give the connection's slot back: the endpoints call it once serving ended, however. An
    unverified session upgraded by a refresh holds the slot of its new identity."""
    await _runtime(websocket).gatekeeper.release(websocket.state.admission)


async def refuse(connection: HTTPConnection, exc: Exception) -> Response | None:
    """Answer a refused handshake: an HTTP denial response with the JSON body, or, for a client
    that offered ``hub.v1`` (a browser cannot read an HTTP refusal), a socket accepted with
    ``hub.v1`` and closed at once with the matching 44xx code and the code as reason."""
    assert isinstance(exc, HandshakeRefused)
    entry = spec(exc.code)
    if exc.principal is not None:
        connection.state.admin_principal = exc.principal  # the actor, for the audit trail
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    response = JSONResponse(
        {"error": exc.code.value, "message": entry.message}, status_code=entry.status, headers=headers
    )
    if not isinstance(connection, WebSocket):
        return response
    # Sent here, not returned: a client that is already gone (a reconnect storm, a drain) cannot
    # be answered, and the server's WebSocket layer raises when told to; the refusal itself was
    # decided and logged, so there is nothing left to do.
    with contextlib.suppress(LocalProtocolError, OSError):
        if exc.subprotocol is not None and not (exc.http_only or entry.http_only):
            await connection.accept(subprotocol=exc.subprotocol)
            await connection.close(code=handshake_close_code(exc.code), reason=exc.code.value)
        else:
            await connection.send_denial_response(response)
    return None


async def unavailable(connection: HTTPConnection, exc: Exception) -> Response:
    """Shared state failed in the middle of an admin request: fail closed, as a handshake does."""
    entry = spec(Code.UNAVAILABLE)
    return JSONResponse(
        {"error": Code.UNAVAILABLE.value, "message": entry.message}, status_code=entry.status,
        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER)},
    )


async def _serve(websocket: WebSocket, admission: Admission) -> None:
    runtime = _runtime(websocket)
    settings = runtime.settings
    await websocket.accept(subprotocol=admission.subprotocol)
    conn = Connection(
        websocket, Session(admission, runtime.limits, time.time()), settings.send_queue_size,
        max_chars=settings.send_queue_size * settings.max_message_bytes,
    )
    active = metrics.bound(metrics.ACTIVE, admission.endpoint.value)
    runtime.registry.add(conn)
    active.inc()
    try:
        # Registered before the welcome: an agent that has its welcome is reachable, so a
        # command sent to it from then on is routed to it, not refused `agent_offline`.
        await runtime.hub.connected(conn)
        await conn.start()
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            if conn.close_code is not None:
                continue
            text = message.get("text")
            if text is None:
                conn.close(Code.UNSUPPORTED_DATA)
            elif len(text) > settings.max_message_bytes or (
                len(text) * 4 > settings.max_message_bytes
                and len(text.encode()) > settings.max_message_bytes
            ):
                conn.close(Code.MESSAGE_TOO_BIG)
            else:
                await _handle(runtime, conn, text)
    finally:
        runtime.registry.remove(conn)
        active.dec()
        try:
            await runtime.hub.disconnected(conn)
        except Exception:
            runtime.log.exception("hub.disconnect_failed", conn_id=admission.conn_id)
        await conn.finish()
        runtime.log.info("ws.disconnected", **_connection_context(conn))
        if conn.close_code is not None and spec(conn.close_code).close >= 4000:
            runtime.security_log.record(_close_event(conn))


@functools.cache
def _received(kind: str) -> Counter:
    """The ``hub_messages_total{type=kind, direction="in"}`` child (a label lookup per message
    showed in the relay's profile); ``kind`` is one of the few client message types."""
    return metrics.MESSAGES.labels(kind, "in")


async def _handle(runtime: Runtime, conn: Connection, text: str) -> None:
    actions = conn.session.allow_message(time.time())
    if actions is not None:
        conn.apply(actions)
        return
    try:
        message = parse_client(text)
    except MessageError as exc:
        metrics.MESSAGES.labels("invalid", "in").inc()
        conn.send(error(exc.code, exc.message, exc.ref))
        return
    _received(message.type).inc()
    if isinstance(message, Ping):
        conn.send(encode(Pong(ref=message.id)))
    elif isinstance(message, AuthRefresh):
        await _refresh(runtime, conn, message)
    else:
        await runtime.hub.handle(conn, message)


async def _refresh(runtime: Runtime, conn: Connection, message: AuthRefresh) -> None:
    try:
        principal = await runtime.verifier.verify(message.token)
    except TokenError as exc:
        metrics.REFRESHES.labels(exc.code.value).inc()
        runtime.security_log.record(_refresh_event(conn, exc.code, exc))
        conn.apply(conn.session.refresh_failed(exc, message.id))
        return
    if runtime.revocations.is_revoked(principal):
        metrics.REFRESHES.labels(Code.TOKEN_REVOKED.value).inc()
        runtime.security_log.record(_refresh_event(conn, Code.TOKEN_REVOKED, None))
        conn.apply(conn.session.refresh_failed(Code.TOKEN_REVOKED, message.id))
        return
    if conn.session.unverified:
        await _upgrade(runtime, conn, principal, message)
        return
    actions = conn.session.refreshed(principal, message.id)
    metrics.REFRESHES.labels("ok" if conn.session.principal is principal else "refused").inc()
    conn.apply(actions)


async def _upgrade(runtime: Runtime, conn: Connection, principal: Principal, message: AuthRefresh) -> None:
    """Report-only: turn an unverified session into a verified one, on the same socket. The
    connection leaves the hub as its unverified identity (an agent goes offline under it, a
    dashboard's subscriptions end: its tenant may change) and comes back as the token's."""
    session = conn.session
    old = session.admission
    if not may_connect(principal.roles, old.endpoint):
        metrics.REFRESHES.labels(Code.ROLE_FORBIDDEN.value).inc()
        runtime.security_log.record(_refresh_event(conn, Code.ROLE_FORBIDDEN, None))
        conn.apply(session.refresh_failed(Code.ROLE_FORBIDDEN, message.id))
        return
    try:
        admission = await runtime.gatekeeper.upgrade(old, principal)
    except HandshakeRefused as refused:  # logged; the session goes on unverified
        metrics.REFRESHES.labels(refused.code.value).inc()
        conn.send(error(refused.code, f"refresh refused: {refused.code.value}", message.id))
        return
    runtime.registry.remove(conn)
    try:
        await runtime.hub.disconnected(conn)
    except Exception:
        runtime.log.exception("hub.disconnect_failed", conn_id=old.conn_id)
    await runtime.gatekeeper.release(old)
    assert isinstance(conn.socket, WebSocket)
    conn.socket.state.admission = admission
    conn.apply(session.upgraded(admission, message.id))
    runtime.registry.add(conn)
    await runtime.hub.connected(conn)
    metrics.REFRESHES.labels("ok").inc()
    runtime.log.info(
        "ws.auth_upgraded", conn_id=old.conn_id, sub=principal.sub, tenant=principal.tenant,
        was=old.would_refuse.value if old.would_refuse else None, client_ip=old.client_ip,
    )


def _connection_context(conn: Connection) -> dict[str, object]:
    """The one log line of a connection, at its end: who, from where, how, how long, how it
    ended (one line, not a line at each end: two cost a measurable share of a handshake)."""
    admission = conn.session.admission
    return {
        "endpoint": admission.endpoint.path, "conn_id": admission.conn_id, "sub": conn.sub,
        "client_ip": admission.client_ip, "transport": admission.transport,
        "auth": "unverified" if conn.session.unverified else "verified",
        "close": conn.close_code.value if conn.close_code else None,
        "duration_s": round(time.time() - admission.connected_at, 3),
    }


def _refresh_event(conn: Connection, code: Code, exc: TokenError | None) -> SecurityEvent:
    admission = conn.session.admission
    return SecurityEvent(
        event="ws.refresh_failed",
        code=code,
        endpoint=admission.endpoint.path,
        client_ip=admission.client_ip,
        user_agent=admission.user_agent,
        verified_sub=conn.sub,
        claimed_sub=exc.claimed_sub if exc else None,
        jti=exc.jti if exc else None,
        fingerprint=exc.fingerprint if exc else None,
        detail=exc.detail if exc else None,
        tenant=conn.session.principal.tenant,
    )


def _close_event(conn: Connection) -> SecurityEvent:
    admission = conn.session.admission
    assert conn.close_code is not None
    return SecurityEvent(
        event="ws.closed",
        code=conn.close_code,
        endpoint=admission.endpoint.path,
        client_ip=admission.client_ip,
        user_agent=admission.user_agent,
        verified_sub=conn.sub,
        jti=conn.session.principal.jti,
        fingerprint=conn.session.principal.fingerprint,
        tenant=conn.session.principal.tenant,
    )


@router.websocket("/ws/agent")
async def agent_socket(
    websocket: WebSocket, admission: Annotated[Admission, Depends(Handshake(Endpoint.AGENT))]
) -> None:
    # Here, not in a helper: one coroutine frame less held by every open connection.
    try:
        await _serve(websocket, admission)
    finally:
        await _release(websocket)


@router.websocket("/ws/dashboard")
async def dashboard_socket(
    websocket: WebSocket, admission: Annotated[Admission, Depends(Handshake(Endpoint.DASHBOARD))]
) -> None:
    # Here, not in a helper: one coroutine frame less held by every open connection.
    try:
        await _serve(websocket, admission)
    finally:
        await _release(websocket)
