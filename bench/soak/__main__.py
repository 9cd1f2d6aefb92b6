"""``python -m bench.soak [--minutes M | --seconds S] [--connections N] [--out DIR] [--loopback]``.

Exit status: 0 when every invariant held, 1 when any was violated (each is in the report with its
time), 2 when the soak could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from bench.soak import report
from bench.soak.invariants import Record, check
from bench.soak.run import Config, Soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "10")))
    parser.add_argument("--seconds", type=float, help="overrides --minutes (the short version: 60)")
    parser.add_argument("--connections", type=int,
                        default=int(os.environ.get("SOAK_CONNECTIONS", "10000")))
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("SOAK_OUT", "var/soak")))
    parser.add_argument("--loopback", action="store_true", help="no namespaces even when permitted")
    parser.add_argument("--report-only", action="store_true",
                        help="judge and report again the run whose soak.json is in --out")
    args = parser.parse_args(argv)
    if args.report_only:
        return _report_again(args.out)
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    soak = Soak(Config.sized(seconds, args.connections, args.out, loopback=args.loopback))
    try:
        record = asyncio.run(soak.run())
    except Exception as exc:
        print(f"soak: could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    violations = check(record)
    mode = "network namespaces" if any("namespaces" in n for n in soak.notes) else "loopback"
    result = report.write(record, violations, report.meta(record, mode, soak.notes, load_before), args.out)
    print(f"soak: {result['peak_connections']} connections at peak, {len(violations)} violation(s); "
          f"report in {args.out}/soak.md", file=sys.stderr)
    for v in violations[:20]:
        at = v.t - record.measured_from
        print(f"soak: violation {v.invariant} at +{at:.0f}s: {v.detail}", file=sys.stderr)
    return 1 if violations else 0


def _report_again(out: Path) -> int:
    saved = json.loads((out / "soak.json").read_text())
    record = Record.from_json(saved["record"])
    violations = check(record)
    keep = ("date", "minutes", "mode", "cpus", "load_before", "load_after", "notes")
    report.write(record, violations, {k: saved["summary"][k] for k in keep}, out)
    print(f"soak: {len(violations)} violation(s); report in {out}/soak.md", file=sys.stderr)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
