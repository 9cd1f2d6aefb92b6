"""The handshake decision: plain code from request facts to an admission or a refusal.

Checks run cheapest first, and nothing that costs a signature check runs before the address checks:
configured and operators' bans, Origin, the engine's per-IP ban and rate window, the token (found,
parsed, verified), revocation, role, and last, in one engine step, the per-user rate window and a
connection slot. The endpoint module turns the outcome into socket I/O.

On an endpoint in report-only mode (:mod:`app.report_only`), a token or role refusal admits the
connection unverified instead, and is reported as ``ws.auth_would_refuse``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from app import metrics
from app.bans import BanList
from app.config import Settings
from app.engine import Admitted, ConnectionInfo, Engine, EngineUnavailable, Refused
from app.errors import Code
from app.flood import FloodGate
from app.netaddr import NetworkSet, client_ip, limit_key
from app.report_only import ReportOnly, unverified_principal
from app.revocations import RevocationList
from app.roles import Endpoint, is_admin, may_connect
from app.security_log import SecurityEvent, SecurityLog
from app.tokens import Principal, TokenError, TokenVerifier
from app.transports import SUBPROTOCOL, TokenSearchError, Transport, find_token

UNAVAILABLE_RETRY_AFTER = 5


def new_conn_id() -> str:
    """A connection id: 32 random hex digits (what ``uuid4().hex`` gave, at a fraction of the
    cost; nothing reads a version digit from it), unguessable like a token's ``jti``."""
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """What the handshake is decided on, independent of the server's types."""

    endpoint: Endpoint | None  # None: the admin API
    path: str
    peer: str | None
    headers: Mapping[str, str]
    forwarded_for: Sequence[str]
    raw_query: bytes
    subprotocols: Sequence[str]

    @property
    def offers_hub_protocol(self) -> bool:
        return SUBPROTOCOL in self.subprotocols


@dataclass(frozen=True, slots=True)
class Admission:
    """An accepted handshake: the connection's context for its whole life."""

    conn_id: str
    endpoint: Endpoint
    principal: Principal
    client_ip: str
    transport: Transport
    subprotocol: str | None
    user_agent: str | None
    origin: str | None
    connected_at: float = field(default_factory=time.time)
    # Admitted unverified (report-only): the code the handshake would have been refused with.
    would_refuse: Code | None = None


@dataclass(slots=True)
class HandshakeRefused(Exception):
    """A refused handshake. ``http_only``: never sent in the socket form (address refusals)."""

    code: Code
    retry_after: int = 0
    http_only: bool = False
    subprotocol: str | None = None
    # The verified identity when the token was good but refused (revoked, roles): the actor of
    # a refused admin request in the audit trail.
    principal: Principal | None = None


class _Unverified(Exception):
    """A relaxed refusal (report-only): the connection is to be admitted unverified."""

    def __init__(self, error: TokenError, transport: Transport) -> None:
        super().__init__(error.code.value)
        self.error = error
        self.transport = transport


class Gatekeeper:
    """Decides handshakes. :meth:`admit` returns an :class:`Admission` holding a connection slot,
    which the caller must give back with :meth:`release`; it raises :class:`HandshakeRefused`
    otherwise (having logged the refusal), and nothing else."""

    def __init__(
        self,
        settings: Settings,
        verifier: TokenVerifier,
        engine: Engine,
        bans: BanList,
        revocations: RevocationList,
        security_log: SecurityLog,
        *,
        worker_id: str = "",
    ) -> None:
        self._settings = settings
        self._worker_id = worker_id
        self._verifier = verifier
        self._engine = engine
        self._bans = bans
        self._revocations = revocations
        self._log = security_log
        self._trusted = NetworkSet(settings.trusted_networks)
        # Address refusals (bans, per-IP rate) of one address are recorded once per window.
        self.floods = FloodGate()
        self._origins = frozenset(settings.allowed_origins)
        self.report_only = ReportOnly(settings.auth_report_only, settings.report_only_until_ts)
        # Set while the worker shuts down: new handshakes go elsewhere.
        self.draining = False

    def client_ip(self, peer: str | None, forwarded_for: Sequence[str]) -> str:
        return client_ip(peer, forwarded_for, self._trusted)

    async def authenticate_admin(self, request: HandshakeRequest, *, platform: bool = False) -> Principal:
        """The admin API's gate: the same address checks, token search (header only), verification,
        revocation and logging as a handshake, then role ``admin``; with ``platform``, also no
        ``tenant`` (a tenant admin is refused ``role_forbidden``). Raises HandshakeRefused."""
        ip = self.client_ip(request.peer, request.forwarded_for)
        refuse = _Refuser(self._log, request, ip, event="admin.auth_failed", floods=self.floods)
        if self._bans.is_banned(ip):
            raise refuse(Code.IP_BANNED, http_only=True)
        await self._check_address(refuse, ip)
        principal, _ = await self._authenticate(refuse, request, subprotocols=(), raw_query=b"")
        if not is_admin(principal.roles) or (platform and principal.tenant is not None):
            raise refuse(Code.ROLE_FORBIDDEN)
        return principal

    async def admit(self, request: HandshakeRequest) -> Admission:
        assert request.endpoint is not None
        started = time.perf_counter()
        ip = self.client_ip(request.peer, request.forwarded_for)
        subprotocol = SUBPROTOCOL if request.offers_hub_protocol else None
        endpoint = request.endpoint.value
        try:
            admission = await self._decide(request, ip, subprotocol)
        except HandshakeRefused as refused:
            refused.subprotocol = subprotocol
            metrics.bound(metrics.HANDSHAKES, endpoint, refused.code.value).inc()
            raise
        finally:
            metrics.bound(metrics.HANDSHAKE_SECONDS, endpoint).observe(time.perf_counter() - started)
        metrics.bound(metrics.HANDSHAKES, endpoint, "accepted").inc()
        return admission

    async def upgrade(self, admission: Admission, principal: Principal) -> Admission:
        """An unverified connection (report-only) presented a good token (verified, not revoked,
        roles allowing its endpoint): take a connection slot for that identity, under the same
        connection id, and return the verified admission. The caller releases the old slot.
        Raises HandshakeRefused (``connection_limit``, ``rate_limited``, ``unavailable``), logged
        as a ``ws.refresh_failed`` event."""
        headers = {k: v for k, v in (("user-agent", admission.user_agent),
                                     ("origin", admission.origin)) if v is not None}
        request = HandshakeRequest(
            endpoint=admission.endpoint, path=admission.endpoint.path, peer=admission.client_ip,
            headers=headers, forwarded_for=(), raw_query=b"", subprotocols=(),
        )
        refuse = _Refuser(self._log, request, admission.client_ip, event="ws.refresh_failed")
        refuse.principal = principal
        upgraded = await self._take_slot(
            refuse, request, admission.client_ip, admission.subprotocol, admission.conn_id,
            principal, admission.transport,
        )
        return replace(upgraded, connected_at=admission.connected_at)

    async def release(self, admission: Admission) -> None:
        await self._engine.release(
            admission.principal.sub, admission.conn_id, tenant=admission.principal.tenant or ""
        )

    async def _decide(self, request: HandshakeRequest, ip: str, subprotocol: str | None) -> Admission:
        assert request.endpoint is not None
        settings = self._settings
        refuse = _Refuser(self._log, request, ip, floods=self.floods)
        if self.draining:
            raise refuse(Code.UNAVAILABLE, retry_after=1)
        origin = request.headers.get("origin")
        if self._bans.is_banned(ip):
            raise refuse(Code.IP_BANNED, http_only=True)
        if self._origins and (origin is None or origin.rstrip("/").lower() not in self._origins):
            raise refuse(Code.ORIGIN_FORBIDDEN)
        await self._check_address(refuse, ip)
        conn_id = new_conn_id()
        try:
            principal, transport = await self._authenticate(
                refuse, request, subprotocols=request.subprotocols,
                raw_query=request.raw_query if settings.allow_query_token else b"",
                relax=request.endpoint,
            )
            if not may_connect(principal.roles, request.endpoint):
                if self.report_only.relaxes(request.endpoint, Code.ROLE_FORBIDDEN):
                    raise _Unverified(TokenError(
                        Code.ROLE_FORBIDDEN, "the roles do not allow this endpoint", principal.sub,
                        principal.jti, principal.fingerprint,
                    ), transport)
                raise refuse(Code.ROLE_FORBIDDEN)
        except _Unverified as unverified:
            until = self.report_only.until
            assert until is not None
            principal = unverified_principal(
                request.endpoint, conn_id, until, unverified.error.fingerprint
            )
            admission = await self._take_slot(
                refuse, request, ip, subprotocol, conn_id, principal, unverified.transport,
                would_refuse=unverified.error.code,
            )
            refuse.report(unverified.error)
            metrics.AUTH_WOULD_REFUSE.labels(request.endpoint.value, unverified.error.code.value).inc()
            return admission
        return await self._take_slot(refuse, request, ip, subprotocol, conn_id, principal, transport)

    async def _take_slot(
        self, refuse: _Refuser, request: HandshakeRequest, ip: str, subprotocol: str | None,
        conn_id: str, principal: Principal, transport: Transport, *, would_refuse: Code | None = None,
    ) -> Admission:
        """The per-user rate window and a connection slot, in one engine step. An unverified
        principal is a user of its own (its ``sub`` is unique), so only the per-IP limits,
        checked before, bind it."""
        assert request.endpoint is not None
        settings = self._settings
        tenant = principal.tenant or ""
        info = ConnectionInfo(
            conn_id=conn_id, sub=principal.sub, endpoint=request.endpoint.value, client_ip=ip,
            worker=self._worker_id, connected_at=time.time(), tenant=tenant,
        )
        verdict = await self._engine_step(
            refuse,
            self._engine.admit_user(
                principal.sub,
                conn_id,
                tenant=tenant,
                rate_limit=settings.connect_rate_per_user,
                max_connections=settings.max_connections_per_user,
                lease_seconds=settings.connection_lease_seconds,
                info=info,
            ),
        )
        if isinstance(verdict, Refused):
            raise refuse(verdict.code, retry_after=verdict.retry_after)
        return Admission(
            conn_id=conn_id,
            endpoint=request.endpoint,
            principal=principal,
            client_ip=ip,
            transport=transport,
            subprotocol=subprotocol,
            user_agent=request.headers.get("user-agent"),
            origin=request.headers.get("origin"),
            connected_at=info.connected_at,
            would_refuse=would_refuse,
        )

    async def _check_address(self, refuse: _Refuser, ip: str) -> None:
        """The engine's automatic ban and per-IP window (one engine round trip). Both refusals
        are always sent as HTTP. (Configured and operators' bans are checked before, in memory.)"""
        key = limit_key(ip, self._settings.ipv6_prefix_length)
        verdict = await self._engine_step(
            refuse, self._engine.check_ip(key, limit=self._settings.connect_rate_per_ip)
        )
        if isinstance(verdict, Refused):
            raise refuse(verdict.code, retry_after=verdict.retry_after, http_only=True)

    async def _authenticate(
        self, refuse: _Refuser, request: HandshakeRequest, *, subprotocols: Sequence[str],
        raw_query: bytes, relax: Endpoint | None = None,
    ) -> tuple[Principal, Transport]:
        """Find, verify and check the revocation of the token. A failure to present a valid token
        counts towards the address's automatic ban, unless report-only mode at ``relax`` turns it
        into an unverified admission (raises :class:`_Unverified`: a legacy fleet behind one
        address must not get that address banned)."""

        async def failed(error: TokenError, transport: Transport) -> Exception:
            if relax is not None and self.report_only.relaxes(relax, error.code):
                return _Unverified(error, transport)
            return await self._auth_failure(refuse, error)

        try:
            found = find_token(request.headers, subprotocols, raw_query, allow_query=bool(raw_query))
        except TokenSearchError as exc:
            raise await failed(TokenError(Code.TOKEN_MALFORMED, str(exc)), "none") from None
        if found is None:
            raise await failed(TokenError(Code.TOKEN_MISSING, "no token"), "none")
        token, transport = found
        try:
            principal = await self._verifier.verify(token)
        except TokenError as exc:
            raise await failed(exc, transport) from None
        refuse.principal = principal
        if self._revocations.is_revoked(principal):
            raise refuse(Code.TOKEN_REVOKED)
        return principal, transport

    async def _engine_step(
        self, refuse: _Refuser, step: Awaitable[Admitted | Refused]
    ) -> Admitted | Refused:
        try:
            return await step
        except EngineUnavailable:
            metrics.ENGINE_ERRORS.labels("handshake").inc()
            raise refuse(Code.UNAVAILABLE, retry_after=UNAVAILABLE_RETRY_AFTER) from None

    async def _auth_failure(self, refuse: _Refuser, error: TokenError) -> HandshakeRefused:
        metrics.AUTH_FAILURES.labels(error.code.value).inc()
        refused = refuse(error.code, error=error)
        settings = self._settings
        try:
            await self._engine.record_auth_failure(
                limit_key(refuse.ip, settings.ipv6_prefix_length),
                threshold=settings.auth_failures_before_ban,
                window=settings.auth_failure_window_seconds,
                ban_seconds=settings.auth_failure_ban_seconds,
            )
        except EngineUnavailable:
            metrics.ENGINE_ERRORS.labels("auth_failure").inc()
        return refused


class _Refuser:
    """Builds a refusal and logs it as one security event with everything known so far."""

    def __init__(
        self, security_log: SecurityLog, request: HandshakeRequest, ip: str,
        event: str = "ws.auth_failed", floods: FloodGate | None = None,
    ) -> None:
        self._log = security_log
        self._floods = floods
        self._event = event
        self._request = request
        self.ip = ip
        self.principal: Principal | None = None

    def __call__(
        self,
        code: Code,
        *,
        retry_after: int = 0,
        http_only: bool = False,
        error: TokenError | None = None,
    ) -> HandshakeRefused:
        headers = self._request.headers
        principal = self.principal
        event = SecurityEvent(
            event=self._event,
            code=code,
            endpoint=self._request.path,
            client_ip=self.ip,
            user_agent=headers.get("user-agent"),
            origin=headers.get("origin"),
            claimed_sub=error.claimed_sub if error else None,
            verified_sub=principal.sub if principal else None,
            jti=error.jti if error else principal.jti if principal else None,
            fingerprint=error.fingerprint if error else principal.fingerprint if principal else None,
            detail=error.detail if error else None,
            tenant=principal.tenant if principal else None,
        )
        # An address refusal is what a flood from a banned or rate-limited address produces.
        recorded = self._floods.admit(event) if http_only and self._floods is not None else event
        if recorded is not None:
            self._log.record(recorded)
        return HandshakeRefused(code, retry_after=retry_after, http_only=http_only, principal=principal)

    def report(self, error: TokenError) -> None:
        """Record a relaxed refusal (report-only): one ``ws.auth_would_refuse`` event."""
        self._event = "ws.auth_would_refuse"
        self._floods = None
        self(error.code, error=error)
