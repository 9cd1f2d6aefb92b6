"""The operators' service layer: disconnect users, ban addresses, revoke tokens, read the log.

Every change is written to the store first (so it survives restarts and reaches workers that were
down), then published through the engine so that every worker applies it to its live connections
within a second. The admin API and ``hubctl`` are thin layers over this module.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

from app.bans import BanList
from app.engine import ControlEvent, Engine
from app.logs import get_logger
from app.revocations import RevocationList
from app.store.db import Store
from app.store.records import BanRecord, EventCursor, RevocationRecord, StoredEvent

log = get_logger("app.control")

RELOAD_SECONDS = 15.0


class ControlService:
    """Operator actions. Methods raise ``EngineUnavailable`` when the change is stored but could
    not be published (other workers then apply it at their next reload, within
    ``RELOAD_SECONDS``), and ``ValueError`` for an invalid request."""

    def __init__(
        self,
        engine: Engine,
        store: Store,
        bans: BanList,
        revocations: RevocationList,
        revocation_ttl_seconds: float,
    ) -> None:
        self._engine = engine
        self._store = store
        self._bans = bans
        self._revocations = revocations
        self._revocation_ttl = revocation_ttl_seconds
        self._reloader: asyncio.Task[None] | None = None

    async def load(self) -> None:
        """Read bans and revocations from the store into this worker's in-memory lists."""
        bans = await self._store.list_bans()
        revocations = await self._store.list_revocations()
        self._bans.replace((b.id, b.cidr, b.expires_ts) for b in bans)
        self._revocations.replace(r.to_revocation() for r in revocations)

    def start(self) -> None:
        self._reloader = asyncio.create_task(self._reload_forever(), name="security-state-reload")

    async def stop(self) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloader

    async def _reload_forever(self) -> None:
        # A safety net for a missed publication (a worker cut off from Redis for a moment).
        while True:
            await asyncio.sleep(RELOAD_SECONDS)
            try:
                await self.load()
                self._revocations.prune()
            except Exception as exc:
                log.warning("control.reload_failed", error=type(exc).__name__)

    async def disconnect(self, sub: str, by: str, *, tenant: str | None = None) -> None:
        """Kick ``sub`` of ``tenant`` ("" : users without one), or of every tenant (None)."""
        log.warning("admin.disconnect", sub=sub, tenant=tenant, by=by)
        await self._engine.publish(ControlEvent("kick", {"sub": sub, "tenant": tenant}))

    async def create_ban(
        self, cidr: str, reason: str, expires_at: datetime | None, by: str
    ) -> BanRecord:
        ban = await self._store.add_ban(cidr, reason, by, expires_at)
        log.warning("admin.ban_created", cidr=ban.cidr, ban_id=ban.id, by=by)
        self._bans.add(ban.id, ban.cidr, ban.expires_ts)
        await self._engine.publish(
            ControlEvent("ban", {"id": ban.id, "cidr": ban.cidr, "expires_at": ban.expires_ts})
        )
        return ban

    async def delete_ban(self, ban_id: str, by: str) -> bool:
        deleted = await self._store.delete_ban(ban_id)
        if deleted:
            log.warning("admin.ban_deleted", ban_id=ban_id, by=by)
            self._bans.remove(ban_id)
            await self._engine.publish(ControlEvent("ban", {"id": ban_id, "removed": True}))
        return deleted

    async def list_bans(self) -> list[BanRecord]:
        return await self._store.list_bans()

    async def revoke(
        self,
        *,
        jti: str | None,
        sub: str | None,
        issued_before: datetime | None,
        reason: str,
        expires_at: datetime | None,
        by: str,
        tenant: str | None = None,
    ) -> RevocationRecord:
        """Revoke (see :meth:`app.store.Store.add_revocation`); ``tenant`` limits it to that
        tenant's tokens, None to none (every tenant)."""
        now = datetime.now(UTC)
        if expires_at is None:
            # Kept until the revoked tokens would have expired anyway (see HUB_REVOCATION_TTL_SECONDS).
            expires_at = (issued_before or now) + timedelta(seconds=self._revocation_ttl)
        record = await self._store.add_revocation(
            jti=jti, sub=sub, issued_before=issued_before, reason=reason, created_by=by,
            expires_at=expires_at, tenant=tenant,
        )
        log.warning("admin.revoked", jti=record.jti, sub=record.sub, tenant=record.tenant, by=by)
        entry = record.to_revocation()
        self._revocations.add(entry)
        if entry.jti is not None:
            event = ControlEvent(
                "revoke_jti",
                {"jti": entry.jti, "expires_at": entry.expires_at, "tenant": entry.tenant},
            )
        else:
            event = ControlEvent(
                "revoke_sub",
                {"sub": entry.sub, "issued_before": entry.issued_before,
                 "expires_at": entry.expires_at, "tenant": entry.tenant},
            )
        await self._engine.publish(event)
        return record

    async def list_revocations(self, *, tenant: str | None = None) -> list[RevocationRecord]:
        return await self._store.list_revocations(tenant=tenant)

    async def security_events(
        self,
        *,
        code: str | None,
        sub: str | None,
        since: datetime | None,
        before: EventCursor | None,
        limit: int,
        tenant: str | None = None,
    ) -> list[StoredEvent]:
        return await self._store.query_events(
            code=code, sub=sub, since=since, before=before, limit=limit, tenant=tenant
        )
