"""The awaited commands of a worker: each ends once, by its answer or by its time running out."""

from __future__ import annotations

from app.commands import AwaitedCommands


def test_an_answer_ends_a_command_once() -> None:
    awaited = AwaitedCommands(60)
    awaited.await_answer("c1", "dash-1", 7, now=100.0)
    first = awaited.answered("c1")
    assert first is not None and (first.conn_id, first.ref, first.expires_at) == ("dash-1", 7, 160.0)
    assert awaited.answered("c1") is None  # a second answer is dropped
    assert awaited.answered("never-sent-here") is None
    assert awaited.expired(now=1000.0) == []


def test_commands_expire_in_order_and_not_before_their_time() -> None:
    awaited = AwaitedCommands(10)
    for n in range(3):
        awaited.await_answer(f"c{n}", "dash", n, now=100.0 + n)
    assert awaited.expired(now=109.9) == []
    assert [command_id for command_id, _ in awaited.expired(now=111.0)] == ["c0", "c1"]
    assert awaited.answered("c0") is None  # expired: its late answer is dropped
    assert awaited.answered("c2") is not None
    assert len(awaited) == 0


def test_past_the_bound_the_oldest_end_early() -> None:
    awaited = AwaitedCommands(60, most=2)
    for n in range(4):
        awaited.await_answer(f"c{n}", "dash", None, now=100.0)
    assert [command_id for command_id, _ in awaited.expired(now=100.0)] == ["c0", "c1"]
    assert len(awaited) == 2
