"""Security events (FR-007): every refusal and forced close, with its security context.

Each event is logged at once as one structured line (``ws.auth_failed``, ``admin.auth_failed``,
``ws.closed``...). A sink (the store, see :mod:`app.store`) may also receive it; the sink must not
block: it buffers and drops, counting what it drops.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from app.errors import Code
from app.logs import get_logger, redact

log = get_logger("app.security")

# One id per process: the same in security events, admin listings and engine routing.
WORKER_ID = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """One refusal or forced close. Never holds a token: only its fingerprint."""

    event: str
    code: Code
    endpoint: str
    client_ip: str
    user_agent: str | None = None
    origin: str | None = None
    claimed_sub: str | None = None
    verified_sub: str | None = None
    jti: str | None = None
    fingerprint: str | None = None
    detail: str | None = None
    tenant: str | None = None  # the verified tenant, when there is one
    count: int = 1  # refused attempts this event stands for (see app.flood)
    at: float = field(default_factory=time.time)
    worker: str = WORKER_ID


EventSink = Callable[[SecurityEvent], None]
MAX_HEADER_CHARS = 256


def _too_long(value: str | None) -> bool:
    return value is not None and len(value) > MAX_HEADER_CHARS


def _cut(value: str | None) -> str | None:
    return value[:MAX_HEADER_CHARS] if value is not None else None


class SecurityLog:
    """Logs security events and hands them to an optional non-blocking sink."""

    def __init__(self, sink: EventSink | None = None) -> None:
        self._sink = sink

    def set_sink(self, sink: EventSink | None) -> None:
        self._sink = sink

    def record(self, event: SecurityEvent) -> None:
        """Log ``event`` and hand it to the sink, with its header values cut to
        ``MAX_HEADER_CHARS`` (an 8 KB User-Agent must not cost 8 KB per refusal)."""
        if _too_long(event.user_agent) or _too_long(event.origin):
            event = replace(event, user_agent=_cut(event.user_agent), origin=_cut(event.origin))
        # The log line is redacted when rendered; the stored row must be too (a token pasted into
        # a User-Agent or an Origin header reaches the sink otherwise).
        texts = (event.user_agent, event.origin, event.claimed_sub, event.detail)
        cleaned = tuple(redact(text) if text is not None else None for text in texts)
        if cleaned != texts:
            event = replace(
                event, user_agent=cleaned[0], origin=cleaned[1], claimed_sub=cleaned[2],
                detail=cleaned[3],
            )
        fields = {k: v for k, v in asdict(event).items() if v is not None and k != "event"}
        if event.count == 1:
            del fields["count"]
        fields["code"] = str(event.code)
        if event.claimed_sub is not None:
            # Read from a token whose signature may not have been checked: say so.
            fields["claimed_sub_unverified"] = fields.pop("claimed_sub")
        log.warning(event.event, **fields)
        if self._sink is not None:
            self._sink(event)
