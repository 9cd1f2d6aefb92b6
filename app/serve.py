"""How ``hubctl serve`` runs uvicorn: the protections that live in the server, not the app."""

from __future__ import annotations

import os
from typing import Any

from app.config import Settings

# The `websockets` implementation answers pings, enforces the frame limit with 1009, and refuses an
# oversized header line with a prompt HTTP error rather than hanging (see docs/operations.md).
WS_IMPLEMENTATION = "websockets"


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` derived from the settings."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "workers": settings.workers,
        "ws": WS_IMPLEMENTATION,
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


def serve(settings: Settings) -> None:
    import uvicorn

    # Spawned workers read their settings from the environment: make them see what we saw.
    os.environ["HUB_WORKERS"] = str(settings.workers)
    os.environ["HUB_HOST"] = settings.host
    os.environ["HUB_PORT"] = str(settings.port)
    uvicorn.run("app.main:app", **uvicorn_options(settings))
