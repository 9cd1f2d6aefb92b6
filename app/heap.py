"""The garbage collector's policy while a worker serves.

A hub worker holds thousands of long-lived connections and allocates a little for every message.
Under CPython's defaults (``gc.set_threshold(700, 10, 10)``) that is a poor fit, measured in the
soak at 2,500 connections a worker: objects that live a second or two (a read's timeout, a Redis
call in flight) survived two young collections and were promoted, so a full collection of every
connection's objects ran about every 10 s and took 1.2 to 2.4 s of a starved worker; py-spy
`--native` put 58% of the worker's CPU in ``gc_collect_main``. The policy:

- The startup heap (modules, the app, the runtime: some 140,000 objects) is collected once and
  frozen: no collection walks it again.
- A full collection is considered after 100 collections of the middle generation instead of
  10 (then still only once a quarter of the old generation is new since the last one). The
  young collections keep CPython's sizes: they are what a handshake may wait for. Paced at
  200/s (2,000 handshakes, twice, one embedded worker), the p99 was 3.7-4.0 ms with these
  thresholds, 4.9-12 ms with young collections every 10,000 allocations, and 14-16 ms with
  CPython's default thresholds (full collections); the machine is noisy, the order held.

Measured in the soak at 10,000 connections: the share of a worker's time in collections fell
from 20-58% to 3-7%. Reference counting frees everything that is not in a cycle at once; only
cyclic garbage in the old generation waits longer for the rarer full collections.

:func:`worker_heap` applies it for the lifespan of an app and restores the process's settings
after (tests build many apps in one process).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

THRESHOLDS = (700, 10, 100)


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
