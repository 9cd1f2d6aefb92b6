"""The ASGI application: ``create_app(settings)`` builds one; ``app.main:app`` is built lazily
from the environment the first time a server asks for it (no settings exist at import time)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.types import Scope

from app import metrics
from app.admin import router as admin_router
from app.admin import validation_error
from app.asyncapi import router as asyncapi_router
from app.audit import AuditMiddleware
from app.config import Settings, SettingsError, load_settings
from app.console import router as console_router
from app.endpoints import refuse, unavailable
from app.endpoints import router as ws_router
from app.engine import EngineUnavailable
from app.handshake import HandshakeRefused
from app.heap import worker_heap
from app.logs import configure_logging, get_logger, install_redaction
from app.preflight import StartupError
from app.runtime import Runtime
from app.shutdown import SessionTracker

log = get_logger("app.main")


def create_app(settings: Settings) -> FastAPI:
    """Build the hub for ``settings``. Resources open in the lifespan and close in reverse."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.engine_name == "embedded" and _uvicorn_workers() > 1:
            log.error(
                "hub.refused_to_start",
                reason="the embedded engine cannot enforce limits across processes; "
                "set HUB_REDIS_URL to run more than one worker",
            )
            raise SystemExit(3)
        runtime = Runtime(settings)
        app.state.runtime = runtime
        try:
            await runtime.start()
        except StartupError as exc:
            # One line for the operator; `hubctl serve` reports the same before any worker starts.
            log.error("hub.refused_to_start", reason=str(exc))
            await runtime.store.close()
            raise SystemExit(3) from None
        try:
            with worker_heap():  # the startup heap frozen, the collector tuned (app/heap.py)
                yield
        finally:
            await runtime.stop()

    install_redaction()
    app = FastAPI(
        title="Agent hub",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.add_exception_handler(HandshakeRefused, refuse)  # type: ignore[arg-type]
    app.add_exception_handler(EngineUnavailable, unavailable)
    app.add_exception_handler(RequestValidationError, validation_error)
    # Outside the exception handlers: the audit trail records the final answer, refusals too.
    app.add_middleware(AuditMiddleware)
    # Outermost: the drain waits for sessions to finish, and a session the server cuts at the end
    # of its shutdown timeout is not an exception in the log (app/shutdown.py).
    app.add_middleware(SessionTracker, sessions=_sessions)
    app.include_router(ws_router)
    app.include_router(admin_router)
    app.include_router(console_router)
    app.include_router(asyncapi_router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def check_readiness() -> tuple[bool, bool]:
        runtime: Runtime = app.state.runtime
        engine_ok, store_ok = await asyncio.gather(runtime.engine.ping(), runtime.store.ping())
        metrics.DEPENDENCY_UP.labels("engine").set(int(engine_ok))
        metrics.DEPENDENCY_UP.labels("database").set(int(store_ok))
        return engine_ok, store_ok

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        # Every scrape carries a fresh readiness answer (both pings are bounded, about 2 s).
        await check_readiness()
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        engine_ok, store_ok = await check_readiness()
        ready = engine_ok and store_ok
        body = {"status": "ok" if ready else "unavailable", "engine": engine_ok, "database": store_ok}
        return JSONResponse(body, status_code=200 if ready else 503)

    return app


def _sessions(scope: Scope) -> Runtime | None:
    runtime: Runtime | None = getattr(scope["app"].state, "runtime", None)
    return runtime


def _uvicorn_workers() -> int:
    """How many workers the supervising uvicorn was asked for (1 when not supervised).

    uvicorn starts workers as spawned children and gives the app no other way to know; reading the
    parent's command line lets plain ``uvicorn --workers N`` refuse the embedded engine too.
    """
    if multiprocessing.parent_process() is None:
        return 1
    try:
        argv = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return 1
    workers = os.environ.get("WEB_CONCURRENCY", "1")
    for index, arg in enumerate(argv):
        if arg == b"--workers" and index + 1 < len(argv):
            workers = argv[index + 1].decode(errors="replace")
        elif arg.startswith(b"--workers="):
            workers = arg.split(b"=", 1)[1].decode(errors="replace")
    return int(workers) if workers.isdigit() else 1


def _from_environment() -> FastAPI:
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise SystemExit(f"configuration error: {exc}") from None
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)


def __getattr__(name: str) -> Any:
    if name == "app":
        application = _from_environment()
        globals()["app"] = application
        return application
    raise AttributeError(name)
