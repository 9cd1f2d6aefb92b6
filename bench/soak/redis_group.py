"""The soak's Redis: the Sentinel group of the HA tests (one primary, one replica, three sentinels
on loopback), a primary kill that waits for the promotion, and a cluster-wide count of slots.

The group itself is :class:`tests.support.redis_ha.SentinelGroup` (reused, not copied): started
and killed by PID, never by name.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from tests.support.redis_ha import SentinelGroup, cli

PROMOTION_TIMEOUT_SECONDS = 30.0


class SoakRedis:
    def __init__(self) -> None:
        self.group = SentinelGroup()

    def start(self) -> SoakRedis:
        try:
            self.group.start()
        except BaseException:
            self.group.close()
            raise
        return self

    @property
    def url(self) -> str:
        return self.group.url

    def ports(self) -> list[int]:
        """Every port a hub must reach: the sentinels, the primary and the replica."""
        return [s.port for s in self.group.sentinels] + [self.group.primary.port, self.group.replica.port]

    def kill_primary(self) -> tuple[int, int]:
        """``kill -9`` of the current primary; waits until the sentinels promote the replica, then
        starts the old one again (the sentinels make it a replica). Returns (killed, promoted)."""
        port = self.group.current_primary_port()
        node = self.group.primary if self.group.primary.port == port else self.group.replica
        node.kill()
        deadline = time.monotonic() + PROMOTION_TIMEOUT_SECONDS
        promoted = port
        while time.monotonic() < deadline:
            try:
                promoted = self.group.current_primary_port()
            except RuntimeError:
                promoted = port
            if promoted != port:
                break
            time.sleep(0.2)
        # Restart it only once every sentinel names the new primary: a node without persistence
        # comes back as an empty primary, and a sentinel that still named it would send hubs to
        # a slot table with nothing in it (the soak's first runs saw users above the limit so).
        while time.monotonic() < deadline and not self._agreed(promoted):
            time.sleep(0.2)
        node.start()
        while time.monotonic() < deadline and not node.answers():
            time.sleep(0.1)
        return port, promoted

    def _agreed(self, port: int) -> bool:
        for sentinel in self.group.sentinels:
            reply = cli(sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "hubmaster").splitlines()
            if reply[-1:] != [str(port)]:
                return False
        return True

    def slot_counts(self, prefix: str = "hub") -> dict[str, int]:
        """Unexpired connection slots per user key, read from the current primary (one SCAN)."""
        port = self.group.current_primary_port()
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=2)
        try:
            seconds, micros = client.time()
            now_ms = seconds * 1000 + micros // 1000
            keys = list(client.scan_iter(match=f"{prefix}:{{u:*}}:slots", count=2000))
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.zcount(key, f"({now_ms}", "+inf")
            counts = pipe.execute()
        finally:
            client.close()
        return {key.decode(): int(n) for key, n in zip(keys, counts, strict=True) if n}

    def slot_details(self, keys: list[str]) -> dict[str, list[dict[str, Any]]]:
        """Per slots key: each unexpired slot's connection id, seconds left on its lease and the
        connection info the hub stored with it (endpoint, client address, connected at)."""
        port = self.group.current_primary_port()
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, socket_connect_timeout=2)
        found: dict[str, list[dict[str, Any]]] = {}
        try:
            seconds, micros = client.time()
            now_ms = seconds * 1000 + micros // 1000
            for key in keys:
                info_key = key.rsplit(":", 1)[0] + ":info"
                slots = client.zrangebyscore(key, f"({now_ms}", "+inf", withscores=True)
                infos = client.hmget(info_key, [member for member, _ in slots]) if slots else []
                found[key] = [
                    {"conn_id": member.decode(), "lease_left_s": round((score - now_ms) / 1000, 1),
                     "info": info.decode() if info else None}
                    for (member, score), info in zip(slots, infos, strict=True)
                ]
        finally:
            client.close()
        return found

    def close(self) -> None:
        self.group.close()

