"""The revocation list as every handshake and refresh sees it: an in-memory view.

It is filled at start from the store and kept current by control events from the engine, so a
check never waits on the database or on Redis. Entries are keyed by ``jti`` or by ``sub`` with a
time, never by the token itself (tokens are malleable; see RFC 8725).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from app.tokens import Principal


@dataclass(frozen=True, slots=True)
class Revocation:
    """``jti`` revokes one token; ``sub`` revokes every token of that subject issued before
    ``issued_before`` (Unix seconds). ``expires_at`` is when the entry can be forgotten.
    ``tenant`` limits it to tokens of that tenant ("" : tokens without one); None: every tenant
    (a platform admin's revocation). ``bob`` of tenant ``a`` and ``bob`` of ``b`` are two users."""

    jti: str | None = None
    sub: str | None = None
    issued_before: float | None = None
    expires_at: float | None = None
    tenant: str | None = None


# Entries are keyed with their tenant scope: None matches every tenant.
_Scoped = tuple[str | None, str]


class RevocationList:
    """Membership tests for revoked tokens. Not thread-safe; used from the event loop only."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._jti: dict[_Scoped, float | None] = {}
        self._sub: dict[_Scoped, tuple[float, float | None]] = {}
        self._clock = clock

    def add(self, revocation: Revocation) -> None:
        if revocation.jti is not None:
            self._jti[(revocation.tenant, revocation.jti)] = revocation.expires_at
        elif revocation.sub is not None:
            before = revocation.issued_before if revocation.issued_before is not None else self._clock()
            key = (revocation.tenant, revocation.sub)
            current = self._sub.get(key)
            if current is None or current[0] < before:
                self._sub[key] = (before, revocation.expires_at)

    def replace(self, revocations: Iterable[Revocation]) -> None:
        """Swap in a full list (a reload from the store); entries added since are kept too."""
        fresh = RevocationList(self._clock)
        for revocation in revocations:
            fresh.add(revocation)
        for jti, expires in self._jti.items():
            fresh._jti.setdefault(jti, expires)
        for sub, entry in self._sub.items():
            if sub not in fresh._sub or fresh._sub[sub][0] < entry[0]:
                fresh._sub[sub] = entry
        self._jti, self._sub = fresh._jti, fresh._sub

    def is_revoked(self, principal: Principal) -> bool:
        tenant = principal.tenant or ""
        if principal.jti is not None and (
            (None, principal.jti) in self._jti or (tenant, principal.jti) in self._jti
        ):
            return True
        for scope in (None, tenant):
            entry = self._sub.get((scope, principal.sub))
            # A token without `iat` cannot prove it was issued after the cut-off: it is revoked too.
            if entry is not None and (principal.iat is None or principal.iat < entry[0]):
                return True
        return False

    def prune(self) -> None:
        """Forget entries whose tokens would have expired anyway."""
        now = self._clock()
        self._jti = {k: v for k, v in self._jti.items() if v is None or v > now}
        self._sub = {k: v for k, v in self._sub.items() if v[1] is None or v[1] > now}

    def __len__(self) -> int:
        return len(self._jti) + len(self._sub)
