"""The audit trail of admin actions: every admin request that changes or tries to change state.

:class:`AuditMiddleware` sees each admin request that is one of the four state-changing actions
(``ban``, ``unban``, ``revoke``, ``disconnect``; :func:`classify`) and, once the response is
decided, stores one entry: when, the verified actor and its tenant (None when the request was
refused before the token was verified), the action, its target, the outcome (``ok`` or the
refusal code, :func:`outcome_of`) and the client's address. Refused requests are recorded like
accepted ones: a 401, a tenant admin's 403, a 404, a 422 (``invalid_message``,
``would_lock_out``). Refusals of the address itself (``ip_banned``, ``rate_limited``) are not:
a flood of them is already recorded, counted, as security events (app.flood), and one row per
attempt would let a banned address fill the table.

Guarantees: the entry is stored before the answer is sent (an admin who got an answer can read
its entry); an entry never holds a token (targets are redacted and cut, app.logs.redact); a
failure to store an entry never changes the answer the admin gets, and is logged
(``admin.audit_failed``, with the entry) and counted (``hub_admin_audit_failures_total``).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from app import metrics
from app.errors import Code
from app.logs import get_logger, redact
from app.store.audit import add_audit

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from app.runtime import Runtime

log = get_logger("app.audit")

ACTIONS = ("ban", "unban", "revoke", "disconnect")
NOT_AUDITED = frozenset({Code.IP_BANNED.value, Code.RATE_LIMITED.value})
# Admin request bodies are small; what is read beyond this is not kept for the target.
MAX_BODY = 16 * 1024
WRITE_TIMEOUT = 5.0
_ROUTES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("POST", re.compile(r"^/admin/bans/?$"), "ban"),
    ("DELETE", re.compile(r"^/admin/bans/(?P<target>[^/]+)$"), "unban"),
    ("POST", re.compile(r"^/admin/revocations/?$"), "revoke"),
    ("POST", re.compile(r"^/admin/users/(?P<target>.+)/disconnect$"), "disconnect"),
)
STATE_KEY = "admin_principal"  # request.state: the verified admin (set by app.admin)


@dataclass(frozen=True, slots=True)
class Audited:
    """An admin request that is an audited action: the action and, when the path names it,
    the target."""

    action: str
    target: str | None


def classify(method: str, raw_path: str) -> Audited | None:
    """The audited action of a request, or None (reads, and everything outside ``/admin``)."""
    for route_method, pattern, action in _ROUTES:
        if method == route_method and (match := pattern.match(raw_path)):
            target = match.groupdict().get("target")
            return Audited(action, unquote(target) if target is not None else None)
    return None


def body_target(action: str, body: bytes) -> str | None:
    """The target named in a request body: a ban's ``cidr``, a revocation's ``jti:...`` or
    ``sub:...`` (with ``@tenant`` when one is given). None when the body does not say."""
    try:
        document: Any = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    if action == "ban" and isinstance(document.get("cidr"), str):
        return str(document["cidr"])
    if action == "revoke":
        for key in ("jti", "sub"):
            if isinstance(document.get(key), str):
                tenant = document.get("tenant")
                scope = f"@{tenant}" if isinstance(tenant, str) else ""
                return f"{key}:{document[key]}{scope}"
    return None


def outcome_of(status: int, body: bytes) -> str:
    """``ok`` for a 2xx answer, else the refusal's code: the ``error`` of the JSON body, or
    ``invalid_message`` for a 422 of FastAPI's validation."""
    if 200 <= status < 300:
        return "ok"
    try:
        document: Any = json.loads(body)
    except (ValueError, RecursionError):
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return str(document["error"])
    if status == 422:
        return Code.INVALID_MESSAGE.value
    return f"http_{status}"


def _clean(text: str | None) -> str | None:
    if text is None:
        return None
    return "".join(ch if ch.isprintable() else "?" for ch in redact(text))


class AuditMiddleware:
    """Pure ASGI middleware around the app (outside its exception handlers, so it sees the
    final answer, refusals included). Requests that :func:`classify` ignores pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The raw path: a percent-encoded `/` in a disconnected sub must stay part of the sub.
        raw_path = scope.get("raw_path")
        path = raw_path.decode("latin-1").split("?")[0] if raw_path else str(scope["path"])
        audited = classify(scope["method"], path)
        if audited is None:
            await self.app(scope, receive, send)
            return
        request_body = bytearray()
        status = 500
        response_body = bytearray()

        async def receive_and_keep() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(request_body) < MAX_BODY:
                request_body.extend(message.get("body", b"")[: MAX_BODY - len(request_body)])
            return message

        start: Message | None = None
        recorded = False

        async def send_after_recording(message: Message) -> None:
            # The answer leaves only once its entry is stored: held back until the first body
            # chunk (the hub's refusals are one chunk, and it holds the refusal's code).
            nonlocal status, start, recorded
            if message["type"] == "http.response.start":
                status, start = int(message["status"]), message
                return
            if message["type"] == "http.response.body" and not recorded:
                if not 200 <= status < 300:
                    response_body.extend(message.get("body", b"")[:MAX_BODY])
                recorded = True
                await self._record(scope, audited, bytes(request_body), status, bytes(response_body))
                if start is not None:
                    await send(start)
            await send(message)

        try:
            await self.app(scope, receive_and_keep, send_after_recording)
        finally:
            if not recorded:  # no answer at all (the app failed before one)
                await self._record(scope, audited, bytes(request_body), status, bytes(response_body))

    async def _record(
        self, scope: Scope, audited: Audited, request_body: bytes, status: int, response_body: bytes
    ) -> None:
        outcome = outcome_of(status, response_body)
        if outcome in NOT_AUDITED:
            return
        runtime: Runtime | None = getattr(scope["app"].state, "runtime", None)
        if runtime is None:
            return
        principal = scope.get("state", {}).get(STATE_KEY)
        client = scope.get("client")
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        ip = runtime.gatekeeper.client_ip(
            client[0] if client else None, [v for k, v in headers if k == "x-forwarded-for"]
        )
        target = audited.target if audited.target is not None else body_target(audited.action, request_body)
        entry = {
            "at": datetime.now(UTC),
            "actor": principal.sub if principal is not None else None,
            "tenant": principal.tenant if principal is not None else None,
            "action": audited.action,
            "target": _clean(target),
            "outcome": outcome,
            "client_ip": ip,
        }
        metrics.ADMIN_ACTIONS.labels(audited.action, outcome if outcome in _KNOWN else "other").inc()
        try:
            # Bounded: a hung database must not hold the admin's answer for long.
            async with asyncio.timeout(WRITE_TIMEOUT):
                await add_audit(runtime.store, **entry)  # type: ignore[arg-type]
        except Exception as exc:
            metrics.ADMIN_AUDIT_FAILURES.inc()
            log.error("admin.audit_failed", error=type(exc).__name__,
                      **{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in entry.items()})


# Outcome label values of hub_admin_actions_total: a closed set (the body of an error is ours,
# but a label must never take an unbounded value).
_KNOWN = frozenset({"ok", *(code.value for code in Code)})
