"""Where identity providers put the claims the hub needs, and what makes a claim usable.

Plain functions over a decoded, signature-checked claims object; :mod:`app.tokens` calls them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

MAX_CLAIM_CHARS = 256
_MAX_ROLES = 64
_MAX_ROLE_CHARS = 256

MISSING: Any = object()


def claim_at(claims: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at a dotted claim path (``realm_access.roles``), or ``MISSING``. A top-level
    claim whose name is the whole path wins: namespaced claims are URLs with dots in them
    (``https://hub.example.com/roles``)."""
    whole = ".".join(path)
    if len(path) > 1 and whole in claims:
        return claims[whole]
    value: Any = claims
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def is_name(value: object) -> TypeGuard[str]:
    """A ``sub`` or ``tenant``: printable Unicode text (no control characters, no lone
    surrogates) of 1 to 256 characters."""
    return isinstance(value, str) and 0 < len(value) <= MAX_CLAIM_CHARS and value.isprintable()


@dataclass(frozen=True, slots=True)
class ClaimMapping:
    """Where a provider's tokens keep the roles and the tenant, and how its role names map to
    the hub's (``HUB_JWT_ROLES_CLAIM``, ``HUB_JWT_ROLE_MAP``, ``HUB_JWT_TENANT_CLAIM``)."""

    roles: tuple[str, ...] = ("roles",)
    role_map: Mapping[str, frozenset[str]] = field(default_factory=dict)
    tenant: tuple[str, ...] = ("tenant",)

    def roles_of(self, claims: Mapping[str, Any]) -> frozenset[str] | None:
        """The hub roles a token grants, or None when the claim is missing or of a wrong type.

        The hub's own ``roles`` claim must be a list (or a single-string ``role``); a configured
        path may also hold a space-separated string, as ``scope`` does. With a role map, values
        it does not name grant nothing (providers put many unrelated scopes and groups there).
        """
        value = claim_at(claims, self.roles)
        if value is MISSING and self.roles == ("roles",):
            role = claims.get("role")
            value = [role] if isinstance(role, str) else MISSING
        if isinstance(value, str) and self.roles != ("roles",):
            value = value.split()
        if not (isinstance(value, list) and len(value) <= _MAX_ROLES
                and all(isinstance(r, str) and len(r) <= _MAX_ROLE_CHARS for r in value)):
            return None
        if not self.role_map:
            return frozenset(value)
        return frozenset().union(*(self.role_map.get(item, ()) for item in value))
