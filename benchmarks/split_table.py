"""Wall time of chapter 5's full-mode split-MNIST table (6 methods × 3 scenarios × 5 seeds, Hsu et al.'s sizes).

Runs ``python -m cl_utils reproduce split-mnist --json`` (the same function the chapter calls) on the chosen device
and records the table's own timer (``table_seconds``: training and evaluation, not the data loading) and the
process's wall time. Goal (issue 8): under 5 minutes on an H100. On 2 CPU cores it takes 12–14 minutes (the
chapter prints the time of its own run); on a GPU the table's runs are stacked (``cl_utils.sweeps.sequence_sweep``).
Writes ``benchmarks/results/split_table-<device>.json``.

    python benchmarks/split_table.py [--device cuda] [--fast]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _common import ROOT, device_arg, pick_device, record

GOALS = {"cuda": {"table_seconds": 300}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    device_arg(ap)
    ap.add_argument("--fast", action="store_true", help="fast-mode sizes (a smoke test, not a figure to keep)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/split_table-<device>.json)")
    args = ap.parse_args()
    device = pick_device(args.device)
    cmd = [sys.executable, "-m", "cl_utils", "reproduce", "split-mnist", "--json", "--no-progress",
           "--device", str(device), *(["--fast"] if args.fast else [])]
    print("$", " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"reproduce split-mnist failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    data = json.loads(proc.stdout)
    seconds = data["table_seconds"]
    goal = GOALS.get(device.type, {}).get("table_seconds")
    print(f"split-MNIST table on {device}: {seconds / 60:.1f} min ({data['seeds']} seeds; process {wall / 60:.1f} min)"
          + ("" if goal is None else f"; goal < {goal / 60:.0f} min {'met' if seconds < goal else 'NOT met'}"))
    path = record("split_table", device, {
        "fast": args.fast, "seeds": data["seeds"], "table_seconds": seconds, "process_seconds": round(wall, 1),
        "goals": GOALS.get(device.type, {}),
        "final_average": {m: {s: r["final_average"]["mean"] for s, r in by.items()} for m, by in data["results"].items()},
    }, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
