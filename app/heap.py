"""The garbage collector's policy while a worker serves.

A hub worker holds thousands of long-lived connections and allocates a little for every message.
Under CPython's defaults (``gc.set_threshold(700, 10, 10)``) that is a poor fit, measured in the
soak at 2,500 connections a worker: objects that live a second or two (a read's timeout, a Redis
call in flight) survived two young collections and were promoted, so a full collection of every
connection's objects ran about every 10 s and took 1.2 to 2.4 s of a starved worker; py-spy
`--native` put 58% of the worker's CPU in ``gc_collect_main``. The policy:

- The startup heap (modules, the app, the runtime: some 140,000 objects) is collected once and
  frozen: no collection walks it again.
- The youngest generation is collected every ``THRESHOLDS[0]`` allocations instead of 700, so
  that short-lived objects die young instead of being promoted, and a full collection is
  considered only after 20 middle ones instead of 10 (then still only once a quarter of the old
  generation is new). Reference counting frees everything that is not in a cycle at once; only
  cyclic garbage waits longer (bounded by the thresholds).

The sizes trade pauses for work. With 50,000 allocations the soak saw no full collection after
startup, but one middle collection held 238,000 objects of closed connections' cyclic garbage
and took 2.5 s; 10,000 keeps the young collections five times smaller.

:func:`worker_heap` applies it for the lifespan of an app and restores the process's settings
after (tests build many apps in one process).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

THRESHOLDS = (10_000, 20, 20)


@contextmanager
def worker_heap() -> Iterator[None]:
    """Collect and freeze what exists, raise the thresholds; undo both on exit."""
    saved = gc.get_threshold()
    gc.collect()  # startup garbage is collected, not frozen for good
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*saved)
        gc.unfreeze()
