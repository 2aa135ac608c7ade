"""Training throughput: cl_utils.training.train against the usual DataLoader loop and against the floor.

MLP 784-400-400-10, batch 128, one epoch of the 60,000 MNIST training digits, for each optimizer variant:

- ``train``: :func:`cl_utils.training.train` (data already on the device; minibatches gathered by index);
- ``DataLoader loop``: what most code does: ``DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True)`` over
  CPU tensors (pinned and copied per batch on a GPU), forward, loss, backward, step;
- ``floor``: the same number of steps on one fixed, pre-sliced batch: the cost of the model and the optimizer
  alone, which no data pipeline can beat.

All three use the same model and the same optimizer: ``adam`` is what ``train`` uses by default (and what
``torch.optim.Adam(params, lr)`` gives); ``adam, fused`` is ``torch.optim.Adam(..., fused=True)``, a single-kernel
update that ``train`` accepts as an optimizer factory but does not use by default, since its rounding differs from
the default's and every recorded result would shift slightly. The methods run interleaved, ``--repeats`` times
after a short warm-up; the table shows the median and the best epoch (the CPU may be shared with other work: the
best is the least disturbed; the CPU time of the process is recorded too, the steadier figure on a busy machine).
``--threads`` sets torch's CPU threads. ``--compile`` adds ``train`` on a ``torch.compile``'d model (compile time reported
separately). Writes ``benchmarks/results/throughput-<device>.json``.

    python benchmarks/throughput.py [--device cuda] [--repeats 5] [--threads 2] [--compile]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from _common import device_arg, pick_device, record, set_threads, summary, table, threads_arg, timed

from cl_utils.data import Task, load_mnist
from cl_utils.models import MLP
from cl_utils.training import make_optimizer, set_seed, train

BATCH, LR = 128, 1e-3
GOALS = {"cpu": {"speedup_vs_dataloader": 1.2, "vs_floor": 1.1},
         "cuda": {"speedup_vs_dataloader": 5.0, "epoch_seconds": 0.5}}  # an H100: one 60k epoch in under 0.5 s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    device_arg(ap)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--samples", type=int, default=60000, help="training digits per epoch (default: all 60,000)")
    ap.add_argument("--compile", action="store_true", help="also time train() on a torch.compile'd model")
    threads_arg(ap)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/throughput-<device>.json)")
    args = ap.parse_args()
    set_threads(args.threads)
    device = pick_device(args.device)
    data = load_mnist()
    cpu_x, cpu_y = data.train_x[: args.samples], data.train_y[: args.samples]
    task = Task("mnist", cpu_x, cpu_y, data.test_x, data.test_y).to(device)
    n = len(cpu_y)
    steps = math.ceil(n / BATCH)
    optimizers = {
        "adam": "adam",
        "adam, fused": lambda p: torch.optim.Adam(p, lr=LR, fused=True),
    }

    def fresh(seed: int) -> torch.nn.Module:
        set_seed(seed)
        return MLP().to(device)

    def run_train(spec, seed: int, x=task, wrap=lambda m: m) -> float:
        model = wrap(fresh(seed))
        return timed(lambda: train(model, x, batch_size=BATCH, lr=LR, optimizer=spec, progress=False, seed=seed),
                     device)

    def run_loader(spec, seed: int, m: int = n) -> float:
        model = fresh(seed)
        opt = make_optimizer(model.parameters(), spec, LR)
        loader = DataLoader(TensorDataset(cpu_x[:m], cpu_y[:m]), batch_size=BATCH, shuffle=True,
                            pin_memory=device.type == "cuda")

        def epoch() -> None:
            model.train()
            for xb, yb in loader:
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        return timed(epoch, device)

    def run_floor(spec, seed: int, k: int = steps) -> float:
        model = fresh(seed)
        opt = make_optimizer(model.parameters(), spec, LR)
        xb, yb = task.train_x[:BATCH].clone(), task.train_y[:BATCH].clone()

        def epoch() -> None:
            model.train()
            for _ in range(k):
                loss = F.cross_entropy(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        return timed(epoch, device)

    methods = {"train": run_train, "DataLoader loop": run_loader, "floor": run_floor}
    # warm-up: kernels, allocator, DataLoader machinery (about 20 steps of each)
    small = task.subset(20 * BATCH)
    for spec in optimizers.values():
        run_train(spec, 0, small), run_loader(spec, 0, 20 * BATCH), run_floor(spec, 0, 20)

    times: dict[tuple[str, str], list[tuple[float, float]]] = {(m, o): [] for o in optimizers for m in methods}
    compiled: dict[str, float] = {}
    if args.compile:
        times[("train, torch.compile", "adam")] = []
        model = torch.compile(fresh(0))
        compiled["first_epoch_seconds"] = round(
            timed(lambda: train(model, task, batch_size=BATCH, lr=LR, progress=False, seed=0), device)[0], 3)
    for r in range(args.repeats):
        t0 = time.perf_counter()
        for oname, spec in optimizers.items():
            for mname, fn in methods.items():
                times[(mname, oname)].append(fn(spec, r + 1))
        if args.compile:
            times[("train, torch.compile", "adam")].append(run_train("adam", r + 1, wrap=torch.compile))
        print(f"repeat {r + 1}/{args.repeats}: {time.perf_counter() - t0:.1f} s", flush=True)

    rows = []
    for (mname, oname), ts in times.items():
        s = summary(ts)
        rows.append({
            "method": mname, "optimizer": oname, **s,
            "samples_per_s": round(n / s["median_seconds"]), "samples_per_s_best": round(n / s["best_seconds"]),
        })
    by = {(r["method"], r["optimizer"]): r for r in rows}
    ratios = {}
    for oname in optimizers:
        t, d, f = by[("train", oname)], by[("DataLoader loop", oname)], by[("floor", oname)]
        ratios[oname] = {
            "speedup_vs_dataloader": round(d["median_seconds"] / t["median_seconds"], 3),
            "speedup_vs_dataloader_best": round(d["best_seconds"] / t["best_seconds"], 3),
            "vs_floor": round(t["median_seconds"] / f["median_seconds"], 3),
            "vs_floor_best": round(t["best_seconds"] / f["best_seconds"], 3),
            "speedup_vs_dataloader_cpu_time": round(d["median_cpu_seconds"] / t["median_cpu_seconds"], 3),
            "vs_floor_cpu_time": round(t["median_cpu_seconds"] / f["median_cpu_seconds"], 3),
        }
    for r in rows:
        ratio = ratios[r["optimizer"]] if r["method"] == "train" else {}
        r["speedup_vs_dataloader"], r["vs_floor"] = ratio.get("speedup_vs_dataloader"), ratio.get("vs_floor")

    print(f"\n{n:,} samples, batch {BATCH}, MLP 784-400-400-10, {args.repeats} repeats, on {device} "
          f"({torch.get_num_threads()} threads)")
    print(table(rows, [("method", "method", "{}"), ("optimizer", "optimizer", "{}"),
                       ("median_seconds", "median s", "{:.3f}"), ("best_seconds", "best s", "{:.3f}"),
                       ("median_cpu_seconds", "CPU s", "{:.3f}"),
                       ("samples_per_s", "samples/s", "{:,}"), ("speedup_vs_dataloader", "× DataLoader", "{:.2f}"),
                       ("vs_floor", "/ floor", "{:.2f}")]))
    if compiled:
        print(f"torch.compile: first epoch including compilation {compiled['first_epoch_seconds']:.1f} s")
    goals = GOALS.get(device.type, {})
    met = {}
    if "speedup_vs_dataloader" in goals:
        met["speedup_vs_dataloader"] = ratios["adam"]["speedup_vs_dataloader"] >= goals["speedup_vs_dataloader"]
    if "vs_floor" in goals:
        met["vs_floor"] = ratios["adam"]["vs_floor"] <= goals["vs_floor"]
    if "epoch_seconds" in goals and n == 60000:
        met["epoch_seconds"] = by[("train", "adam")]["median_seconds"] < goals["epoch_seconds"]
    print("goals (train, adam): " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in met.items()))
    path = record("throughput", device, {
        "model": "MLP 784-400-400-10, float32", "batch_size": BATCH, "lr": LR, "samples": n, "steps": steps,
        "repeats": args.repeats, "threads": torch.get_num_threads(), "rows": rows, "ratios": ratios, "compile": compiled,
        "goals": goals, "goals_met": met,
    }, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
