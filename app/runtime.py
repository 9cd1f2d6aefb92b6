"""The hub's resources for one worker, opened in the lifespan and closed in reverse order."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from types import FrameType
from typing import Any

from app.bans import BanList
from app.config import Settings
from app.connections import Registry
from app.control import ControlService
from app.engine import (
    ConnectionInfo,
    ControlEvent,
    Engine,
    HistoryPolicy,
    create_engine,
)
from app.errors import Code
from app.handshake import Gatekeeper
from app.hub import Hub
from app.jwks import jwks_from_settings
from app.logs import get_logger
from app.preflight import wait_for_database
from app.renewal import LeaseRenewal
from app.revocations import Revocation, RevocationList
from app.security_log import WORKER_ID, SecurityLog
from app.session import Limits
from app.store import EventWriter, Store, run_retention
from app.tokens import TokenVerifier

log = get_logger("app.runtime")
FLOOD_CHECK_SECONDS = 1.0
# Commands without an answer past their TTL, and connections whose lease could not be confirmed
# in time, are looked for this often.
HOUSEKEEPING_SECONDS = 1.0
CUT_SESSIONS_SECONDS = 2.0


class Runtime:
    """Everything a worker needs to serve: built from the settings, nothing global."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.worker_id = WORKER_ID
        self.engine = engine or create_engine(
            settings.redis_url, prefix=settings.redis_prefix, worker_id=self.worker_id
        )
        self.jwks = jwks_from_settings(settings)
        self.verifier = TokenVerifier.from_settings(
            settings, key_lookup=self.jwks.lookup if self.jwks else None
        )
        self.bans = BanList(settings.banned_networks)
        self.revocations = RevocationList()
        self.store = Store(settings.database_url)
        self.events = EventWriter(self.store)
        self.security_log = SecurityLog(self.events.submit)
        self.registry = Registry()
        self.gatekeeper = Gatekeeper(
            settings, self.verifier, self.engine, self.bans, self.revocations, self.security_log,
            worker_id=self.worker_id,
        )
        self.control = ControlService(
            self.engine, self.store, self.bans, self.revocations,
            revocation_ttl_seconds=settings.revocation_ttl_seconds,
        )
        self.limits = Limits(
            refresh_warning_seconds=settings.refresh_warning_seconds,
            leeway_seconds=settings.jwt_leeway_seconds,
            message_rate=settings.message_rate_per_second,
            message_burst=settings.message_burst,
        )
        self.hub = Hub(
            self.engine, self.registry.get, self.security_log,
            lease_seconds=settings.connection_lease_seconds,
            command_ttl_seconds=settings.command_ttl_seconds,
            history=HistoryPolicy(settings.event_history_size, settings.event_history_seconds),
        )
        self.renewal = LeaseRenewal(
            self.engine,
            leases=lambda: self.registry.leases(self.worker_id),
            is_open=lambda conn_id: self.registry.get(conn_id) is not None,
            presence_leases=lambda: self.hub.presence_leases(list(self.registry)),
            sweep=self.hub.sweep,
            over_limit=self._close_over_limit,
            lease_seconds=settings.connection_lease_seconds,
            max_connections=settings.max_connections_per_user,
        )
        self.log = get_logger("app.ws")
        self._tasks: list[asyncio.Task[None]] = []
        # Kept by app.shutdown.SessionTracker: accepted sessions not yet finished, and those the
        # server cut at the end of its graceful-shutdown timeout.
        self.sessions_open = 0
        self.sessions_cut = 0

    @property
    def draining(self) -> bool:
        return self.gatekeeper.draining

    async def start(self) -> None:
        """Open in order: store, event writer, engine, security state, background work.

        Raises :class:`~app.preflight.StartupError` when the database is not migrated, or still
        unreachable after a minute: without its bans and revocations the hub must not serve."""
        await self.store.open()
        await wait_for_database(self.store.engine, self.settings.database_url)
        self.events.start()
        self.engine.subscribe(self.on_control)
        self.engine.on_message(self.hub.on_engine_message)
        await self.engine.start()
        await self.control.load()
        self.control.start()
        if self.jwks is not None:
            await self.jwks.prefetch()
            self._tasks.append(asyncio.create_task(self.jwks.refresher(), name="jwks-refresh"))
        self._tasks.append(asyncio.create_task(self.renewal.run(), name="lease-renewal"))
        self._tasks.append(asyncio.create_task(self._record_floods(), name="flood-records"))
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        self._tasks.append(asyncio.create_task(
            run_retention(self.store, self.settings.security_event_retention_days),
            name="retention",
        ))
        self._drain_on_signals()
        log.info("hub.started", worker=self.worker_id, engine=self.engine.name)
        until = self.gatekeeper.report_only.until
        if until is not None:
            # Loud on purpose: these endpoints admit clients without a valid token until then.
            log.warning("hub.report_only", endpoints=self.settings.auth_report_only,
                        until=self.settings.auth_report_only_until.isoformat()
                        if self.settings.auth_report_only_until else None,
                        over=time.time() >= until)

    async def drain(self, grace: float | None = None) -> int:
        """Refuse new handshakes, close every connection with 1012 ``service_restart`` and wait
        (at most ``grace``, by default ``shutdown_grace_seconds``) until their sessions have
        finished, slots and presence released (not only left the registry: uvicorn cancels what
        is still running when its own timeout, the same length, runs out)."""
        self.gatekeeper.draining = True
        closing = list(self.registry)
        for conn in closing:
            conn.close(Code.SERVICE_RESTART)
        wait = self.settings.shutdown_grace_seconds if grace is None else grace
        deadline = asyncio.get_running_loop().time() + wait
        # Polled once per shutdown, for at most the grace period: an Event would buy nothing.
        while (len(self.registry) or self.sessions_open > 0) and (  # noqa: ASYNC110
                asyncio.get_running_loop().time() < deadline):
            await asyncio.sleep(0.02)
        return len(closing)

    def _drain_on_signals(self) -> None:
        """Run :meth:`drain` before the server's own shutdown on SIGTERM/SIGINT.

        uvicorn closes open sockets with a bare 1012 (no reason) as soon as it sees the signal;
        chaining in front of its handler lets clients read ``service_restart`` and lets this
        worker release its slots while the engine is still up.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            if not callable(previous):
                continue

            def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
                if self.gatekeeper.draining:
                    previous(signum, frame)
                    return
                self.gatekeeper.draining = True

                async def drain_then_exit() -> None:
                    try:
                        await self.drain()
                    finally:
                        previous(signum, frame)

                loop.call_soon_threadsafe(lambda: self._tasks.append(loop.create_task(drain_then_exit())))

            signal.signal(sig, handler)

    async def stop(self) -> None:
        """Drain (if the signal path did not already), then stop background work."""
        # After the signal path's drain, only sessions the server just cut may still be
        # releasing their slots: give them a moment with the engine still open, not a grace.
        closing = await self.drain(CUT_SESSIONS_SECONDS if self.gatekeeper.draining else None)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is current:
                continue
            task.cancel()
        for task in self._tasks:
            if task is current:
                continue
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.control.stop()
        await self.engine.close()
        await self.events.stop()
        await self.store.close()
        if self.sessions_cut:
            log.warning("hub.sessions_cut", worker=self.worker_id, cut=self.sessions_cut,
                        reason="still running when the graceful-shutdown timeout ran out")
        log.info("hub.stopped", worker=self.worker_id, closed=closing)

    def _close_over_limit(self, refused: list[ConnectionInfo]) -> None:
        """Close the connections whose slot lapsed and was taken by others meanwhile (an outage
        longer than a lease): the user is at the limit without them, and the limit wins."""
        for info in refused:
            conn = self.registry.get(info.conn_id)
            if conn is None:
                continue
            log.warning("ws.closed_over_limit", conn_id=info.conn_id, sub=info.sub,
                        tenant=info.tenant or None, endpoint=info.endpoint)
            conn.close(Code.CONNECTION_LIMIT)

    async def _record_floods(self) -> None:
        """Record the counted refusals of flood windows that have ended (see app.flood)."""
        while True:
            await asyncio.sleep(FLOOD_CHECK_SECONDS)
            for event in self.gatekeeper.floods.due():
                self.security_log.record(event)

    async def _housekeeping(self) -> None:
        """Once a second: ``command_expired`` for commands nobody answered in time
        (app.commands), and connections whose slot this worker could not confirm before their
        lease may end closed 1013 ``unavailable`` (app.renewal)."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            now = time.time()
            self.hub.expire_commands(now)
            for info in self.renewal.unconfirmed(lambda: self.registry.leases(self.worker_id), now):
                conn = self.registry.get(info.conn_id)
                if conn is None or conn.close_code is not None:
                    continue
                log.warning("ws.closed_lease_unconfirmed", conn_id=info.conn_id, sub=info.sub,
                            tenant=info.tenant or None, endpoint=info.endpoint)
                conn.close(Code.UNAVAILABLE)

    async def on_control(self, event: ControlEvent) -> None:
        """Apply a cluster-wide instruction to this worker's connections."""
        data = event.data
        if event.kind == "kick":
            sub = str(data["sub"])
            scope = data.get("tenant")  # None: that sub in every tenant
            closed = self.registry.close_where(
                lambda c: c.sub == sub and (scope is None or (c.session.principal.tenant or "") == scope),
                Code.KICKED,
            )
        elif event.kind in ("revoke_jti", "revoke_sub"):
            tenant = data.get("tenant")
            self.revocations.add(Revocation(
                jti=str(data["jti"]) if event.kind == "revoke_jti" else None,
                sub=str(data["sub"]) if event.kind == "revoke_sub" else None,
                issued_before=data.get("issued_before"), expires_at=data.get("expires_at"),
                tenant=None if tenant is None else str(tenant),
            ))
            closed = self.registry.close_where(
                lambda c: self.revocations.is_revoked(c.session.principal), Code.TOKEN_REVOKED
            )
        elif event.kind == "ban":
            if data.get("removed"):
                self.bans.remove(str(data["id"]))
                return
            self.bans.add(str(data["id"]), str(data["cidr"]), data.get("expires_at"))
            closed = self.registry.close_where(
                lambda c: self.bans.is_banned(c.session.admission.client_ip), Code.IP_BANNED
            )
        else:
            return
        log.info("control.applied", kind=event.kind, closed=closed)
