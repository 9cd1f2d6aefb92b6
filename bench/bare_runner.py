"""Serve a baseline app with exactly the uvicorn options ``hubctl serve`` would use.

``python -m bench.bare_runner --port P [--relay]``: :mod:`bench.bare_app` (the bare server), or
with ``--relay`` :mod:`bench.bare_relay` (the bare relay). The settings come from the ``HUB_*``
environment, like the hub's; only the port and the single worker are set here.
"""

from __future__ import annotations

import argparse

import uvicorn

from app.config import load_settings
from app.serve import uvicorn_options


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_runner")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--relay", action="store_true")
    args = parser.parse_args()
    options = uvicorn_options(load_settings(host="127.0.0.1", port=args.port, workers=1))
    uvicorn.run("bench.bare_relay:app" if args.relay else "bench.bare_app:app", **options)


if __name__ == "__main__":
    main()
