"""Speed of the Fisher diagonal: cl_utils.fisher against BackPACK and a naive per-sample loop.

MLP 784-400-400-10 (float32), 1,000 MNIST training digits, the true and the empirical Fisher diagonal, averaged
over the samples. All methods run in the same process, interleaved, each ``--repeats`` times (default 9, the
setting of the recorded figures) after one warm-up (the naive loop takes seconds per call: it runs once, or three
times when it takes under 5 s); the table shows the best time of each, the one least disturbed by other work on
the machine. The results are checked against BackPACK before timing, and written as JSON to
``benchmarks/results/fisher-<device>.json``.

    python benchmarks/fisher.py [--device cuda] [--repeats 9] [--threads 1] [--no-naive]

Methods:
- ``cl_utils``: :func:`cl_utils.fisher.fisher_diagonal` as a user calls it, with its default ``batch_size`` (512:
  two chunks of the 1,000 samples);
- ``cl_utils, one batch``: the same with ``batch_size=len(x)``, all samples in one pass;
- ``backpack``: BackPACK's ``DiagGGNExact`` (true) and ``SumGradSquared`` (empirical), which also compute the
  ordinary gradient;
- ``vmap``: per-sample gradients with ``torch.func.vmap(grad)`` in chunks of 250, squared and summed (empirical);
- ``naive loop``: one ``backward()`` per sample (empirical) or per sample and class (true).

The goal (issue 5): ``cl_utils`` no slower than 1.5× BackPACK for both kinds, and at least 40× faster than the
naive loop; the JSON records whether each was met.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import statistics
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from _common import device_arg, device_name, pick_device, record, set_threads, threads_arg, timed

# BackPACK's hooks fire on a module output whose input needs no gradient (the first layer): harmless here
warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)

from cl_utils.data import load_mnist
from cl_utils.fisher import fisher_diagonal
from cl_utils.models import MLP

GOALS = {"max_ratio_vs_backpack": 1.5, "min_speedup_vs_naive": 40.0}


def naive(model: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    out = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in range(len(x)):
        logp = model(x[i : i + 1]).log_softmax(-1)[0]
        classes = range(len(logp)) if kind == "true" else [int(y[i])]
        for c in classes:
            model.zero_grad(set_to_none=True)
            logp[c].backward(retain_graph=kind == "true")
            w = logp[c].detach().exp() if kind == "true" else 1.0
            for k, p in params.items():
                out[k] += w * p.grad.square()
    return {k: v / len(x) for k, v in out.items()}


def vmap_empirical(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 250) -> dict[str, torch.Tensor]:
    params = {k: p.detach() for k, p in model.named_parameters()}

    def loss(ps, xn, yn):
        return F.cross_entropy(torch.func.functional_call(model, ps, (xn[None],)), yn[None])

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))
    out = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in range(0, len(x), chunk):
        for k, g in per_sample(params, x[i : i + chunk], y[i : i + chunk]).items():
            out[k] += g.square().sum(0)
    return {k: v / len(x) for k, v in out.items()}


def backpack_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str) -> Callable[[], dict]:
    from backpack import backpack, extend
    from backpack.extensions import DiagGGNExact, SumGradSquared

    seq = extend(copy.deepcopy(model).layers)
    lossfn = extend(nn.CrossEntropyLoss(reduction="sum"))  # sum: SumGradSquared gives Σₙ gₙ²; /N below
    ext, attr = (DiagGGNExact, "diag_ggn_exact") if kind == "true" else (SumGradSquared, "sum_grad_squared")

    def run() -> dict[str, torch.Tensor]:
        seq.zero_grad(set_to_none=True)
        loss = lossfn(seq(x), y)
        with backpack(ext()):
            loss.backward()
        return {f"layers.{k}": getattr(p, attr) / len(x) for k, p in seq.named_parameters()}

    return run


def max_rel(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max()) for k in b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    device_arg(ap)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=9, help="timed calls of each method (default 9, as recorded)")
    ap.add_argument("--no-naive", action="store_true", help="skip the slow naive loop")
    threads_arg(ap)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/fisher-<device>.json)")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {args.repeats}")
    device = pick_device(args.device)
    set_threads(args.threads)

    torch.manual_seed(0)
    data = load_mnist()
    x, y = data.train_x[: args.samples].to(device), data.train_y[: args.samples].to(device)
    model = MLP(784, (400, 400), 10).to(device).eval()

    methods: dict[str, dict[str, Callable[[], dict]]] = {}
    for kind in ("true", "empirical"):
        methods[kind] = {
            "cl_utils": lambda kind=kind: fisher_diagonal(model, x, y, kind=kind),  # default batch_size
            "cl_utils, one batch": lambda kind=kind: fisher_diagonal(model, x, y, kind=kind, batch_size=len(x)),
            "backpack": backpack_fn(model, x, y, kind),
        }
        if kind == "empirical":
            methods[kind]["vmap"] = lambda: vmap_empirical(model, x, y)
        if not args.no_naive:
            methods[kind]["naive loop"] = lambda kind=kind: naive(model, x, y, kind)

    times: dict[tuple[str, str], list[tuple[float, float]]] = {}

    def run(kind: str, name: str) -> dict[str, torch.Tensor]:
        out = {}
        times.setdefault((kind, name), []).append(timed(lambda: out.update(result=methods[kind][name]()), device))
        return out["result"]

    for kind, fns in methods.items():
        ref = fns["backpack"]()
        for name, fn in fns.items():
            # warm-up and agreement check; the naive loop takes seconds per call, so its one run is also its time
            result = run(kind, name) if name == "naive loop" else fn()
            err = max_rel(result, ref)
            assert err < 1e-3, f"{kind}/{name} disagrees with BackPACK: max relative difference {err:.2e}"
    for r in range(args.repeats):
        for kind, fns in methods.items():
            for name in fns:
                if name != "naive loop" or (r < 2 and times[(kind, name)][0][0] < 5):  # repeat the loop when short
                    run(kind, name)

    rows = []
    for kind in methods:
        best = {name: min(w for w, _ in times[(kind, name)]) for name in methods[kind]}
        for name in methods[kind]:
            wall = [w for w, _ in times[(kind, name)]]
            rows.append(dict(
                kind=kind, method=name, seconds=round(best[name], 5),  # the best run (what the appendix plots)
                median_seconds=round(statistics.median(wall), 5), all_seconds=[round(w, 5) for w in wall],
                cpu_seconds=[round(c, 5) for _, c in times[(kind, name)]],
                ratio_vs_backpack=round(best[name] / best["backpack"], 3),
                speedup_vs_naive=round(best["naive loop"] / best[name], 1) if "naive loop" in best else None,
            ))
    goals = {}  # for the default call; None where the naive loop was not run
    for kind in methods:
        cl = next(r for r in rows if r["kind"] == kind and r["method"] == "cl_utils")
        speedup = cl["speedup_vs_naive"]
        goals[kind] = dict(vs_backpack=cl["ratio_vs_backpack"] <= GOALS["max_ratio_vs_backpack"],
                           vs_naive=None if speedup is None else speedup >= GOALS["min_speedup_vs_naive"])
    default_batch = inspect.signature(fisher_diagonal).parameters["batch_size"].default
    path = record("fisher", device, dict(
        model="MLP 784-400-400-10, float32", samples=len(x), repeats=args.repeats, threads=torch.get_num_threads(),
        default_batch_size=default_batch, rows=rows, goals=GOALS, goals_met=goals,
    ), args.out)

    print(f"{device_name(device)}, torch {torch.__version__}, {len(x)} samples, best of {args.repeats}; "
          f"cl_utils: default batch_size={default_batch}")
    print(f"{'kind':<10} {'method':<20} {'seconds':>9} {'× BackPACK':>11} {'naive ÷ this':>13}")
    for row in rows:
        s = row["speedup_vs_naive"]
        speedup = "–" if s is None else f"{s:.{0 if s >= 10 else 1}f}×"
        print(f"{row['kind']:<10} {row['method']:<20} {row['seconds']:>9.4f} {row['ratio_vs_backpack']:>11.2f} "
              f"{speedup:>13}")
    word = {True: "met", False: "NOT met", None: "not measured"}
    for kind, g in goals.items():
        print(f"goals for {kind:<9}: ≤ {GOALS['max_ratio_vs_backpack']}× BackPACK {word[g['vs_backpack']]}; "
              f"≥ {GOALS['min_speedup_vs_naive']:.0f}× the naive loop {word[g['vs_naive']]}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
