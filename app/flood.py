"""Floods cost little: refusals of one address for one code are recorded at most once per window.

A banned or rate-limited address that keeps trying is refused every time, but its attempts are
logged and stored as at most one security event per (address, code) per ``window`` seconds, each
with the ``count`` of attempts it stands for:

- the first attempt of a quiet key is recorded at once (``count`` 1);
- later attempts within the window are only counted;
- when the window ends with counted attempts, :meth:`FloodGate.due` returns one event for them
  (the last attempt's context, ``count`` = how many) and a new window starts, so two records of one
  key are always at least ``window`` apart; a window that ends quiet is forgotten.

Plain code without I/O or tasks: the caller records what :meth:`FloodGate.admit` returns, and
calls :meth:`FloodGate.due` periodically. Memory is bounded by ``max_keys``: past it, new keys are
recorded every time (never silently dropped) until windows end. Per worker: with N workers an
address may get up to N records per window.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from app.errors import Code
from app.security_log import SecurityEvent

WINDOW_SECONDS = 10.0
MAX_KEYS = 10_000

Key = tuple[str, Code]


@dataclass(slots=True)
class _Window:
    started: float
    counted: int = 0
    last: SecurityEvent | None = None


class FloodGate:
    """Rate-limits the records of repeated refusals (see the module docstring)."""

    def __init__(
        self, *, window: float = WINDOW_SECONDS, max_keys: int = MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._window = window
        self._max_keys = max_keys
        self._clock = clock
        self._windows: dict[Key, _Window] = {}

    def admit(self, event: SecurityEvent) -> SecurityEvent | None:
        """The event to record now (with its ``count``), or None when it is only counted."""
        key = (event.client_ip, event.code)
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window.started >= self._window:
            del self._windows[key]
            if window.counted:
                # This attempt closes a busy window: one record for all of them.
                self._windows[key] = _Window(now)
                return replace(event, count=window.counted + 1)
            window = None
        if window is None:
            if len(self._windows) < self._max_keys:
                self._windows[key] = _Window(now)
            return event
        window.counted += 1
        window.last = event
        return None

    def due(self) -> list[SecurityEvent]:
        """One event per window that ended with counted attempts (to record now)."""
        now = self._clock()
        out: list[SecurityEvent] = []
        for key, window in list(self._windows.items()):
            if now - window.started < self._window:
                continue
            del self._windows[key]
            if window.counted and window.last is not None:
                out.append(replace(window.last, count=window.counted, at=time.time()))
                self._windows[key] = _Window(now)
        return out

    def __len__(self) -> int:
        return len(self._windows)
