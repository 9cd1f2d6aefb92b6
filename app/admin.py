"""The admin HTTP API under ``/admin``: Bearer token with role ``admin``, checked by the same
gatekeeper as the sockets (same codes, same logging). A thin layer over :mod:`app.control`."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, AwareDatetime, BaseModel, Field, field_validator, model_validator

from app.engine import ConnectionInfo
from app.errors import Code, spec
from app.handshake import HandshakeRequest
from app.netaddr import parse_ip, parse_network
from app.runtime import Runtime
from app.store.audit import query_audit
from app.store.records import AuditEntry, BanRecord, EventCursor, RevocationRecord, StoredEvent
from app.tokens import Principal

_bearer = HTTPBearer(auto_error=False, description="An access token with role `admin`.")


def _admin_request(request: Request) -> HandshakeRequest:
    client = request.client
    return HandshakeRequest(
        endpoint=None,
        path=request.url.path,
        peer=client.host if client else None,
        headers=request.headers,
        forwarded_for=request.headers.getlist("x-forwarded-for"),
        raw_query=b"",
        subprotocols=(),
    )


async def admin_principal(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    """The caller, verified: raises HandshakeRefused (answered as 401/403/429/503 JSON). A token
    with ``tenant`` is a tenant admin: every endpoint below limits it to that tenant."""
    runtime: Runtime = request.app.state.runtime
    principal = await runtime.gatekeeper.authenticate_admin(_admin_request(request))
    request.state.admin_principal = principal  # the actor, for the audit trail (app.audit)
    return principal


async def platform_admin(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    """An admin without ``tenant``: IP bans are global, so tenant admins get 403
    ``role_forbidden`` (logged like any refusal)."""
    runtime: Runtime = request.app.state.runtime
    principal = await runtime.gatekeeper.authenticate_admin(_admin_request(request), platform=True)
    request.state.admin_principal = principal
    return principal


def _text(value: str) -> str:
    # A lone surrogate cannot be stored, logged as UTF-8 or echoed in JSON: a 422, not a 500.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text") from None
    if not value.isprintable():
        raise ValueError("control characters are not allowed")
    return value


def _utc(value: datetime) -> datetime:
    # 9999-12-31T23:59:59-23:59 is a valid aware datetime that no UTC datetime can hold.
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of the range of dates") from None


Admin = Annotated[Principal, Depends(admin_principal)]
PlatformAdmin = Annotated[Principal, Depends(platform_admin)]
Text = Annotated[str, Field(max_length=500), AfterValidator(_text)]
Name = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_text)]
UtcTime = Annotated[AwareDatetime, AfterValidator(_utc)]


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(_runtime)]


class ErrorBody(BaseModel):
    error: str
    message: str


async def validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's 422 ``{"detail": [...]}`` without the echoed ``input`` (it may be a token pasted in
    the wrong field, and a lone surrogate in it made the default handler fail with a 500), written
    as ASCII JSON."""
    assert isinstance(exc, RequestValidationError)
    details = [{k: v for k, v in error.items() if k != "input"} for error in exc.errors()]
    body = json.dumps({"detail": jsonable_encoder(details)}, ensure_ascii=True)
    return Response(body, status_code=422, media_type="application/json")


def _error(code: Code, status: int | None = None, message: str | None = None) -> JSONResponse:
    entry = spec(code)
    return JSONResponse(
        {"error": code.value, "message": message or entry.message}, status_code=status or entry.status
    )



class DisconnectOut(BaseModel):
    sub: str
    requested: bool = True


class BanIn(BaseModel):
    """``cidr`` is normalised: ``10.0.0.7/8`` is ``10.0.0.0/8``, and an IPv4-mapped IPv6
    address or network (``::ffff:10.0.0.7``) is the IPv4 one."""

    cidr: Annotated[str, Field(max_length=64, examples=["203.0.113.0/24"])]
    reason: Text = ""
    expires_at: UtcTime | None = None

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            return str(parse_network(value))
        except ValueError:
            raise ValueError("not an IP address or CIDR") from None



class RevocationIn(BaseModel):
    """Either ``jti`` (one token) or ``sub`` (every token of that subject issued before
    ``issued_before``, default now)."""

    jti: Name | None = None
    sub: Name | None = None
    issued_before: UtcTime | None = None
    reason: Text = ""
    expires_at: UtcTime | None = None
    tenant: Annotated[str, Field(max_length=256), AfterValidator(_text)] | None = Field(
        None, description="Platform admins: limit the revocation to this tenant's tokens (\"\" for "
        "tokens without one); by default it covers every tenant. A tenant admin's revocation "
        "always covers its own tenant only.",
    )

    @model_validator(mode="after")
    def _one_target(self) -> RevocationIn:
        if (self.jti is None) == (self.sub is None):
            raise ValueError("give exactly one of jti and sub")
        if self.jti is not None and self.issued_before is not None:
            raise ValueError("issued_before goes with sub")
        return self




class EventsPage(BaseModel):
    events: list[StoredEvent]
    next: str | None = Field(None, description="Pass as `before` to get the next (older) page.")


def _cursor(value: str | None) -> EventCursor | None:
    if value is None:
        return None
    try:
        at, _, ident = base64.urlsafe_b64decode(value.encode()).decode().partition("|")
        moment, number = datetime.fromisoformat(at), int(ident)
        if moment.tzinfo is None or not 0 <= number < 2**63:  # our cursors: aware, a BIGINT id
            raise ValueError(value)
        return EventCursor(at=moment.astimezone(UTC), id=number)
    except (ValueError, UnicodeError, OverflowError):
        raise ValueError("not a cursor from a previous page") from None


def _encode_cursor(cursor: EventCursor) -> str:
    return base64.urlsafe_b64encode(f"{cursor.at.isoformat()}|{cursor.id}".encode()).decode()


_REFUSALS = {
    401: {"model": ErrorBody, "description": "No valid token"},
    403: {"model": ErrorBody, "description": "Not an admin, or the address is banned"},
    429: {"model": ErrorBody, "description": "Too many attempts from this address"},
    503: {"model": ErrorBody, "description": "Shared state unreachable"},
}

router = APIRouter(prefix="/admin", tags=["admin"], responses=_REFUSALS)  # type: ignore[arg-type]


@router.get("/connections", response_model=list[ConnectionInfo])
async def list_connections(
    admin: Admin,
    runtime: RuntimeDep,
    sub: Annotated[str | None, Query(max_length=256)] = None,
    tenant: Annotated[str | None, Query(max_length=256)] = None,
) -> list[ConnectionInfo]:
    """Live connections on every worker, optionally of one ``sub`` and (platform admins) one
    ``tenant`` ("" : users without one). A tenant admin sees its own tenant's only."""
    return await runtime.engine.list_connections(sub, tenant=_scope(admin, tenant))


@router.post("/users/{sub:path}/disconnect", response_model=DisconnectOut, status_code=202)
async def disconnect(
    sub: Annotated[str, Field(min_length=1, max_length=256)],
    admin: Admin,
    runtime: RuntimeDep,
    tenant: Annotated[str | None, Query(max_length=256)] = None,
) -> DisconnectOut:
    """Close every connection of ``sub`` on every worker (4403 ``kicked``) within a second.
    ``sub`` is percent-encoded (``spiffe%3A%2F%2Fexample.org%2Fagent``): any ``sub`` works,
    ``/`` included. A tenant admin reaches its own tenant's users only; a platform admin reaches
    ``sub`` in every tenant, or in ``tenant`` when given."""
    await runtime.control.disconnect(sub, admin.sub, tenant=_scope(admin, tenant))
    return DisconnectOut(sub=sub)


@router.get("/bans", response_model=list[BanRecord])
async def list_bans(admin: PlatformAdmin, runtime: RuntimeDep) -> list[BanRecord]:
    """Operators' bans (platform admins only: bans are global)."""
    return await runtime.control.list_bans()


@router.post("/bans", response_model=BanRecord, status_code=201, responses={422: {"model": ErrorBody}})
async def create_ban(
    body: BanIn, admin: PlatformAdmin, runtime: RuntimeDep, request: Request
) -> BanRecord | JSONResponse:
    """Ban an address or network: refused at the handshake, live connections closed (4403
    ``ip_banned``) on every worker within a second. A ban of every address (``/0``) or of the
    caller's own address is refused 422 ``would_lock_out``: it would leave no way to lift it."""
    network = parse_network(body.cidr)
    caller = parse_ip(runtime.gatekeeper.client_ip(
        request.client.host if request.client else None, request.headers.getlist("x-forwarded-for")
    ))
    if network.prefixlen == 0 or (caller is not None and caller in network):
        return _error(Code.WOULD_LOCK_OUT)
    try:
        ban = await runtime.control.create_ban(body.cidr, body.reason, body.expires_at, admin.sub)
    except ValueError as exc:  # what the store refuses (control characters...)
        return _error(Code.INVALID_MESSAGE, 422, str(exc)[:200])
    return ban


@router.delete("/bans/{ban_id}", status_code=204, response_class=Response,
               responses={404: {"model": ErrorBody}})
async def delete_ban(ban_id: Annotated[str, Field(max_length=64)], admin: PlatformAdmin,
                     runtime: RuntimeDep) -> Response:
    """Lift a ban on every worker."""
    if not await runtime.control.delete_ban(ban_id, admin.sub):
        return _error(Code.NOT_FOUND)
    return Response(status_code=204)


@router.get("/revocations", response_model=list[RevocationRecord])
async def list_revocations(admin: Admin, runtime: RuntimeDep) -> list[RevocationRecord]:
    """Active revocations; a tenant admin sees its own tenant's only."""
    return await runtime.control.list_revocations(tenant=admin.tenant)


@router.post("/revocations", response_model=RevocationRecord, status_code=201,
             responses={422: {"model": ErrorBody}})
async def create_revocation(
    body: RevocationIn, admin: Admin, runtime: RuntimeDep
) -> RevocationRecord | JSONResponse:
    """Revoke a token by ``jti``, or all of a ``sub``'s tokens issued before a time: refused at the
    handshake and on refresh, live connections closed (4403 ``token_revoked``) within a second.
    A tenant admin's revocation covers its own tenant's tokens only."""
    try:
        record = await runtime.control.revoke(
            jti=body.jti, sub=body.sub, issued_before=body.issued_before, reason=body.reason,
            expires_at=body.expires_at, by=admin.sub, tenant=_scope(admin, body.tenant),
        )
    except ValueError as exc:
        return _error(Code.INVALID_MESSAGE, 422, str(exc)[:200])
    return record


@router.get("/security-events", response_model=EventsPage)
async def security_events(
    admin: Admin,
    runtime: RuntimeDep,
    code: Annotated[str | None, Query(max_length=64)] = None,
    sub: Annotated[str | None, Query(max_length=256)] = None,
    since: UtcTime | None = None,
    before: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> EventsPage | JSONResponse:
    """Refusals and forced closes, newest first; ``next`` pages to older events. A tenant admin
    sees the events of its own tenant's verified users only."""
    try:
        cursor = _cursor(before)
    except ValueError:
        return _error(Code.INVALID_MESSAGE, 422)
    events = await runtime.control.security_events(
        code=code, sub=sub, since=since, before=cursor, limit=limit, tenant=admin.tenant
    )
    next_cursor = _encode_cursor(events[-1].cursor) if len(events) == limit else None
    return EventsPage(events=events, next=next_cursor)


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    next: str | None = Field(None, description="Pass as `before` to get the next (older) page.")


@router.get("/audit", response_model=AuditPage)
async def audit(
    admin: Admin,
    runtime: RuntimeDep,
    actor: Annotated[str | None, Query(max_length=256)] = None,
    action: Annotated[Literal["ban", "unban", "revoke", "disconnect"] | None, Query()] = None,
    since: UtcTime | None = None,
    before: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AuditPage | JSONResponse:
    """Admin requests that changed or tried to change state (``ban``, ``unban``, ``revoke``,
    ``disconnect``), refused ones included, newest first; ``next`` pages to older entries.
    ``outcome`` is ``ok`` or the refusal code; ``actor``/``tenant`` are null when the request was
    refused before its token was verified. A tenant admin sees its own tenant's entries only."""
    try:
        cursor = _cursor(before)
    except ValueError:
        return _error(Code.INVALID_MESSAGE, 422)
    entries = await query_audit(
        runtime.store, actor=actor, action=action, since=since, before=cursor, limit=limit,
        tenant=admin.tenant,
    )
    next_cursor = _encode_cursor(entries[-1].cursor) if len(entries) == limit else None
    return AuditPage(entries=entries, next=next_cursor)


def _scope(admin: Principal, asked: str | None) -> str | None:
    """The tenant an admin request acts on: a tenant admin's own, whatever it asked; a platform
    admin's choice (None: every tenant)."""
    return admin.tenant if admin.tenant is not None else asked
