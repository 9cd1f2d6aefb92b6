"""Benchmarks of the hub against a bare FastAPI WebSocket endpoint: ``python -m bench``.

Three targets, side by side in one run, all served by uvicorn with the options of
:func:`app.serve.uvicorn_options`:

- ``baseline``: :mod:`bench.bare_app` (no authentication at all), run by :mod:`bench.bare_runner`;
- ``embedded``: ``hubctl serve`` on the embedded engine, one worker;
- ``redis``: ``hubctl serve --workers 2`` on a throwaway ``redis-server`` (and, for the relay
  rows, two single-worker ``hubctl serve`` processes on that Redis, one side on each).

Modules: :mod:`bench.servers` (processes), :mod:`bench.client` (client helpers, child
processes), :mod:`bench.load` (handshakes, Redis commands), :mod:`bench.memory` (idle
connections), :mod:`bench.relay` (round trips and fan-out), :mod:`bench.report` (table, files),
:mod:`bench.__main__` (the plan).
"""
