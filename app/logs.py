"""Logging: structlog for the hub's own events, stdlib logging underneath so uvicorn's lines share
one format, and a redaction filter so that no token reaches any log line.

Event names are namespaced (``ws.auth_failed``, ``ws.closed``, ``admin.ban_created``...).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import sys
import time
from collections.abc import MutableMapping
from typing import Any, Literal
from urllib.parse import unquote

import structlog

# A `token=` query value (uvicorn logs the request path with its query) and anything shaped like a
# compact JWS wherever it is (a path, `?jwt=`, a header, a `bearer.<jwt>` subprotocol, a mistake of
# our own): three base64url segments whose first decodes to a JSON object. The `eyJ` prefix alone
# is not enough: a header with a leading space or newline encodes otherwise and still verifies.
_TOKEN_QUERY = re.compile(r"(?i)((?:^|[?&;])(?:access_)?token=)[^&\s\"']*")
_JWS = re.compile(r"(?<![A-Za-z0-9_-])([A-Za-z0-9_-]{2,})\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# What a redacted JWS starts with: its header segment's first character is C, D, I or e, the only
# ones whose first decoded byte can be "{" or the whitespace before it (see _is_json_object). A
# cheap test that lets most dotted values (addresses, host names) skip the full search.
_JWS_START = re.compile(r"(?<![A-Za-z0-9_-])[CDIe][A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def redact(text: str) -> str:
    """Remove token values from ``text``: ``token=`` values and every compact-JWS-shaped value,
    also when percent-encoded (then the whole text is logged decoded)."""
    if "token" in text.lower():
        text = _TOKEN_QUERY.sub(r"\1[redacted]", text)
    decoded = text
    for _ in range(3):  # %252E is %2E is "."
        if "%" not in decoded or not _PERCENT.search(decoded):
            break
        decoded = unquote(decoded)
        if _JWS.sub(_redact_jws, decoded) != decoded:
            text = decoded
            break
    if text.count(".") >= 2 and _JWS_START.search(text):
        text = _JWS.sub(_redact_jws, text)
    return text


def _redact_jws(match: re.Match[str]) -> str:
    if _is_json_object(match.group(1)):
        return "[redacted-jwt]"
    return match.group(0)


def _is_json_object(segment: str) -> bool:
    # A JWS header is base64url of a JSON object: "{", then a member name or "}" (host names such
    # as example.co.uk decode to "{" too, but never to '{"').
    chunk = segment[:64]
    chunk = chunk[: len(chunk) - len(chunk) % 4 or len(chunk)]
    try:
        head = base64.urlsafe_b64decode(chunk + "=" * (-len(chunk) % 4))
    except (ValueError, binascii.Error):
        return False
    head = head.lstrip(b" \t\r\n")
    return head.startswith(b"{") and head[1:].lstrip(b" \t\r\n")[:1] in (b'"', b"}")


def _redact_value(value: object) -> object:
    return redact(value) if isinstance(value, str) else value


class RedactTokens(logging.Filter):
    """Rewrites a record's message and arguments so that no token survives formatting."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_value(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _redact_value(val) for key, val in record.args.items()}
        return True


_FILTER = RedactTokens()


def _redact_event(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
    return event


def _name_logger(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if "_logger_name" in event:
        event["logger"] = event.pop("_logger_name")
    return event


class _UtcStamper:
    """``timestamp`` as structlog's ``TimeStamper(fmt="iso", utc=True)`` writes it
    (``2026-12-02T11:00:00.123456Z``), with the date and time formatted once per second: the
    datetime round trip was a fifth of the cost of a line."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, _: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        micro = int((now - second) * 1_000_000)
        # isoformat() leaves out a zero fraction; so does this.
        event["timestamp"] = f"{self._prefix}.{micro:06d}Z" if micro else f"{self._prefix}Z"
        return event


def install_redaction() -> None:
    """Put the redaction filter on uvicorn's loggers. Idempotent; safe under plain uvicorn."""
    for name in _UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def configure_logging(
    level: str = "info", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    """Route structlog and stdlib logging (uvicorn included) to stderr in one format.

    JSON lines in production (or whenever stderr is not a terminal), readable console lines in a
    terminal. Idempotent: the root handler is replaced, not added to.
    """
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    # Tracebacks are rendered to text (format_exc_info) before redaction, so a token quoted in an
    # exception's message is redacted like any other value; the console then prints that text.
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    # The hub's own events skip the stdlib machinery (a third of the cost per line, measured):
    # they render and write directly. Other libraries' records go through the handler below.
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _name_logger,
            _UtcStamper(),
            structlog.processors.format_exc_info,
            _redact_event,
            renderer,
        ],
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )
    shared: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
    ]
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_FILTER)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                # A record's exc_info (uvicorn's "Exception in ASGI application") as text.
                structlog.processors.format_exc_info,
                _redact_event,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _UVICORN_LOGGERS:
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    install_redaction()
    # uvicorn's lines for accepted connections say less than ws.disconnected, at a cost on every
    # handshake; refusals, startup, shutdown and errors still come through. The drop comes first,
    # so that a dropped record is not redacted before.
    for name in ("uvicorn.error", "uvicorn.access"):
        chatter = logging.getLogger(name)
        if _CHATTER not in chatter.filters:
            chatter.filters.insert(0, _CHATTER)
    # uvicorn makes a record for each accepted handshake (dropped above); no line shows the
    # caller, thread or process of a record, and finding the caller walks the stack (the logging
    # HOWTO's "Optimization" section).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


class _DropConnectionChatter(logging.Filter):
    # Refusals keep uvicorn's line (the status, next to ws.auth_failed); accepted ones do not,
    # nor 403 and 429 refusals: those are what a flood from a banned or rate-limited address
    # produces, and the hub's own line (at most one per address and code per 10 s) says more.
    _MESSAGES = frozenset({
        '%s - "WebSocket %s" [accepted]', "connection open", "connection closed",
        # h11's refusal of a malformed head: answered 400 and counted (hub_http_heads_refused_total).
        "Invalid HTTP request received.",
    })
    _FLOOD_STATUSES = frozenset({403, 429})

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in self._MESSAGES:
            return False
        args = record.args
        return not (
            isinstance(args, tuple) and args and args[-1] in self._FLOOD_STATUSES
            and isinstance(record.msg, str) and record.msg.startswith("%s - ")
        )


_CHATTER = _DropConnectionChatter()


def get_logger(name: str) -> Any:
    """A structlog logger whose lines carry ``logger=name``."""
    # `logger` itself is a parameter of structlog's factory; _logger_name is renamed when rendered.
    return structlog.get_logger(_logger_name=name)
