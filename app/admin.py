"""The admin HTTP API under ``/admin``: Bearer token with role ``admin``, checked by the same
gatekeeper as the sockets (same codes, same logging). A thin layer over :mod:`app.control`."""

from __future__ import annotations

import base64
import ipaddress
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime, BaseModel, Field, field_validator, model_validator

from app.engine import ConnectionInfo
from app.errors import Code, spec
from app.handshake import HandshakeRequest
from app.runtime import Runtime
from app.store.records import BanRecord, EventCursor, RevocationRecord, StoredEvent
from app.tokens import Principal

_bearer = HTTPBearer(auto_error=False, description="An access token with role `admin`.")


async def admin_principal(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    """The caller, verified: raises HandshakeRefused (answered as 401/403/429/503 JSON)."""
    runtime: Runtime = request.app.state.runtime
    client = request.client
    return await runtime.gatekeeper.authenticate_admin(
        HandshakeRequest(
            endpoint=None,
            path=request.url.path,
            peer=client.host if client else None,
            headers=request.headers,
            forwarded_for=request.headers.getlist("x-forwarded-for"),
            raw_query=b"",
            subprotocols=(),
        )
    )


Admin = Annotated[Principal, Depends(admin_principal)]
Text = Annotated[str, Field(max_length=500)]
Name = Annotated[str, Field(min_length=1, max_length=256)]


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(_runtime)]


class ErrorBody(BaseModel):
    error: str
    message: str


def _error(code: Code, status: int | None = None, message: str | None = None) -> JSONResponse:
    entry = spec(code)
    return JSONResponse(
        {"error": code.value, "message": message or entry.message}, status_code=status or entry.status
    )



class DisconnectOut(BaseModel):
    sub: str
    requested: bool = True


class BanIn(BaseModel):
    cidr: Annotated[str, Field(max_length=64, examples=["203.0.113.0/24"])]
    reason: Text = ""
    expires_at: AwareDatetime | None = None

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError("not an IP address or CIDR") from None



class RevocationIn(BaseModel):
    """Either ``jti`` (one token) or ``sub`` (every token of that subject issued before
    ``issued_before``, default now)."""

    jti: Name | None = None
    sub: Name | None = None
    issued_before: AwareDatetime | None = None
    reason: Text = ""
    expires_at: AwareDatetime | None = None

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
        return EventCursor(at=datetime.fromisoformat(at).astimezone(UTC), id=int(ident))
    except (ValueError, UnicodeError):
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
    admin: Admin, runtime: RuntimeDep, sub: Annotated[str | None, Query(max_length=256)] = None
) -> list[ConnectionInfo]:
    """Live connections on every worker, optionally of one ``sub``."""
    rows = await runtime.engine.list_connections(sub)
    return [row for row in rows]


@router.post("/users/{sub}/disconnect", response_model=DisconnectOut, status_code=202)
async def disconnect(sub: Annotated[str, Field(max_length=256)], admin: Admin,
                     runtime: RuntimeDep) -> DisconnectOut:
    """Close every connection of ``sub`` on every worker (4403 ``kicked``) within a second."""
    await runtime.control.disconnect(sub, admin.sub)
    return DisconnectOut(sub=sub)


@router.get("/bans", response_model=list[BanRecord])
async def list_bans(admin: Admin, runtime: RuntimeDep) -> list[BanRecord]:
    return await runtime.control.list_bans()


@router.post("/bans", response_model=BanRecord, status_code=201, responses={422: {"model": ErrorBody}})
async def create_ban(body: BanIn, admin: Admin, runtime: RuntimeDep) -> BanRecord | JSONResponse:
    """Ban an address or network: refused at the handshake, live connections closed (4403
    ``ip_banned``) on every worker within a second."""
    try:
        ban = await runtime.control.create_ban(body.cidr, body.reason, body.expires_at, admin.sub)
    except ValueError as exc:  # what the store refuses (control characters...)
        return _error(Code.INVALID_MESSAGE, 422, str(exc)[:200])
    return ban


@router.delete("/bans/{ban_id}", status_code=204, response_class=Response,
               responses={404: {"model": ErrorBody}})
async def delete_ban(ban_id: Annotated[str, Field(max_length=64)], admin: Admin,
                     runtime: RuntimeDep) -> Response:
    """Lift a ban on every worker."""
    if not await runtime.control.delete_ban(ban_id, admin.sub):
        return _error(Code.NOT_FOUND)
    return Response(status_code=204)


@router.get("/revocations", response_model=list[RevocationRecord])
async def list_revocations(admin: Admin, runtime: RuntimeDep) -> list[RevocationRecord]:
    return await runtime.control.list_revocations()


@router.post("/revocations", response_model=RevocationRecord, status_code=201,
             responses={422: {"model": ErrorBody}})
async def create_revocation(
    body: RevocationIn, admin: Admin, runtime: RuntimeDep
) -> RevocationRecord | JSONResponse:
    """Revoke a token by ``jti``, or all of a ``sub``'s tokens issued before a time: refused at the
    handshake and on refresh, live connections closed (4403 ``token_revoked``) within a second."""
    try:
        record = await runtime.control.revoke(
            jti=body.jti, sub=body.sub, issued_before=body.issued_before, reason=body.reason,
            expires_at=body.expires_at, by=admin.sub,
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
    since: AwareDatetime | None = None,
    before: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> EventsPage | JSONResponse:
    """Refusals and forced closes, newest first; ``next`` pages to older events."""
    try:
        cursor = _cursor(before)
    except ValueError:
        return _error(Code.INVALID_MESSAGE, 422)
    events = await runtime.control.security_events(
        code=code, sub=sub, since=since, before=cursor, limit=limit
    )
    next_cursor = _encode_cursor(events[-1].cursor) if len(events) == limit else None
    return EventsPage(events=events, next=next_cursor)
