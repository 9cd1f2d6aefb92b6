"""Reconnect delays: jittered exponential backoff, and the policy that picks one per close code.

Both are pure (no clock, no I/O): the random source is injected, so a test can replay a schedule.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum


class Backoff:
    """Exponential backoff with jitter.

    The n-th delay (from 0) is drawn uniformly in ``[(1 - jitter) * d, d]`` where
    ``d = min(cap, base * factor ** n)``: it grows until the cap, and clients that lost the same
    server do not come back in step. ``jitter=0`` gives the exact schedule; ``jitter=1`` is "full
    jitter". A ``Retry-After`` from the server is a floor: the delay is then at least that long,
    spread by up to ``jitter / 4`` of it on top so that a crowd told "60" does not return at once.
    """

    def __init__(
        self,
        base: float = 0.5,
        cap: float = 30.0,
        factor: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if base <= 0 or cap < base or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("need 0 < base <= cap, factor >= 1 and 0 <= jitter <= 1")
        self.base = base
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self.rng = rng if rng is not None else random.Random()  # noqa: S311 (not cryptographic)
        self.attempts = 0

    def ceiling(self, attempt: int) -> float:
        """The un-jittered delay of attempt ``attempt`` (0-based)."""
        # Computed in the log domain's spirit: stop multiplying once past the cap (no overflow).
        delay = self.base
        for _ in range(attempt):
            delay *= self.factor
            if delay >= self.cap:
                return self.cap
        return min(delay, self.cap)

    def next(self, retry_after: float | None = None) -> float:
        """The delay before the next attempt; counts the attempt."""
        ceiling = self.ceiling(self.attempts)
        self.attempts += 1
        delay = ceiling * (1 - self.jitter * self.rng.random())
        if retry_after is not None and retry_after > 0:
            floor = retry_after * (1 + self.jitter / 4 * self.rng.random())
            delay = max(delay, floor)
        return delay

    def reset(self) -> None:
        """Start over (after a session was established)."""
        self.attempts = 0


class Action(Enum):
    """What to do after a session ended or a handshake was refused."""

    RECONNECT_NOW = "reconnect_now"
    """1012 ``service_restart``: reconnect at once (next URL), with only a little jitter."""
    NEW_TOKEN = "new_token"
    """401 / 4401: get a fresh token from the provider, then reconnect."""
    BACKOFF = "backoff"
    """Network loss, 4429, 1013, HTTP 429/503, anything unexpected: wait, then reconnect."""
    STOP = "stop"
    """4403 or HTTP 403: a decision, not an accident. Do not reconnect; raise."""


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    retry_after: float | None = None
    """The server's ``Retry-After`` (HTTP form), a floor for the delay."""
    min_delay: float = 0.0
    """A floor of the policy's own (1013 in the socket form: at least 5 s)."""


UNAVAILABLE_FLOOR = 5.0


def decide_close(close_code: int | None, reason: str = "") -> Decision:
    """The policy for a live session (or a socket-form refusal) closed with ``close_code``."""
    if close_code == 4401:
        return Decision(Action.NEW_TOKEN)
    if close_code == 4403:
        return Decision(Action.STOP)
    if close_code == 1012:
        return Decision(Action.RECONNECT_NOW)
    if close_code == 1013:
        return Decision(Action.BACKOFF, min_delay=UNAVAILABLE_FLOOR)
    # 4429 (rate_limited, connection_limit), 4408 slow_consumer, 1006 / no close frame, 1000,
    # 1001, 1003, 1009, 1011 and anything else: back off and try again.
    return Decision(Action.BACKOFF)


def decide_status(status: int, retry_after: float | None = None) -> Decision:
    """The policy for a handshake refused over HTTP with ``status`` (and its ``Retry-After``)."""
    if status == 401:
        return Decision(Action.NEW_TOKEN)
    if status == 403:
        return Decision(Action.STOP)
    if status in (429, 503):
        return Decision(Action.BACKOFF, retry_after=retry_after)
    return Decision(Action.BACKOFF, retry_after=retry_after)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the delay-seconds form; an HTTP date is ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
