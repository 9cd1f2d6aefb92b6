"""Lease renewal: keep this worker's connection slots and agent presence alive in the engine.

Every third of a lease the worker writes back the lease of each of its open connections, then
sweeps presence. The renewal must get through before any lease runs out, even on a worker that is
saturated (a reconnect storm) or whose Redis link just came back:

- Each step is bounded by half an interval: a Redis call during a partition can take many of its
  1 s timeouts to fail (each sentinel asked in turn, then retried).
- A renewal that failed or was cut is tried again after ``RENEW_RETRY_SECONDS``, not a whole
  interval later.
- Agent presence is renewed first (one round trip), then connections in chunks, and a cut
  renewal is resumed where it stopped. Starting over from the first connection each time would
  renew the same head again and again while the tail's leases ran out: other workers then admit
  those users past the limit (found by the soak).
- A connection whose lease this worker could not confirm (no renewal of it got through) until
  shortly before that lease may end is closed (:meth:`LeaseRenewal.unconfirmed`): past its lease
  its slot may have lapsed in Redis and been given to a new connection elsewhere, and the limit
  must hold while the two are open (the soak saw users with 11 and 12 sessions for 10 s after a
  partition). Timed from when the confirming renewal was sent, which Redis saw later.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from app.engine import ConnectionInfo, Engine, EngineUnavailable
from app.logs import get_logger

log = get_logger("app.renewal")
RENEW_RETRY_SECONDS = 2.0
# Connections per engine.renew call: the progress a renewal cut by its time bound keeps. At most
# the Redis engine's users per round trip (RENEW_USERS), so that each round trip renews only what
# was still open just before it was sent.
RENEW_CHUNK = 100


def fence_margin(lease_seconds: float) -> float:
    """How long before a lease may end a connection whose lease is unconfirmed is closed: a
    check runs once a second, and the close takes a moment to reach the client."""
    return max(0.5, lease_seconds / 6)


class RenewalCursor:
    """Where the next renewal starts: just after the last chunk that got through.

    The order of the connections is the registry's (insertion order); connections that come
    and go shift it a little, which only moves the starting point."""

    def __init__(self) -> None:
        self._next = 0

    def chunks(self, leases: Sequence[ConnectionInfo], size: int) -> list[Sequence[ConnectionInfo]]:
        """``leases`` from the cursor on, wrapped around, in chunks of at most ``size``."""
        if not leases:
            return []
        start = self._next % len(leases)
        self._next = start
        order = [*leases[start:], *leases[:start]]
        return [order[i : i + size] for i in range(0, len(order), size)]

    def advance(self, done: int) -> None:
        """``done`` more connections were renewed."""
        self._next += done


class LeaseRenewal:
    """The renewal loop of one worker (see the module docstring for its guarantees)."""

    def __init__(
        self,
        engine: Engine,
        *,
        leases: Callable[[], list[ConnectionInfo]],
        is_open: Callable[[str], bool],
        presence_leases: Callable[[], list[tuple[str, str, str]]],
        sweep: Callable[[], Awaitable[None]],
        over_limit: Callable[[list[ConnectionInfo]], None],
        lease_seconds: int,
        max_connections: int,
    ) -> None:
        self._engine = engine
        self._leases = leases
        self._is_open = is_open
        self._presence_leases = presence_leases
        self._sweep = sweep
        self._over_limit = over_limit
        self._lease_seconds = lease_seconds
        self._max_connections = max_connections
        self._fence_after = lease_seconds - fence_margin(lease_seconds)
        # conn_id -> when the last renewal that confirmed its slot was sent (time.time()).
        self._confirmed: dict[str, float] = {}
        # When the last renewal that got through whole began: every connection open then is
        # confirmed from that moment on, so none can be unconfirmed before it plus _fence_after.
        self._whole_since = time.time()
        self.interval = max(1.0, lease_seconds / 3)
        self.cursor = RenewalCursor()

    async def run(self) -> None:
        """Renew, then sweep presence, every interval; forever (cancel to stop)."""
        wait = self.interval
        while True:
            await asyncio.sleep(wait)
            if not await self.renew():
                wait = min(self.interval, RENEW_RETRY_SECONDS)
                continue
            wait = self.interval
            try:
                async with asyncio.timeout(self.interval / 2):
                    await self._sweep()
            except (EngineUnavailable, TimeoutError):
                log.warning("engine.presence_sweep_failed")
            except Exception:
                log.exception("engine.presence_sweep_error")

    async def renew(self) -> bool:
        """One renewal, bounded by half an interval; False when it failed or was cut."""
        leases = self._leases()
        began = time.time()
        if not leases:
            self._confirmed.clear()
            self._whole_since = began
            return True
        self._confirmed = {info.conn_id: self._confirmed[info.conn_id]
                           for info in leases if info.conn_id in self._confirmed}
        renewed = 0
        try:
            async with asyncio.timeout(self.interval / 2):
                # Presence first: one pipelined round trip, which the chunks below could
                # otherwise leave behind at every cut renewal.
                await self._engine.renew_agents(
                    self._presence_leases(), lease_seconds=self._lease_seconds
                )
                for chunk in self.cursor.chunks(leases, RENEW_CHUNK):
                    # Only what is still open: a connection that closed since the list was
                    # made has released its slot, and a late renewal would take it again
                    # (found by the soak: a slot outlived its connection by a lease).
                    still_open = [info for info in chunk if self._is_open(info.conn_id)]
                    sent = time.time()
                    self._over_limit(await self._engine.renew(
                        still_open, lease_seconds=self._lease_seconds,
                        max_connections=self._max_connections))
                    for info in still_open:
                        self._confirmed[info.conn_id] = sent
                    self.cursor.advance(len(chunk))
                    renewed += len(chunk)
        except (EngineUnavailable, TimeoutError) as exc:
            log.warning("engine.renew_failed", connections=len(leases), renewed=renewed,
                        error=type(exc).__name__)
            return False
        except Exception:
            log.exception("engine.renew_error")
            return True
        self._whole_since = began
        return True

    def unconfirmed(self, leases: Callable[[], list[ConnectionInfo]], now: float) -> list[ConnectionInfo]:
        """The open connections (``leases``, asked for only when some may qualify) whose slot no
        renewal has confirmed since ``fence_margin`` before their lease may have ended: the
        caller closes them. Cheap while renewals get through."""
        deadline = now - self._fence_after
        if self._whole_since >= deadline:
            return []
        return [info for info in leases()
                if max(self._confirmed.get(info.conn_id, 0.0), info.connected_at) < deadline]
