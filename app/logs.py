"""Logging: structlog for the hub's own events, stdlib logging underneath so uvicorn's lines share
one format, and a redaction filter so that no token reaches any log line.

Event names are namespaced (``ws.auth_failed``, ``ws.closed``, ``admin.ban_created``...).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, Literal

import structlog

# A `token=` query value (uvicorn logs the request path with its query) and anything shaped like a
# compact JWS (a header, a `bearer.<jwt>` subprotocol, a mistake of our own).
_TOKEN_QUERY = re.compile(r"(?i)((?:^|[?&;])(?:access_)?token=)[^&\s\"']*")
_JWS = re.compile(r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def redact(text: str) -> str:
    """Remove token values from ``text``."""
    if "token" in text.lower():
        text = _TOKEN_QUERY.sub(r"\1[redacted]", text)
    if "eyJ" in text:
        text = _JWS.sub("[redacted-jwt]", text)
    return text


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


def _redact_event(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
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
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_event,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_FILTER)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _UVICORN_LOGGERS:
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    install_redaction()


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
