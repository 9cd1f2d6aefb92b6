"""How ``hubctl serve`` runs uvicorn: the protections that live in the server, not the app."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.config import Settings

# Measured on uvicorn 0.54 (docs/operations.md, "Server choices"): wsproto on h11 answers every
# oversized header promptly (the app's own token_malformed, or h11's 400), honours pings and the
# frame limit (1009). websockets-sansio leaves a >8 KiB header line hanging without an answer, and
# httptools accepts headers of any size.
# uvicorn's wsproto and h11 protocols, with the contract's reason for oversized messages, a head
# timeout, a head size limit however the head arrives, and a 400 for malformed WebSocket headers
# (app/protocols.py).
WS_IMPLEMENTATION = "app.protocols:HubWSProtocol"
HTTP_IMPLEMENTATION = "app.protocols:HubH11Protocol"
H11_MAX_INCOMPLETE_EVENT_BYTES = 16 * 1024


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` derived from the settings."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "workers": settings.workers,
        "ws": WS_IMPLEMENTATION,
        "http": HTTP_IMPLEMENTATION,
        "h11_max_incomplete_event_size": H11_MAX_INCOMPLETE_EVENT_BYTES,
        # The limit itself: a message over it is closed 1009 `message_too_big` by the protocol
        # (app/protocols.py) as soon as it passes the limit, never buffered beyond it.
        "ws_max_size": settings.max_message_bytes,
        "ws_per_message_deflate": False,
        "ws_ping_interval": settings.ping_interval_seconds,
        "ws_ping_timeout": settings.ping_timeout_seconds,
        # The app reads X-Forwarded-For itself, and only from HUB_TRUSTED_PROXIES: uvicorn's own
        # handling trusts 127.0.0.1 by default, which would let a local client dodge a ban.
        "proxy_headers": False,
        "server_header": False,
        "date_header": False,
        "timeout_graceful_shutdown": max(1, int(settings.shutdown_grace_seconds)),
        "log_config": None,
        "access_log": True,
        "lifespan": "on",
    }
    if settings.ssl_certfile and settings.ssl_keyfile:
        options["ssl_certfile"] = str(settings.ssl_certfile)
        options["ssl_keyfile"] = str(settings.ssl_keyfile)
    return options


MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


@contextmanager
def metrics_directory(workers: int) -> Iterator[Path | None]:
    """Where the workers keep their metrics, so that ``/metrics`` adds up all of them.

    - ``PROMETHEUS_MULTIPROC_DIR`` set by the operator: used (created if missing) and emptied of
      its ``*.db`` files first, as prometheus-client requires; one directory per ``hubctl serve``.
    - otherwise, with more than one worker: a fresh private (0700) directory under the system
      temp dir, removed when the server stops.
    - otherwise (one worker): none; the process serves its own default registry.

    Must run before any worker imports ``prometheus_client`` (workers are spawned, so they see the
    variable); the supervisor itself never imports the app.
    """
    configured = os.environ.get(MULTIPROC_DIR_ENV)
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
        yield path
        return
    if workers <= 1:
        yield None
        return
    path = Path(tempfile.mkdtemp(prefix=f"hub-metrics-{os.getpid()}-"))
    os.environ[MULTIPROC_DIR_ENV] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_DIR_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def serve(settings: Settings) -> None:
    import uvicorn

    # Spawned workers read their settings from the environment: make them see what we saw.
    os.environ["HUB_WORKERS"] = str(settings.workers)
    os.environ["HUB_HOST"] = settings.host
    os.environ["HUB_PORT"] = str(settings.port)
    with metrics_directory(settings.workers):
        uvicorn.run("app.main:app", **uvicorn_options(settings))
