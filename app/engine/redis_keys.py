"""The Redis engine's key layout: one hash slot per user, address, tenant and agent history.

- A user: ``{prefix}:{u:<sub>}:slots|rate|info|released`` (without tenant) or
  ``{prefix}:{u:<tenant>:<sub>}:slots|rate|info|released`` (a user is the pair tenant, sub).
  ``released`` marks the conn_ids given back lately (a zset, conn_id -> end of the mark, ms).
- An address: ``{prefix}:{ip:<ip>}:rate|fails|ban`` (``<ip>`` an IPv4 address or an IPv6 network,
  normalised first).
- Presence: ``{prefix}:{t:<tenant>}:agents`` (zset agent_id -> latest lease expiry, ms) and
  ``{prefix}:{t:<tenant>}:a:<agent>`` (hash conn_id -> ``expiry_ms:connected_us:worker``), and
  ``{prefix}:{t:<tenant>}:released`` (zset of the conn_ids gone offline lately -> end of the mark).
- Event history: ``{prefix}:{h:<tenant>:<agent>}:meta|ev`` (epoch and counter; a stream trimmed
  by MAXLEN and MINID), one slot per agent so that histories spread over a cluster's shards.

The part in braces is the Redis Cluster hash tag, so each script touches one slot. ``<sub>``,
``<tenant>`` and ``<agent>`` are base64url of their UTF-8 bytes (:func:`tag`), so no ``{``,
``}``, ``:`` or ``*`` in an id can move the tag or alias another key, and the tenant "" is
``{t:}``. Every key has a TTL (set by the scripts): idle users, addresses and tenants vanish by
themselves.
"""

from __future__ import annotations

from app.engine._redis_client import tag
from app.engine._shared import normalize_ip


class RedisKeys:
    """The keys of one deployment (``prefix``, without braces)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError("the Redis key prefix must be non-empty and hold no braces")
        self.prefix = prefix

    def user_key(self, sub: str, kind: str, tenant: str = "") -> str:
        return f"{self._user(sub, tenant)}:{kind}"

    def user_keys(self, sub: str, tenant: str, *kinds: str) -> list[str]:
        """Several keys of one user (its ids encoded once: this is on every handshake)."""
        user = self._user(sub, tenant)
        return [f"{user}:{kind}" for kind in kinds]

    def _user(self, sub: str, tenant: str) -> str:
        # base64url holds no ":", so "<tenant>:<sub>" cannot alias another pair; a user without a
        # tenant keeps the key it had before tenants were part of it.
        user = f"{tag(tenant)}:{tag(sub)}" if tenant else tag(sub)
        return f"{self.prefix}:{{u:{user}}}"

    def ip_key(self, ip: str, kind: str) -> str:
        return f"{self.prefix}:{{ip:{tag(normalize_ip(ip))}}}:{kind}"

    def agents_key(self, tenant: str) -> str:
        """The tenant's zset of agents (member = agent_id, score = latest lease expiry, ms)."""
        return f"{self.prefix}:{{t:{tag(tenant)}}}:agents"

    def agent_key(self, tenant: str, agent_id: str) -> str:
        """One agent's hash of connections (conn_id -> ``expiry_ms:connected_us:worker``)."""
        return f"{self.prefix}:{{t:{tag(tenant)}}}:a:{tag(agent_id)}"

    def released_key(self, tenant: str) -> str:
        """The tenant's zset of agent connections gone offline lately (conn_id -> end, ms)."""
        return f"{self.prefix}:{{t:{tag(tenant)}}}:released"

    def history_keys(self, tenant: str, agent_id: str) -> list[str]:
        """One agent's history: its ``meta`` hash (epoch, last seq) and ``ev`` stream."""
        return [f"{self.prefix}:{{h:{tag(tenant)}:{tag(agent_id)}}}:{kind}" for kind in ("meta", "ev")]

    def info_pattern(self) -> str:
        """A SCAN pattern for every user's ``info`` key."""
        return f"{glob_escape(self.prefix)}:{{u:*}}:info"


def glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis glob pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)
