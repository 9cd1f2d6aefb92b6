"""Retention: security events and admin audit entries older than N days, and bans and
revocations past their expiry, are deleted.

Guarantees: :func:`prune` is idempotent and safe to run from every worker at once (each delete
is a plain conditional DELETE); :func:`run_retention` never raises except on cancellation: a
failed pass is logged as ``store.prune_failed`` and retried at the next interval.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from app.logs import get_logger
from app.store.audit import prune_audit
from app.store.db import Store
from app.store.records import PruneResult

log = get_logger("app.store")


async def prune(store: Store, days: float, now: datetime | None = None) -> PruneResult:
    """Delete events and audit entries older than ``days`` days, and expired bans and
    revocations."""
    if days <= 0:
        raise ValueError("days must be positive")
    moment = now if now is not None else datetime.now(UTC)
    events = await store.prune_events(moment - timedelta(days=days))
    bans, revocations = await store.prune_expired(moment)
    audit = await prune_audit(store, moment - timedelta(days=days))
    return PruneResult(events=events, bans=bans, revocations=revocations, audit=audit)


async def run_retention(store: Store, days: float, interval_seconds: float = 3600.0) -> None:
    """Prune now, then every ``interval_seconds``, until cancelled.

    Start it as a task in the app's lifespan and cancel it at shutdown::

        task = asyncio.create_task(run_retention(store, days=30))
        ...
        task.cancel()
    """
    if interval_seconds <= 0:
        raise ValueError("interval_seconds must be positive")
    while True:
        try:
            result = await prune(store, days)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("store.prune_failed", error=type(exc).__name__, detail=str(exc)[:200])
        else:
            if result.events or result.bans or result.revocations or result.audit:
                log.info(
                    "store.pruned",
                    events=result.events,
                    bans=result.bans,
                    revocations=result.revocations,
                    audit=result.audit,
                )
        await asyncio.sleep(interval_seconds)
