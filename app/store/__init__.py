"""Persistence of operators' bans, token revocations and security events (SQLAlchemy async).

* :class:`Store`: the repository (SQLite or PostgreSQL), returning frozen dataclasses.
* :class:`EventWriter`: the security log's non-blocking, batching sink.
* :func:`prune` / :func:`run_retention`: retention of events, expired bans and revocations.
* :mod:`app.store.migrate`: ``upgrade()`` / ``downgrade()`` with the Alembic migrations.
"""

from __future__ import annotations

from app.store.db import MAX_EVENT_LIMIT, Store
from app.store.records import BanRecord, EventCursor, PruneResult, RevocationRecord, StoredEvent
from app.store.retention import prune, run_retention
from app.store.writer import EventWriter

__all__ = [
    "MAX_EVENT_LIMIT",
    "BanRecord",
    "EventCursor",
    "EventWriter",
    "PruneResult",
    "RevocationRecord",
    "Store",
    "StoredEvent",
    "prune",
    "run_retention",
]
