"""The session state machine of one connection: expiry, refresh and message limits.

Plain code without I/O: methods take the time and return what to do (:class:`Send`, :class:`Close`);
the endpoint loop performs it. The connection's principal is replaced only by :meth:`refreshed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from app.errors import Code
from app.handshake import Admission
from app.messages import AuthExpiring, AuthRefreshed, Welcome, encode, error
from app.roles import may_connect
from app.tokens import Principal, TokenError

MAX_REFRESH_FAILURES = 3


@dataclass(frozen=True, slots=True)
class Send:
    text: str


@dataclass(frozen=True, slots=True)
class Close:
    code: Code
    # The close code when it is not the code's own (an unverified session's end: always 4401).
    close: int | None = None


Action = Send | Close


@dataclass(frozen=True, slots=True)
class Limits:
    refresh_warning_seconds: float
    leeway_seconds: float
    message_rate: float
    message_burst: int


class Session:
    """What one connection is allowed, and until when.

    Guarantees: ``auth.expiring`` is produced at most once per token; a token is never used past
    ``exp + leeway`` (:meth:`on_timer` closes ``token_expired``); the principal changes only to one
    with the same ``sub`` whose roles still allow the endpoint, except that an unverified session
    (report-only) becomes a verified one through :meth:`upgraded`. An unverified session never
    outlives the report-only window: :meth:`on_timer` closes it 4401 with its ``would_refuse``.
    """

    __slots__ = (
        "_limits", "_over_limit", "_refilled_at", "_refresh_failures", "_tokens", "_warned",
        "admission", "principal", "would_refuse",
    )

    def __init__(self, admission: Admission, limits: Limits, now: float) -> None:
        self.admission = admission
        self.principal = admission.principal
        self.would_refuse = admission.would_refuse
        self._limits = limits
        self._warned = False
        self._refresh_failures = 0
        self._tokens = float(limits.message_burst)
        self._refilled_at = now
        self._over_limit = 0

    # Expiry ---------------------------------------------------------------------------------
    @property
    def expires_at(self) -> float:
        if self.would_refuse is not None:
            return self.principal.exp  # the deadline: no leeway, it is the hub's own clock
        return self.principal.exp + self._limits.leeway_seconds

    @property
    def unverified(self) -> bool:
        return self.would_refuse is not None

    def deadline(self) -> float:
        """When :meth:`on_timer` must next run."""
        if not self._warned:
            return min(self.expires_at, self.principal.exp - self._limits.refresh_warning_seconds)
        return self.expires_at

    def welcome(self, now: float) -> list[Action]:
        p = self.principal
        actions: list[Action] = [
            Send(
                encode(
                    Welcome(
                        connection_id=self.admission.conn_id,
                        sub=p.sub,
                        roles=sorted(p.roles),
                        tenant=p.tenant,
                        expires_at=int(p.exp),
                        auth="unverified" if self.would_refuse is not None else "verified",
                        would_refuse=self.would_refuse.value if self.would_refuse is not None else None,
                    )
                )
            )
        ]
        return actions + self.on_timer(now)

    def on_timer(self, now: float) -> list[Action]:
        if now >= self.expires_at:
            if self.would_refuse is not None:
                return [Close(self.would_refuse, close=4401)]
            return [Close(Code.TOKEN_EXPIRED)]
        if not self._warned and now >= self.principal.exp - self._limits.refresh_warning_seconds:
            self._warned = True
            left = max(0, math.floor(self.principal.exp - now))
            return [Send(encode(AuthExpiring(expires_at=int(self.principal.exp), seconds_left=left)))]
        return []

    # Refresh --------------------------------------------------------------------------------
    def refreshed(self, principal: Principal, ref: object) -> list[Action]:
        """A refresh token verified (and found not revoked)."""
        if principal.sub != self.principal.sub or principal.tenant != self.principal.tenant:
            return [Close(Code.IDENTITY_CHANGED)]
        if not may_connect(principal.roles, self.admission.endpoint):
            return [Close(Code.ROLE_FORBIDDEN)]
        self.principal = principal
        self._warned = False
        self._refresh_failures = 0
        ref_id = ref if isinstance(ref, str | int) else None
        return [Send(encode(AuthRefreshed(expires_at=int(principal.exp), ref=ref_id)))]

    def upgraded(self, admission: Admission, ref: object) -> list[Action]:
        """An unverified session presented a good token (verified, not revoked, roles allowing
        this endpoint, and a connection slot taken for it): it goes on as ``admission``."""
        self.admission = admission
        self.principal = admission.principal
        self.would_refuse = None
        self._warned = False
        self._refresh_failures = 0
        ref_id = ref if isinstance(ref, str | int) else None
        return [Send(encode(AuthRefreshed(expires_at=int(self.principal.exp), ref=ref_id)))]

    def refresh_failed(self, failure: TokenError | Code, ref: object) -> list[Action]:
        """A refresh token was refused: an error, and the old token goes on, up to 3 times."""
        code = failure.code if isinstance(failure, TokenError) else failure
        self._refresh_failures += 1
        if self._refresh_failures >= MAX_REFRESH_FAILURES:
            return [Close(Code.TOKEN_INVALID)]
        return [Send(error(code, f"refresh refused: {code.value}", ref))]

    # Message rate ---------------------------------------------------------------------------
    def allow_message(self, now: float) -> list[Action] | None:
        """A token bucket (``message_rate`` per second, ``message_burst`` deep). None: go on.
        Past the limit: an ``error`` for each message up to another burst's worth, then a close
        ``rate_limited`` (4429) if the flood goes on."""
        limits = self._limits
        self._tokens = min(
            float(limits.message_burst), self._tokens + (now - self._refilled_at) * limits.message_rate
        )
        self._refilled_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self._over_limit = 0
            return None
        self._over_limit += 1
        if self._over_limit > limits.message_burst:
            return [Close(Code.RATE_LIMITED)]
        return [Send(error(Code.RATE_LIMITED, "too many messages; slow down"))]
