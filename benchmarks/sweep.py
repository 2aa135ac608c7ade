"""A λ sweep in one batched run against K runs one after another.

EWC on 2 permuted-MNIST tasks (60,000 training digits each), MLP 784-400-400-10, Adam, batch 128, one epoch per
task, the true Fisher, K = 16 values of λ:

- ``batched``: :func:`cl_utils.sweeps.ewc_lambda_sweep` (the first task and its Fisher once, then the 16 copies
  stacked with ``torch.func.vmap``);
- ``sequential``: 16 × :func:`cl_utils.training.run_sequence` with ``EWC(λ)``, the reference it must equal.

Both run in the same process after a short warm-up, one after the other, once each (``--repeats`` for more);
the table shows wall and CPU times, their ratio and how far the two accuracy matrices are apart (float rounding in the batched products grows
over an epoch of training, so the runs agree closely but not bit for bit). Goals: never slower than sequential on
a CPU, ≥ 8× faster on a GPU. Writes ``benchmarks/results/sweep-<device>.json``.

    python benchmarks/sweep.py [--device cuda] [--k 16] [--samples 60000] [--repeats 1]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from _common import device_arg, pick_device, record, set_threads, summary, table, threads_arg, timed

from cl_utils.data import permuted_mnist
from cl_utils.ewc import EWC
from cl_utils.models import MLP
from cl_utils.sweeps import ewc_lambda_sweep
from cl_utils.training import run_sequence, set_seed

GOALS = {"cpu": {"speedup": 1.0}, "cuda": {"speedup": 8.0}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    device_arg(ap)
    ap.add_argument("--k", type=int, default=16, help="number of λ values")
    ap.add_argument("--samples", type=int, default=None, help="training digits per task (default: all 60,000)")
    ap.add_argument("--fisher-kind", default="true")
    ap.add_argument("--repeats", type=int, default=1)
    threads_arg(ap)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/sweep-<device>.json)")
    args = ap.parse_args()
    set_threads(args.threads)
    device = pick_device(args.device)
    tasks = permuted_mnist(2, seed=0, device=device)
    if args.samples:
        tasks = [t.subset(args.samples) for t in tasks]
    lams = [0.0] + torch.logspace(-1, 5, args.k - 1).tolist() if args.k > 1 else [100.0]
    set_seed(0)
    model = MLP().to(device)
    kw = dict(epochs=1, batch_size=128, lr=1e-3, optimizer="adam", seed=0, progress=False)

    out: dict[str, object] = {}

    def batched() -> None:
        out["batched"] = ewc_lambda_sweep(model, tasks, lams, fisher_kind=args.fisher_kind, **kw)

    def sequential() -> None:
        out["sequential"] = [run_sequence(copy.deepcopy(model), tasks, strategy=EWC(lam, fisher_kind=args.fisher_kind),
                                          **kw) for lam in lams]

    # warm-up on a few digits (lazy initialisation of vmap, kernels and allocator stays out of the timings)
    small = [t.subset(256, 256) for t in tasks]
    ewc_lambda_sweep(model, small, lams[:2], fisher_kind=args.fisher_kind, **kw)
    run_sequence(copy.deepcopy(model), small, strategy=EWC(lams[1], fisher_kind=args.fisher_kind), **kw)
    times: dict[str, list[tuple[float, float]]] = {"batched": [], "sequential": []}
    for r in range(args.repeats):
        for name, fn in (("batched", batched), ("sequential", sequential)):
            t0 = time.perf_counter()
            times[name].append(timed(fn, device))
            print(f"repeat {r + 1}: {name} {time.perf_counter() - t0:.1f} s", flush=True)
    sw, seq = out["batched"], out["sequential"]
    diff = max(float((sw.accuracy[k] - s.accuracy).abs().max()) for k, s in enumerate(seq))
    mean_diff = float((sw.final_average - torch.tensor([s.final_average for s in seq], dtype=torch.float64)).abs().mean())
    rows = [{"method": name, **summary(ts)} for name, ts in times.items()]
    speedup = rows[1]["median_seconds"] / rows[0]["median_seconds"]
    speedup_cpu = rows[1]["median_cpu_seconds"] / rows[0]["median_cpu_seconds"]
    rows[0]["speedup"] = round(speedup, 3)
    n = len(tasks[0].train_y)
    print(f"\nEWC λ sweep, K = {len(lams)}, 2 permuted-MNIST tasks × {n:,} digits, MLP 784-400-400-10, on {device}")
    print(table(rows, [("method", "method", "{}"), ("median_seconds", "median s", "{:.1f}"),
                       ("best_seconds", "best s", "{:.1f}"), ("median_cpu_seconds", "CPU s", "{:.1f}"),
                       ("speedup", "speedup", "{:.2f}×")]))
    print(f"speedup in CPU time: {speedup_cpu:.2f}×")
    print(f"max |ΔR| between batched and sequential: {diff:.4f}; mean |Δ final average|: {mean_diff:.4f}")
    path = record("sweep", device, {
        "model": "MLP 784-400-400-10, float32", "tasks": "2 permuted MNIST", "samples_per_task": n, "k": len(lams),
        "lams": lams, "fisher_kind": args.fisher_kind, "epochs": 1, "batch_size": 128, "optimizer": "adam",
        "repeats": args.repeats, "threads": torch.get_num_threads(), "rows": rows, "speedup": round(speedup, 3),
        "speedup_cpu_time": round(speedup_cpu, 3), "max_abs_accuracy_diff": round(diff, 5),
        "mean_abs_final_average_diff": round(mean_diff, 5),
        "final_average_batched": [round(float(v), 4) for v in sw.final_average],
        "final_average_sequential": [round(s.final_average, 4) for s in seq],
        "goals": GOALS.get(device.type, {}),
    }, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
