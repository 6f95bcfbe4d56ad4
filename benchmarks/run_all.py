"""Run every benchmark script (benchmarks/bench_*.py) and summarise.

Each script runs our code and its named baseline in the same run, prints a table and writes
JSON to bench-out/<area>.json. By default the scripts run with ``--quick`` (small sizes, a few
minutes in all); ``--full`` runs the sizes quoted in BENCHMARKS.md.

    python benchmarks/run_all.py [--full] [--only comm,topology]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="run the full sizes (slow)")
    ap.add_argument("--only", default="", help="comma-separated areas, e.g. comm,saliency")
    args = ap.parse_args()
    only = {a.strip() for a in args.only.split(",") if a.strip()}
    scripts = sorted(HERE.glob("bench_*.py"))
    if only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in only]
    results: list[tuple[str, int, float]] = []
    for script in scripts:
        cmd = [sys.executable, str(script)] + ([] if args.full else ["--quick"])
        print(f"\n=== {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=HERE.parent)
        results.append((script.stem, rc, time.perf_counter() - t0))
    print("\nbenchmark            status   seconds")
    for name, rc, secs in results:
        print(f"{name:20s} {'ok' if rc == 0 else f'rc={rc}':8s} {secs:8.1f}")
    return 0 if all(rc == 0 for _, rc, _ in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
