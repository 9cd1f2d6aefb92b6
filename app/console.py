"""``GET /console``: the operators' browser console, a static page built on the TypeScript client.

The page, its module script, the client's bundle (``hub-client.js``, built from clients/js and
committed, so serving needs no npm) and its style sheet are read from ``app/static/console`` once,
at import, and served with a strict Content-Security-Policy: the page may load only its own
scripts and style sheet and open a WebSocket to its own origin; nothing inline, no images, no
frames, no forms posted anywhere. The page takes its token from the operator (pasted) and never stores it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

STATIC = Path(__file__).parent / "static" / "console"

CSP = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    # 'self' covers ws:// and wss:// to the page's own host and port (CSP Level 3; Chromium,
    # Firefox and Safari): the console connects to /ws/dashboard on the origin that served it.
    "connect-src 'self'",
    "img-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
])

SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}

_FILES = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "hub-client.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
_BODIES = {name: (STATIC / name).read_bytes() for name in _FILES}

router = APIRouter(include_in_schema=False)


def _serve(name: str) -> Response:
    return Response(_BODIES[name], media_type=_FILES[name], headers=SECURITY_HEADERS)


@router.get("/console")
async def console_page() -> Response:
    return _serve("index.html")


@router.get("/console/console.js")
async def console_script() -> Response:
    return _serve("console.js")


@router.get("/console/hub-client.js")
async def console_client() -> Response:
    return _serve("hub-client.js")


@router.get("/console/console.css")
async def console_style() -> Response:
    return _serve("console.css")
