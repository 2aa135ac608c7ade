"""What the benchmark scripts share: the device, a synchronising timer, the table and the JSON record."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cl_utils.devices import as_device  # noqa: E402


def device_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cl_utils.training.default_device())")


def pick_device(name: str | None) -> torch.device:
    return as_device(name or None)  # '' (an empty --device) means the default too


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timer measures it (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """Wall-clock and CPU seconds of ``fn()`` (this process, all threads), synchronised on a GPU.

    On a CPU shared with other work, the CPU time is the steadier figure: time spent waiting for a core does
    not count (time spent spinning in a thread barrier does).
    """
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu


def threads_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice, one per core)")


def set_threads(n: int | None) -> None:
    if n is not None:
        torch.set_num_threads(n)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    n = torch.get_num_threads()
    return f"{device.type}: {platform.processor() or platform.machine()}, {n} thread{'s' if n != 1 else ''}"


def summary(times: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """Median and best of (wall, CPU) timings, and every wall time."""
    wall, cpu = [t[0] for t in times], [t[1] for t in times]
    return {"seconds": [round(t, 4) for t in wall], "median_seconds": round(statistics.median(wall), 5),
            "best_seconds": round(min(wall), 5), "cpu_seconds": [round(t, 4) for t in cpu],
            "median_cpu_seconds": round(statistics.median(cpu), 5)}


def record(name: str, device: torch.device, payload: dict[str, Any], out: str | None = None) -> Path:
    """Write ``benchmarks/results/<name>-<device type>.json`` with the device, torch version and date."""
    result = {
        "benchmark": name,
        "device": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        # other work on the machine slows a CPU benchmark: the 1-minute load average when it finished says how much
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        **payload,
    }
    path = Path(out) if out else RESULTS / f"{name}-{device.type}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A plain-text table: ``columns`` are (key, heading, format)."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append(["" if r.get(k) is None else f.format(r[k]) for k, _, f in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
