"""Missed events, recovered: where each dashboard is in each agent's event sequence.

Plain decisions, no I/O (the hub does the reading and sending). The seam between a replay and
live events is handled by holding live events back while the history is read, then sending the
replayed events and the held ones in ``seq`` order, each ``seq`` once. The same cursor repairs a
gap in live delivery (two connections of one agent publishing at once on different workers, a
message lost during a Redis outage): a live event past the next ``seq`` starts a catch-up from
the history.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.engine import History

# (epoch, seq, encoded event)
_Held = tuple[str, int, str]
Render = Callable[[str, int, str], str]


def is_recovered(epoch: str, seq: int, history: History) -> bool:
    """True when ``history`` holds every event after ``(epoch, seq)``: same epoch, nothing
    trimmed in between (held events are contiguous, so the first one must follow ``seq``)."""
    if not history.epoch or history.epoch != epoch or seq > history.seq:
        return False
    if seq == history.seq:
        return True
    return bool(history.events) and history.events[0][0] == seq + 1


@dataclass(slots=True)
class Cursor:
    """One dashboard's place in one agent's events: the last ``(epoch, seq)`` it was sent.

    While :attr:`held` is a list a catch-up is under way and live events wait in it; the caller
    reads the history after :attr:`last` and calls :meth:`finish`.
    """

    # None: not known yet (the first live event sets it); "": the agent had no history.
    epoch: str | None = None
    last: int = 0
    held: list[_Held] | None = None

    @classmethod
    def catching_up(cls, epoch: str | None, seq: int) -> Cursor:
        """A cursor whose live events wait for :meth:`finish` (``epoch`` None: from "now", the
        point the history read will tell)."""
        return cls(epoch, seq, [])

    def offer(self, epoch: str, seq: int, text: str) -> list[str] | None:
        """A live event: the texts to send now, or None when a catch-up must start (there is a
        gap before it; it is held). A repeated ``seq`` is dropped."""
        if self.held is not None:
            self.held.append((epoch, seq, text))
            return []
        verdict = self._accept(epoch, seq)
        if verdict is None:
            self.held = [(epoch, seq, text)]
            return None
        return [text] if verdict else []

    def finish(self, history: History, render: Render, *, final: bool = True) -> list[str]:
        """End the catch-up with what the history held after :attr:`last`: the texts to send,
        replayed events first, then the held live ones, in order and without repeats.

        A gap still left among the held events (they overtook the history read) keeps the rest
        held when not ``final``: the caller reads the history once more. When ``final`` the gap is
        given up (the history lost those events) and the rest is sent.
        """
        held, self.held = sorted(self.held or [], key=lambda h: h[1]), None
        if self.epoch == "" and history.epoch:
            # The agent's history began after this dashboard subscribed: all of it is new.
            self.epoch, self.last = history.epoch, 0
        out: list[str] = []
        if history.epoch and history.epoch == self.epoch:
            for seq, payload in history.events:
                if seq > self.last:
                    out.append(render(history.epoch, seq, payload))
                    self.last = seq
        else:
            # Another history (or none yet): nothing of it is replayed, what comes live is sent.
            self.epoch = history.epoch
            self.last = min([history.seq, *(s - 1 for e, s, _ in held if e == history.epoch)])
        for index, (epoch, seq, text) in enumerate(held):
            verdict = self._accept(epoch, seq)
            if verdict is None and not final:
                self.held = held[index:]
                break
            if verdict is not False:
                self.last = seq
                out.append(text)
        return out

    def give_up(self) -> list[str]:
        """End the catch-up without the history (it could not be read): the held live events,
        in order and without repeats; whatever they skipped stays missed."""
        held, self.held = sorted(self.held or [], key=lambda h: h[1]), None
        out: list[str] = []
        for epoch, seq, text in held:
            if epoch != self.epoch or seq > self.last:
                self.epoch, self.last = epoch, seq
                out.append(text)
        return out

    def _accept(self, epoch: str, seq: int) -> bool | None:
        """Send (True), drop as a repeat (False) or a gap before it (None)."""
        if self.epoch != epoch:
            if self.epoch != "":
                # The first event seen, or the agent's history started again: start here.
                self.epoch, self.last = epoch, seq
                return True
            # The agent had no history when this dashboard subscribed: all of it is new.
            self.epoch, self.last = epoch, 0
        if seq <= self.last:
            return False
        if seq == self.last + 1:
            self.last = seq
            return True
        return None
