"""Run every benchmark in one call, e.g. on a GPU machine: throughput, sweep, Fisher (and end to end).

    python benchmarks/run_all.py [--device cuda] [--split-table] [--end-to-end] [--quick]

Each script runs in its own process with the same ``--device`` and writes its JSON to ``benchmarks/results/``
(``<name>-<device type>.json``); the appendix page of the book plots whatever is there. ``--quick`` uses fewer
repeats (a smoke test, not figures to keep). ``--end-to-end`` adds the book build and the test command (tens of
minutes on a CPU; run it alone). ``--split-table`` adds chapter 5's full split-MNIST table (``split_table.py``;
12–14 minutes on 2 CPU cores, the goal is under 5 on an H100); it is on by default with ``--device cuda``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cl_utils.training.default_device())")
    ap.add_argument("--end-to-end", action="store_true", help="also time the book build and the test command")
    ap.add_argument("--quick", action="store_true", help="fewer repeats: check that everything runs")
    ap.add_argument("--split-table", action="store_true",
                    help="also time chapter 5's full split-MNIST table (default with --device cuda)")
    args = ap.parse_args()
    dev = ["--device", args.device] if args.device else []
    quick = args.quick
    jobs = [
        ("throughput", ["throughput.py", *dev, "--repeats", "1" if quick else "5"]),
        ("sweep", ["sweep.py", *dev, *(["--samples", "6000"] if quick else [])]),
        ("fisher", ["fisher.py", *dev, *(["--repeats", "2", "--no-naive"] if quick else [])]),
    ]
    if args.split_table or (args.device or "").startswith("cuda"):
        jobs.append(("split_table", ["split_table.py", *dev, *(["--fast"] if quick else [])]))
    if args.end_to_end:
        jobs.append(("end_to_end", ["end_to_end.py"]))
    status = []
    for name, cmd in jobs:
        print(f"\n=== {name}: python benchmarks/{' '.join(cmd)}", flush=True)
        start = time.perf_counter()
        rc = subprocess.run([sys.executable, str(HERE / cmd[0]), *cmd[1:]], cwd=HERE.parent).returncode
        status.append((name, rc, time.perf_counter() - start))
    print("\nbenchmark     exit   minutes")
    for name, rc, secs in status:
        print(f"{name:12s}  {rc:4d}  {secs / 60:8.1f}")
    sys.exit(max(rc for _, rc, _ in status))


if __name__ == "__main__":
    main()
