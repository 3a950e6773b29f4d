"""``python -m bench.chaos [--light] [--seed N]``: the chaos run (``make chaos``).

Exits 1 when a conversion was lost or went over the attempt limit (or a fault could
not be injected); prints the table and writes bench/results/chaos-latest.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from bench.chaos import report
from bench.chaos.run import config, run_chaos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--light", action="store_true", help="CI size: ~1,200 conversions")
    parser.add_argument("--seed", type=int, help="fault schedule and load seed (default random)")
    parser.add_argument("--conversions", type=int, help="override the preset's count")
    parser.add_argument("--rate", type=float, help="override the preset's conversions/s")
    args = parser.parse_args()
    cfg = config(
        "light" if args.light else "full",
        seed=args.seed,
        conversions=args.conversions,
        rate=args.rate,
    )
    try:
        result = asyncio.run(run_chaos(cfg))
    except KeyboardInterrupt:
        print("interrupted: everything the run started was stopped and removed", flush=True)
        sys.exit(130)
    md_path, json_path = report.write(result)
    print()
    print(report.markdown(result))
    print(f"written: {md_path} and {json_path}")
    ok = result["verdict"] == "PASS" and not result["faults_not_injected"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
