"""`make campaign` / `python -m campaign`: a seeded fault campaign over the real stack."""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

from bench.environment import ROOT

from .report import summary, write_json
from .runner import Options, Result, run, say


def parse(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m campaign", description=__doc__)
    parser.add_argument("--seed", type=int, default=None, help="the schedule's seed (default: random, printed)")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of faults (default 120)")
    parser.add_argument("--clients", type=int, default=6, help="concurrent clients placing orders (default 6)")
    parser.add_argument("--settle", type=float, default=120.0,
                        help="seconds allowed, after healing, for everything to settle (default 120)")
    parser.add_argument("--json", type=Path, default=None, help="the JSON report (default var/campaign/SEED.json)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.settle <= 0 or not 1 <= args.clients <= 200:
        parser.error("--duration and --settle must be positive, --clients from 1 to 200")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 1_000_000)
    return Options(seed, args.duration, args.clients, args.settle, args.json, os.environ.get("DATABASE_URL") or None)


def main(argv: list[str] | None = None) -> int:
    options = parse(sys.argv[1:] if argv is None else argv)
    path = options.json_path or ROOT / "var" / "campaign" / f"{options.seed}.json"

    def report(result: Result) -> None:
        write_json(result, path)
        say(summary(result))
        say(f"JSON report: {path}")

    return run(options, on_result=report)


if __name__ == "__main__":
    sys.exit(main())
