"""End to end: wall time of the whole book build (full mode) and of the test command (fast mode).

Runs the README's two commands as they are, one after the other, and records their wall time and exit status:

- ``bash .ci/build-book`` (full mode). ``--cold`` (the default) first removes the build's stamp of the library's
  hash, so that the script starts from scratch and executes every notebook (a warm rebuild reuses the cache and
  says little); ``--warm`` keeps the cache.
- ``bash .ci/test`` (fast mode: unit tests, the browser test, every notebook under nbval).

Goals (issue 8): build ≤ 30 min on 2 CPU cores and ≤ 5 min on an H100; tests ≤ 15 min on 2 CPU cores. The device
recorded is the one the book's notebooks use (``cl_utils.training.default_device()``; the unit tests always run on
the CPU). Writes ``benchmarks/results/end_to_end-<device>.json``.

    python benchmarks/end_to_end.py [--warm] [--skip-build] [--skip-test]

Takes tens of minutes and uses the shared ``_build`` folder: run it alone, when nothing else builds the book.
"""

from __future__ import annotations

import argparse
import subprocess
import time

from _common import ROOT, pick_device, record, table

GOALS = {"cpu": {"build_seconds": 1800, "test_seconds": 900}, "cuda": {"build_seconds": 300}}


def run(cmd: list[str]) -> dict:
    print(f"$ {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    print("\n".join(tail), flush=True)
    return {"command": " ".join(cmd), "seconds": round(seconds, 1), "returncode": proc.returncode, "tail": tail}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warm", action="store_true", help="reuse the executed notebooks of an earlier build")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--skip-test", action="store_true")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/end_to_end-<device>.json)")
    args = ap.parse_args()
    device = pick_device(None)
    rows = []
    if not args.skip_build:
        if not args.warm:
            (ROOT / "_build" / ".cl_utils.sha256").unlink(missing_ok=True)  # build-book then starts from scratch
        rows.append({"step": "book build (full mode)" + (", warm" if args.warm else ", cold"),
                     **run(["bash", ".ci/build-book"])})
    if not args.skip_test:
        rows.append({"step": "test command (fast mode)", **run(["bash", ".ci/test"])})
    if not rows:
        ap.error("nothing to do: --skip-build and --skip-test both given")
    for r in rows:
        r["minutes"] = round(r["seconds"] / 60, 2)
    print()
    print(table(rows, [("step", "step", "{}"), ("minutes", "minutes", "{:.1f}"), ("returncode", "exit", "{}")]))
    path = record("end_to_end", device, {"cold": not args.warm, "rows": rows, "goals": GOALS.get(device.type, {})},
                  args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
