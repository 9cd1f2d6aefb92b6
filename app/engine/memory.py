"""The embedded engine: limits, leases and control events in this process's memory.

It serves exactly one worker (the settings refuse more without Redis). Every method runs to
completion without awaiting, so on one event loop each one is atomic, as the interface requires.

Guarantees beyond :class:`app.engine.base.Engine`:

- Time comes from ``clock`` (``time.monotonic`` by default); tests inject their own.
- Memory stays bounded: a key whose window, failures, ban or slots are all gone is dropped, by
  purge on access, by a full sweep whenever the tables have doubled since the last one, and by a
  periodic sweep while started. When a sweep leaves more than ``max_keys`` entries in one table
  (an attacker rotating addresses faster than windows empty), the oldest *rate* or *failure* logs
  are evicted, never bans or slots: losing a counter weakens a limit for one key, losing a ban
  would lift it. A counter table thus stays under about twice ``max_keys``.
- A user is the pair (tenant, sub); every per-user table is keyed by it.
- IP addresses are normalised (``::ffff:1.2.3.4`` is ``1.2.3.4``; one IPv6 address has one
  spelling), so a different spelling of the same address shares its window and ban.
- A slot's :class:`ConnectionInfo` lives and dies with the slot (released, expired or swept
  together). A slot admitted without ``info`` holds its place but is not listed.
- :meth:`MemoryEngine.renew` re-establishes a slot that ran out (e.g. the event loop stalled past
  a lease) with its info, within the maximum; a live slot without info gets the given one.
- Presence is a :class:`~app.engine.memory_presence.MemoryPresence` and the event history a
  :class:`~app.engine.memory_history.MemoryHistory` (see their modules).
- Control events and routed messages are delegated to a
  :class:`~app.engine.memory_pubsub.LocalMessaging` (see its module for their guarantees).
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections.abc import Callable, Collection, Iterable
from typing import TypeVar

import structlog

from app.engine._shared import (
    DelegatedMessaging,
    Released,
    check_info,
    matches,
    normalize_ip,
    sort_connections,
)
from app.engine.base import (
    Admitted,
    ConnectionInfo,
    History,
    HistoryPolicy,
    IpVerdict,
    Refused,
    UserVerdict,
)
from app.engine.memory_history import MemoryHistory
from app.engine.memory_presence import MemoryPresence
from app.engine.memory_pubsub import LocalMessaging
from app.errors import Code

log = structlog.get_logger("app.engine")

Clock = Callable[[], float]

SWEEP_INTERVAL_SECONDS = 30.0
MIN_SWEEP_TRIGGER = 1024
DEFAULT_MAX_KEYS = 1_000_000
_K = TypeVar("_K")
_V = TypeVar("_V")
# (tenant, sub): "" is the tenant of tokens without one.
User = tuple[str, str]


class _Log:
    """Admitted timestamps of one key inside a sliding window (exact, not bucketed)."""

    __slots__ = ("times", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        # A list, not a deque: one per user and address, and an empty deque takes 624 bytes
        # (a block of 64 slots) where a list of one time takes 64. Times are appended in clock
        # order, so the expired ones are a prefix.
        self.times: list[float] = []

    def purge(self, now: float) -> None:
        # An attempt at t counts while now < t + window.
        times, edge = self.times, now - self.window
        if times and times[0] <= edge:
            del times[: bisect.bisect_right(times, edge)]

    def retry_after(self, now: float) -> int:
        return max(1, math.ceil(self.times[0] + self.window - now))


class _Slot:
    """One connection's slot: its lease expiry and, when given, its info (one object per
    connection, not two dicts per user: the embedded engine's memory per connection counts)."""

    __slots__ = ("info", "until")

    def __init__(self, until: float, info: ConnectionInfo | None) -> None:
        self.until = until
        self.info = info


class MemoryEngine(DelegatedMessaging):
    """The in-process engine (see the module docstring for its guarantees)."""

    _messaging: LocalMessaging

    name = "embedded"

    def __init__(
        self,
        *,
        worker_id: str,
        clock: Clock = time.monotonic,
        max_keys: int = DEFAULT_MAX_KEYS,
        sweep_interval: float = SWEEP_INTERVAL_SECONDS,
    ) -> None:
        self.worker_id = worker_id
        self._clock = clock
        self._max_keys = max_keys
        self._sweep_interval = sweep_interval
        self._ip_rate: dict[str, _Log] = {}
        self._ip_fails: dict[str, _Log] = {}
        self._bans: dict[str, float] = {}
        self._user_rate: dict[User, _Log] = {}
        self._slots: dict[User, dict[str, _Slot]] = {}
        # conn_ids given back lately, for slots ("slot", tenant, sub, conn_id) and for presence
        # ("agent", tenant, conn_id): see Engine.release.
        self._released = Released()
        self._presence = MemoryPresence(worker_id, clock, self._released)
        self._messaging = LocalMessaging(worker_id=worker_id)
        self._history = MemoryHistory(clock)
        self._sweep_trigger = MIN_SWEEP_TRIGGER
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._sweeper is None and not self._closed:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="engine-sweep")

    async def close(self) -> None:
        self._closed = True
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
        await self._messaging.close()
        if sweeper is not None:
            await asyncio.gather(sweeper, return_exceptions=True)

    async def ping(self) -> bool:
        return True

    # -- limits ------------------------------------------------------------------------------

    async def check_ip(self, ip: str, *, limit: int, window: int = 60) -> IpVerdict:
        now = self._clock()
        ip = normalize_ip(ip)
        banned = self._ban_left(ip, now)
        if banned is not None:
            return Refused(Code.IP_BANNED, banned)
        entry = self._log(self._ip_rate, ip, window, now)
        if len(entry.times) >= limit:
            return Refused(Code.RATE_LIMITED, entry.retry_after(now))
        entry.times.append(now)
        self._after_insert()
        return Admitted()

    async def admit_user(
        self,
        sub: str,
        conn_id: str,
        *,
        tenant: str = "",
        rate_limit: int,
        max_connections: int,
        lease_seconds: int,
        window: int = 60,
        info: ConnectionInfo | None = None,
    ) -> UserVerdict:
        check_info(sub, conn_id, info, tenant)
        now = self._clock()
        user = (tenant, sub)
        slots = self._live_slots(user, now)
        entry = self._log(self._user_rate, user, window, now)
        if len(entry.times) >= rate_limit:
            return Refused(Code.RATE_LIMITED, entry.retry_after(now))
        # A conn_id that already holds a slot is re-admitted, not counted twice against the max.
        if conn_id not in slots and len(slots) >= max_connections:
            return Refused(Code.CONNECTION_LIMIT)
        entry.times.append(now)
        self._released.clear(("slot", tenant, sub, conn_id))
        slot = slots.get(conn_id)
        if slot is None:
            slots[conn_id] = _Slot(now + lease_seconds, info)
        else:
            slot.until = now + lease_seconds
            if info is not None:
                slot.info = info
        self._slots[user] = slots
        self._after_insert()
        return Admitted()

    async def release(self, sub: str, conn_id: str, *, tenant: str = "") -> None:
        user = (tenant, sub)
        self._released.mark(("slot", tenant, sub, conn_id), self._clock())
        slots = self._slots.get(user)
        if slots is None:
            return
        slots.pop(conn_id, None)
        if not slots:
            del self._slots[user]

    async def list_connections(
        self, sub: str | None = None, *, tenant: str | None = None
    ) -> list[ConnectionInfo]:
        now = self._clock()
        if sub is not None and tenant is not None:
            users = [(tenant, sub)]
        else:
            users = [u for u in self._slots if matches_user(u, sub, tenant)]
        rows: list[ConnectionInfo] = []
        for user in users:
            rows.extend(
                slot.info for slot in self._live_slots(user, now).values()
                if slot.info is not None and matches(slot.info, sub, tenant)
            )
        return sort_connections(rows)

    async def renew(
        self, connections: Iterable[ConnectionInfo], *, lease_seconds: int, max_connections: int
    ) -> list[ConnectionInfo]:
        now = self._clock()
        expiry = now + lease_seconds
        gone: list[ConnectionInfo] = []
        seen: dict[User, dict[str, _Slot]] = {}
        for info in connections:
            user = (info.tenant, info.sub)
            slots = seen.get(user)
            if slots is None:
                # Purged once per user: a user with thousands of connections here is not O(n^2).
                slots = seen[user] = self._live_slots(user, now)
                self._slots[user] = slots
            slot = slots.get(info.conn_id)
            if slot is not None:
                slot.until = expiry
                # A stored info is kept (a re-admission may have replaced it); a missing one is set.
                if slot.info is None:
                    slot.info = info
            else:
                gone.append(info)
        # Live slots first; a lapsed one (the loop stalled past the lease) is taken again only
        # within the limit: another connection may have been admitted in its place.
        refused: list[ConnectionInfo] = []
        released = 0
        for info in gone:
            user = (info.tenant, info.sub)
            slots = self._slots[user]
            if self._released.holds(("slot", info.tenant, info.sub, info.conn_id), now):
                released += 1  # closed since the caller listed it
            elif len(slots) >= max_connections:
                refused.append(info)
            else:
                slots[info.conn_id] = _Slot(expiry, info)
        if len(gone) > len(refused) + released:
            log.warning("engine.leases_revived", count=len(gone) - len(refused) - released)
            self._after_insert()
        return refused

    async def count_connections(self, sub: str, *, tenant: str = "") -> int:
        user = (tenant, sub)
        slots = self._live_slots(user, self._clock())
        if slots:
            self._slots[user] = slots
        return len(slots)

    async def record_auth_failure(
        self, ip: str, *, threshold: int, window: int, ban_seconds: int
    ) -> bool:
        now = self._clock()
        ip = normalize_ip(ip)
        if self._ban_left(ip, now) is not None:
            return False
        entry = self._log(self._ip_fails, ip, window, now)
        entry.times.append(now)
        banned = len(entry.times) >= threshold
        if banned:
            # Counting starts afresh once the ban is over.
            del self._ip_fails[ip]
            self._bans[ip] = now + ban_seconds
        self._after_insert()
        return banned

    async def ban_ip(self, ip: str, *, seconds: int) -> None:
        self._bans[normalize_ip(ip)] = self._clock() + seconds
        self._after_insert()

    async def unban_ip(self, ip: str) -> None:
        ip = normalize_ip(ip)
        self._bans.pop(ip, None)
        self._ip_fails.pop(ip, None)


    # -- presence ----------------------------------------------------------------------------

    async def agent_online(
        self, tenant: str, agent_id: str, conn_id: str, *, lease_seconds: int
    ) -> bool:
        return self._presence.online(tenant, agent_id, conn_id, lease_seconds)

    async def agent_offline(self, tenant: str, agent_id: str, conn_id: str) -> bool:
        return self._presence.offline(tenant, agent_id, conn_id)

    async def renew_agents(
        self, entries: Iterable[tuple[str, str, str]], *, lease_seconds: int
    ) -> None:
        self._presence.renew(entries, lease_seconds)

    async def locate_agent(self, tenant: str, agent_id: str) -> tuple[str, str] | None:
        return self._presence.locate(tenant, agent_id)

    async def online_agents(self, tenant: str, among: Collection[str] | None = None) -> set[str]:
        return self._presence.online_agents(tenant, among)

    # -- event history -----------------------------------------------------------------------

    async def append_event(
        self, tenant: str, agent_id: str, payload: str, *, policy: HistoryPolicy,
        last: tuple[str, int] | None = None,
    ) -> tuple[str, int]:
        # One process's memory cannot lose a number it gave: ``last`` never matters here.
        return self._history.append(tenant, agent_id, payload, policy)

    async def read_history(
        self, tenant: str, after: dict[str, int], *, policy: HistoryPolicy
    ) -> dict[str, History]:
        return self._history.read(tenant, after, policy)

    # -- bookkeeping -------------------------------------------------------------------------

    def tracked_keys(self) -> int:
        """How many per-key entries are held (for tests and metrics)."""
        return (
            len(self._ip_rate)
            + len(self._ip_fails)
            + len(self._bans)
            + len(self._user_rate)
            + len(self._slots)
            + len(self._presence)
            + len(self._released)
        )

    def sweep(self) -> None:
        """Drop every entry whose window, ban or leases are over."""
        now = self._clock()
        _purge(self._ip_rate, now)
        _purge(self._ip_fails, now)
        _purge(self._user_rate, now)
        for ip in [ip for ip, until in self._bans.items() if until <= now]:
            del self._bans[ip]
        for user in list(self._slots):
            self._live_slots(user, now)
        self._presence.sweep()
        self._released.purge(now)
        self._history.sweep()
        self._sweep_trigger = max(MIN_SWEEP_TRIGGER, 2 * self.tracked_keys())

    def _log(self, table: dict[_K, _Log], key: _K, window: int, now: float) -> _Log:
        entry = table.get(key)
        if entry is None:
            entry = table[key] = _Log(window)
        else:
            entry.window = window
            entry.purge(now)
        return entry

    def _ban_left(self, ip: str, now: float) -> int | None:
        until = self._bans.get(ip)
        if until is None:
            return None
        if until <= now:
            del self._bans[ip]
            return None
        return max(1, math.ceil(until - now))

    def _live_slots(self, user: User, now: float) -> dict[str, _Slot]:
        """The unexpired slots of ``user``; the stored entry is dropped when none is left."""
        slots = self._slots.get(user)
        if slots is None:
            return {}
        for conn_id in [c for c, slot in slots.items() if slot.until <= now]:
            del slots[conn_id]
        if not slots:
            del self._slots[user]
        return slots

    def _after_insert(self) -> None:
        # Amortised O(1): a full sweep only once the tables have doubled since the last one.
        if self.tracked_keys() >= self._sweep_trigger:
            self.sweep()
            _evict_oldest(self._ip_rate, self._max_keys)
            _evict_oldest(self._ip_fails, self._max_keys)
            _evict_oldest(self._user_rate, self._max_keys)
            self._sweep_trigger = max(MIN_SWEEP_TRIGGER, 2 * self.tracked_keys())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            self.sweep()


def _purge(table: dict[_K, _Log], now: float) -> None:
    for key in list(table):
        entry = table[key]
        entry.purge(now)
        if not entry.times:
            del table[key]


def matches_user(user: User, sub: str | None, tenant: str | None) -> bool:
    return (sub is None or user[1] == sub) and (tenant is None or user[0] == tenant)


def _evict_oldest(table: dict[_K, _V], cap: int) -> None:
    excess = len(table) - cap
    if excess <= 0:
        return
    # Dicts keep insertion order: the first keys are the oldest windows.
    for key in list(table)[:excess]:
        del table[key]
    log.warning("engine.keys_evicted", count=excess, cap=cap)
