"""State engines: where limits, leases, bans and cluster-wide messages live.

Two implementations of one interface (:class:`app.engine.base.Engine`): the embedded in-process
engine (one worker) and the Redis engine (any number of workers and hosts). Nothing above this
package knows which one it talks to; :func:`create_engine` picks one from the settings.
"""

from __future__ import annotations

from app.engine.base import (
    Admitted,
    ConnectionInfo,
    ControlEvent,
    Engine,
    EngineUnavailable,
    History,
    HistoryPolicy,
    IpVerdict,
    Refused,
    UserVerdict,
)

__all__ = [
    "Admitted",
    "ConnectionInfo",
    "ControlEvent",
    "Engine",
    "EngineUnavailable",
    "History",
    "HistoryPolicy",
    "IpVerdict",
    "Refused",
    "UserVerdict",
    "create_engine",
]


def create_engine(redis_url: str | None, *, prefix: str = "hub", worker_id: str) -> Engine:
    """The Redis engine when a URL is given, else the embedded one."""
    if redis_url:
        from app.engine.redis import RedisEngine

        return RedisEngine(redis_url, prefix=prefix, worker_id=worker_id)
    from app.engine.memory import MemoryEngine

    return MemoryEngine(worker_id=worker_id)
