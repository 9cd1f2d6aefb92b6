"""Benchmarks of the hub against baselines made of the same ingredients: ``python -m bench``.

Every server is served by uvicorn with the options of :func:`app.serve.uvicorn_options`, and
every hub figure is shown as a ratio to its baseline measured in the same run:

- ``baseline``: :mod:`bench.bare_app`, a bare FastAPI WebSocket endpoint (no authentication at
  all) that sends a ``welcome``: the baseline of the connection rows (handshakes, churn, memory);
- ``bare_relay`` / ``bare_relay_redis``: :mod:`bench.bare_relay`, a bare relay forwarding frames
  in one process / between two processes through Redis PUBLISH/SUBSCRIBE: the baselines of the
  message rows (relay, fan-out, events) of the embedded / the Redis hub;
- ``embedded``: ``hubctl serve`` on the embedded engine, one worker;
- ``redis``: ``hubctl serve --workers 2`` on a throwaway ``redis-server`` (and, for the message
  rows, two single-worker ``hubctl serve`` processes on that Redis, as the bare relay's two).

Modules: :mod:`bench.servers` (processes), :mod:`bench.client` (client helpers, child
processes), :mod:`bench.load` (handshakes, Redis commands), :mod:`bench.churn` (connect/close
cycles), :mod:`bench.memory` (idle connections), :mod:`bench.relay` (round trips and fan-out of
one event), :mod:`bench.events` (event rates, sustained fan-out), :mod:`bench.plans` (what runs
where), :mod:`bench.profile` (how much), :mod:`bench.report` (rows, ratios, goals, files),
:mod:`bench.__main__` (the command).
"""
