"""Report-only rollout: admitting the clients of the replaced, unauthenticated hub for a while.

With ``HUB_AUTH_REPORT_ONLY`` listing an endpoint, a handshake there that would be refused for
its token or its roles is admitted *unverified* instead (and reported), until
``HUB_AUTH_REPORT_ONLY_UNTIL``. Plain code: the gatekeeper asks :meth:`ReportOnly.relaxes`, and
builds the unverified connection's identity with :func:`unverified_principal`.

Guarantees:

* Only :data:`RELAXED` codes are ever relaxed; revocations, bans, Origin, rate limits and
  ``unavailable`` are decided before or apart from this module and always enforced.
* Nothing is relaxed at or after the deadline, whatever the worker's start time (the check reads
  the clock at every handshake).
* An unverified identity can never be a verified one: its ``sub`` is ``unverified:`` followed by
  the random connection id, it has no tenant and no ``jti``, and it expires at the deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from app.errors import Code
from app.roles import AGENT, DASHBOARD, OPERATOR, Endpoint
from app.tokens import Principal

RELAXED = frozenset({
    Code.TOKEN_MISSING, Code.TOKEN_MALFORMED, Code.TOKEN_INVALID, Code.TOKEN_EXPIRED,
    Code.TOKEN_NOT_YET_VALID, Code.CLAIMS_INVALID, Code.ROLE_FORBIDDEN,
})
UNVERIFIED_PREFIX = "unverified:"
# What the replaced hub allowed on each endpoint: everything its clients could do there.
UNVERIFIED_ROLES = {
    Endpoint.AGENT: frozenset({AGENT}),
    Endpoint.DASHBOARD: frozenset({DASHBOARD, OPERATOR}),
}


class ReportOnly:
    """Which endpoints report instead of refusing, and until when."""

    def __init__(
        self, endpoints: Iterable[str], until: float | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._endpoints = frozenset(Endpoint(e) for e in endpoints) if until is not None else frozenset()
        self.until = until if self._endpoints else None
        self._clock = clock

    def relaxes(self, endpoint: Endpoint, code: Code) -> bool:
        """True when a refusal ``code`` at ``endpoint`` is to be reported, not enforced, now."""
        return (
            code in RELAXED
            and endpoint in self._endpoints
            and self.until is not None
            and self._clock() < self.until
        )


def unverified_principal(
    endpoint: Endpoint, conn_id: str, until: float, fingerprint: str | None
) -> Principal:
    """The identity of a connection admitted unverified (see the module's guarantees)."""
    return Principal(
        sub=f"{UNVERIFIED_PREFIX}{conn_id}",
        roles=UNVERIFIED_ROLES[endpoint],
        tenant=None,
        jti=None,
        exp=until,
        iat=None,
        fingerprint=fingerprint or "",
    )
