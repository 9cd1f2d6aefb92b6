"""``python -m bench [--smoke] [--out DIR] [--max-conns] [--ha]``: run every row on every target.

What runs where is :mod:`bench.plans`; how much, :mod:`bench.profile`; the report with each row's
ratio to its baseline measured in the same run, :mod:`bench.report`. ``--ha``: only the Redis
rows the highly available ones are compared with, and those (:mod:`bench.ha`).
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import secrets
import shlex
import signal
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench import report
from bench.plans import Bench, Plans
from bench.profile import SMOKE, Profile

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
FD_LIMIT = 65_536


def raise_fd_limit(wanted: int = FD_LIMIT) -> int:
    """Raise RLIMIT_NOFILE for this process and its children (servers and clients)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(wanted, soft), max(wanted, hard)))
    except (ValueError, OSError):  # not allowed to raise the hard limit: go as far as it is
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run(profile: Profile, out: Path, *, max_conns: bool, command: str, mode: str,
        only_ha: bool = False) -> str:
    results: report.Results = {}
    secret = secrets.token_hex(32)
    bench = Bench(profile, secret, results)
    fd_limit = raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="hub-bench-") as tmp, ExitStack() as stack:
        plans = Plans(bench, {"HUB_JWT_SECRET": secret}, Path(tmp), stack)
        # The smoke run leaves the highly available rows to its own --ha run (two shorter tests).
        for target, plan in plans.all(max_conns=max_conns, ha_rows=mode != "smoke", only_ha=only_ha):
            bench.guard(target, plan)
    meta = report.metadata(command, mode, {**dataclasses.asdict(profile), "fd_limit": fd_limit})
    return report.write(out, meta, results)


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the ExitStack: every server is stopped


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminated)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts: a check that every row runs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    parser.add_argument("--max-conns", action="store_true",
                        help=f"also open up to {Profile().max_conns:,} idle connections on one "
                        "embedded worker")
    parser.add_argument("--ha", action="store_true",
                        help="only the highly available Redis rows (and the one-Redis figures they "
                        "are compared with)")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    text = run(SMOKE if args.smoke else Profile(), args.out, max_conns=args.max_conns, command=command,
               mode="smoke" if args.smoke else "full", only_ha=args.ha)
    print(text)
    print(f"[bench] wrote {args.out / 'results.json'} and {args.out / 'results.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
