"""The seam between replay and live events, as a property: hypothesis interleaves publishing,
live delivery (late, out of order, repeated, from two publishing workers) and the history reads
of :class:`app.recovery.Cursor` the way the hub drives it, and finds no gap, repeat or disorder.

Unit level (the decisions, no socket); tests/test_recovery.py runs the same seam through real
servers on both engines."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from app.engine import History
from app.recovery import Cursor, is_recovered

EPOCH = "e1"


def _history(published: int, after: int) -> History:
    return History(EPOCH, published, tuple((s, str(s)) for s in range(after + 1, published + 1)))


def _render(epoch: str, seq: int, payload: str) -> str:
    assert epoch == EPOCH and payload == str(seq)
    return str(seq)


class Model:
    """One dashboard subscribing with ``since`` while an agent publishes."""

    def __init__(self, seen: int, total: int) -> None:
        self.total = total
        self.published = seen
        self.watching = False
        self.in_flight: list[int] = []
        self.cursor = Cursor.catching_up(EPOCH, seen)
        self.read_done = False
        self.out: list[str] = []

    def publish(self, repeat: bool) -> None:
        if self.published == self.total:
            return
        self.published += 1  # held in the history before it is published
        if self.watching:
            self.in_flight.append(self.published)
            if repeat:
                self.in_flight.append(self.published)

    def deliver(self, pick: int) -> None:
        if not self.in_flight:
            return
        seq = self.in_flight.pop(pick % len(self.in_flight))
        texts = self.cursor.offer(EPOCH, seq, str(seq))
        if texts is None:
            self.fill_gap()
        else:
            self.out += texts

    def fill_gap(self) -> None:
        # As Hub._fill_gap: read after the cursor, once more if live events overtook the read.
        for final in (False, True):
            self.out += self.cursor.finish(_history(self.published, self.cursor.last), _render,
                                           final=final)
            if self.cursor.held is None:
                return

    def read(self) -> None:
        if self.read_done or not self.watching:
            return
        self.read_done = True
        history = _history(self.published, self.cursor.last)
        assert is_recovered(EPOCH, self.cursor.last, history)
        self.out += self.cursor.finish(history, _render, final=False)
        if self.cursor.held is not None:
            self.fill_gap()


@settings(max_examples=2000, deadline=None)
@given(
    seen=st.integers(0, 5),
    total_extra=st.integers(0, 25),
    steps=st.lists(st.tuples(st.sampled_from(["publish", "deliver", "watch", "read"]),
                             st.integers(0, 50), st.booleans()), max_size=80),
)
def test_replay_then_live_without_gap_repeat_or_disorder(
    seen: int, total_extra: int, steps: list[tuple[str, int, bool]]
) -> None:
    model = Model(seen, seen + total_extra)
    for action, pick, flag in steps:
        if action == "publish":
            model.publish(repeat=flag)
        elif action == "deliver":
            model.deliver(pick)
        elif action == "watch":
            model.watching = True  # live first, then the read
        elif model.watching:
            model.read()
    # The rest: watch and read if not yet done, publish everything, deliver everything.
    model.watching = True
    model.read()
    while model.published < model.total:
        model.publish(repeat=False)
    while model.in_flight:
        model.deliver(0)
    assert model.out == [str(s) for s in range(seen + 1, model.total + 1)]
    assert model.cursor.held is None


def test_recovered_only_with_the_same_epoch_and_nothing_trimmed() -> None:
    held = History(EPOCH, 10, ((8, "8"), (9, "9"), (10, "10")))
    assert is_recovered(EPOCH, 7, held) and is_recovered(EPOCH, 10, held)
    assert not is_recovered(EPOCH, 6, held)  # 7 was trimmed
    assert not is_recovered("other", 7, held)
    assert not is_recovered(EPOCH, 11, held)  # ahead of the history: not this one
    assert not is_recovered(EPOCH, 0, History("", 0))  # no history at all
    assert is_recovered(EPOCH, 10, History(EPOCH, 10))  # up to date, everything aged out
