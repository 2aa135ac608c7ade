"""The named experiments behind ``python -m cl_utils reproduce NAME``.

A chapter and the command line call the same function here, so the book's tables and ``reproduce`` print the
same numbers. Each experiment takes the sizes (:class:`cl_utils.config.Config`), a number of seeds, a device and
a progress flag, and returns an :class:`ExperimentResult`: plain data (JSON-ready) plus the table as text.
Register a new one with the :func:`experiment` decorator.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .checks import positive_int
from .config import Config, get_config
from .devices import as_device

__all__ = ["Experiment", "ExperimentResult", "EXPERIMENTS", "experiment", "reproduce", "format_table", "mean_std"]


@dataclass
class ExperimentResult:
    """An experiment's outcome: ``data`` (JSON-serialisable) and ``table`` (the same numbers as text)."""

    name: str
    table: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"experiment": self.name, **self.data}, indent=2)

    def __str__(self) -> str:
        return self.table


@dataclass(frozen=True)
class Experiment:
    """A named experiment: ``run(cfg, *, seeds, device, progress)``; ``default_seeds(cfg)`` gives the number of
    seeds when none is asked for (None: ``cfg.seeds``)."""

    name: str
    description: str
    run: Callable[..., ExperimentResult]
    default_seeds: Callable[[Config], int] | None = None

    def seeds_for(self, cfg: Config) -> int:
        """The number of seeds run without an explicit one (what the book shows in full mode)."""
        return self.default_seeds(cfg) if self.default_seeds else cfg.seeds


EXPERIMENTS: dict[str, Experiment] = {}


def experiment(
    name: str, description: str, *, default_seeds: Callable[[Config], int] | None = None
) -> Callable[[Callable[..., ExperimentResult]], Callable[..., ExperimentResult]]:
    """Register ``fn(cfg, *, seeds, device, progress) -> ExperimentResult`` under ``name``.

    ``default_seeds(cfg)``: the number of seeds without ``--seeds``, where it is not ``cfg.seeds`` (so that the
    book and the command line print the same table by default)."""

    def register(fn: Callable[..., ExperimentResult]) -> Callable[..., ExperimentResult]:
        if name in EXPERIMENTS:
            raise ValueError(f"experiment {name!r} is registered twice")
        EXPERIMENTS[name] = Experiment(name, description, fn, default_seeds)
        return fn

    return register


def reproduce(
    name: str,
    *,
    fast: bool | None = None,
    seeds: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> ExperimentResult:
    """Run the experiment ``name`` with the full or fast sizes (``fast=None`` follows ``CL_FAST``).

    ``seeds`` overrides the number of seeds of the chosen sizes (``cfg.seeds``, or the experiment's own
    ``default_seeds(cfg)`` where it sets one); ``device`` defaults to the best available.
    """
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {sorted(EXPERIMENTS)}")
    cfg = get_config(fast)
    if seeds is not None and (not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1):
        raise ValueError(f"seeds must be a positive integer, got {seeds!r}")
    from .training import default_device

    try:
        dev = torch.device(device) if device is not None else default_device()
    except RuntimeError as e:
        raise ValueError(f"bad device {device!r}: {e}") from None
    start = time.perf_counter()
    seeds = seeds or EXPERIMENTS[name].seeds_for(cfg)
    result = EXPERIMENTS[name].run(cfg, seeds=seeds, device=dev, progress=progress)
    result.data.setdefault("fast", cfg.fast)
    result.data.setdefault("device", str(dev))
    result.data.setdefault("seconds", round(time.perf_counter() - start, 2))
    return result


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if len(values) == 0:
        raise ValueError("mean_std needs at least one value")
    m = sum(values) / len(values)
    if len(values) == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table (markdown pipe syntax) of ``rows``; floats printed with 2 decimals."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    cells = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


# ----------------------------------------------------------------------------------------------- foundations


@experiment("mnist-mlp", "The 784-400-400-10 MLP on MNIST with Adam: test accuracy per seed (the library's "
                        "learning check; no chapter's table).")
def mnist_mlp(cfg: Config, *, seeds: int, device: torch.device, progress: bool = True) -> ExperimentResult:
    from .data import Task, load_mnist
    from .models import MLP
    from .training import evaluate, set_seed, train

    data = load_mnist()
    task = Task("mnist", data.train_x, data.train_y, data.test_x, data.test_y).to(device)
    rows = []
    for seed in range(seeds):
        set_seed(seed)
        model = MLP().to(device)
        hist = train(model, task, epochs=cfg.mnist.epochs, batch_size=cfg.mnist.batch_size, lr=cfg.mnist.lr,
                     seed=seed, progress=progress)
        rows.append({"seed": seed, "test accuracy %": 100 * evaluate(model, task)[0],
                     "train seconds": hist["seconds"]})
    m, s = mean_std([r["test accuracy %"] for r in rows])
    table = format_table(rows) + f"\n\nmean test accuracy: {m:.2f} ± {s:.2f} % over {seeds} seed(s), {cfg.mnist.epochs} epoch(s)"
    return ExperimentResult("mnist-mlp", table, {"runs": rows, "mean": m, "std": s, "epochs": cfg.mnist.epochs})


# ------------------------------------------------------------------------------ chapter 1: optimizers on MNIST

#: Learning rates of the optimizer comparison: common defaults (momentum 0.9 makes steps up to 10× larger, hence
#: its smaller rate; Adadelta's 1.0 is the paper's unit-free choice).
OPTIMIZER_LRS = {"sgd": 0.1, "momentum": 0.02, "nesterov": 0.02, "adam": 1e-3, "adadelta": 1.0}


@experiment("optimizers-mnist", "SGD, momentum, Nesterov, Adam and Adadelta training one MLP on MNIST (chapter 1).",
            default_seeds=lambda cfg: 1)
def optimizers_mnist(cfg: Config, *, seeds: int, device: torch.device, progress: bool = True) -> ExperimentResult:
    from .data import Task, load_mnist
    from .models import MLP
    from .training import evaluate, set_seed, train

    sizes = cfg.foundations
    data = load_mnist()
    task = Task("mnist", data.train_x, data.train_y, data.test_x, data.test_y)
    if sizes.opt_train is not None:
        task = task.subset(sizes.opt_train, seed=0)
    task = task.to(device)
    rows, curves = [], {}
    for name, lr in OPTIMIZER_LRS.items():
        accs, losses, secs = [], [], []
        for seed in range(seeds):
            set_seed(seed)  # the same initial weights and minibatch order for every optimizer
            model = MLP(hidden=sizes.opt_hidden).to(device)
            hist = train(model, task, epochs=sizes.opt_epochs, batch_size=sizes.opt_batch_size, lr=lr,
                         optimizer=name, seed=seed, progress=progress)
            accs.append(100 * evaluate(model, task)[0])
            losses.append(hist["loss"])
            secs.append(hist["seconds"])
        curve = torch.stack(losses).mean(0)
        curves[name] = curve.tolist()
        m, s = mean_std(accs)
        row = {"optimizer": name, "lr": f"{lr:g}", "final loss": float(curve[-50:].mean()), "test acc. %": m}
        if seeds > 1:  # a spread over one seed would always print 0.00
            row["± std"] = s
        rows.append({**row, "seconds": sum(secs) / len(secs)})
    n = len(task.train_y)
    table = format_table(rows) + (f"\n\nMLP 784-{'-'.join(map(str, sizes.opt_hidden))}-10, {n} training images, "
                                  f"{sizes.opt_epochs} epoch(s), batch {sizes.opt_batch_size}, {seeds} seed(s).\n"
                                  "final loss: mean of the last 50 minibatch losses"
                                  + ("; ± std: over seeds" if seeds > 1 else "") + "; seconds: training time per run")
    return ExperimentResult("optimizers-mnist", table, {"runs": rows, "loss_curves": curves, "n_train": n})


# ------------------------------------------------------------- chapter 6: variational weight noise (Graves 2011)

#: Graves (2011), "Practical variational inference for neural networks", NIPS 24, Table 1: a hierarchical
#: multidimensional recurrent network on the TIMIT speech corpus. ``error``: phoneme error rate (%) on the test set;
#: ``epochs``: training epochs to the early-stopping point; ``ratio``: compression ratio, quoted here for the two
#: adaptive weight-noise rows (None: not quoted). Rows in the paper's order, with the fixed prior and noise values.
GRAVES_2011_TABLE: tuple[dict[str, Any], ...] = (
    {"row": "Adaptive L1", "error": 49.0, "epochs": 7, "ratio": None},
    {"row": "Adaptive L2", "error": 35.1, "epochs": 421, "ratio": None},
    {"row": "Adaptive mean L2 (σ² = 0.1)", "error": 28.0, "epochs": 53, "ratio": None},
    {"row": "L2 (μ = 0, σ² = 0.1)", "error": 27.4, "epochs": 59, "ratio": None},
    {"row": "Maximum likelihood", "error": 27.1, "epochs": 44, "ratio": None},
    {"row": "L1 (μ = 0, b = 1/12)", "error": 26.0, "epochs": 545, "ratio": None},
    {"row": "Adaptive mean L1 (b = 1/12)", "error": 25.4, "epochs": 765, "ratio": None},
    {"row": "Weight noise (σᵢ = 0.075)", "error": 25.4, "epochs": 220, "ratio": None},
    {"row": "Adaptive prior weight noise", "error": 24.7, "epochs": 260, "ratio": 0.542},
    {"row": "Adaptive weight noise", "error": 23.8, "epochs": 384, "ratio": 0.286},
)
WEIGHT_NOISE_ROWS: tuple[str, ...] = tuple(r["row"] for r in GRAVES_2011_TABLE)
GRAVES_SIGMA = 0.075  # the fixed σᵢ of Graves' weight-noise rows
PLAIN_ROW = "Maximum likelihood"  # the plain network, whose description length the compression ratio divides by
PRUNE_FRACTIONS: tuple[float, ...] = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99)


def weight_noise_data(sizes: Any, *, seed: int = 0, device: torch.device | str | None = None) -> tuple[Any, tuple]:
    """The chapter's data: a ``Task`` (``sizes.n_train`` training digits, ``sizes.n_test`` test digits) and the
    validation pair ``(x, y)`` (``sizes.n_val`` further training digits, disjoint from the training ones)."""
    from .data import Task, load_mnist

    data = load_mnist()
    if sizes.n_train + sizes.n_val > len(data.train_y):
        raise ValueError(f"n_train + n_val must be at most {len(data.train_y)}, got {sizes.n_train + sizes.n_val}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(data.train_y), generator=g)
    tr, va = perm[: sizes.n_train], perm[sizes.n_train : sizes.n_train + sizes.n_val]
    te = torch.randperm(len(data.test_y), generator=g)[: sizes.n_test].sort().values
    dev = as_device(device)
    task = Task("mnist", data.train_x[tr], data.train_y[tr], data.test_x[te], data.test_y[te]).to(dev)
    return task, (data.train_x[va].to(dev), data.train_y[va].to(dev))


def html_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """The rows of :func:`format_table` as an HTML table (floats with 2 decimals), for a notebook's output cell."""
    import html

    if not rows:
        return "<p>(no rows)</p>"
    columns = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        return html.escape(f"{v:.2f}" if isinstance(v, float) else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in columns) + "</tr>" for r in rows)
    return (f'<table class="table" style="font-size: 0.8em"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def weight_noise_variant(row: str, base: torch.nn.Module, *, init_var: float = GRAVES_SIGMA**2) -> tuple[Any, Any]:
    """The model and prior of one row of Graves' table, starting from the point-estimate network ``base``.

    Rows 1-7 keep ``base``'s point estimates (a delta posterior; a copy); rows 8-10 make it variational
    (Gaussian posterior): fixed σᵢ = :data:`GRAVES_SIGMA` = 0.075 without a prior, fixed σᵢ = 0.075 with an
    adaptive Gaussian prior (the two rows are named after Graves' value, so ``init_var`` does not change them),
    and learned σᵢ, starting from σᵢ² = ``init_var``, with an adaptive Gaussian prior. Returns
    ``(model, prior or None)``.
    """
    import copy

    from . import variational as V

    if row not in WEIGHT_NOISE_ROWS:
        raise ValueError(f"unknown row {row!r}; choose one of {WEIGHT_NOISE_ROWS}")
    point = copy.deepcopy(base)
    fixed_noise = lambda: V.make_variational(base, init_var=GRAVES_SIGMA**2, learn_var=False)  # noqa: E731
    return {
        "Adaptive L1": lambda: (point, V.LaplacePrior(adaptive=True)),
        "Adaptive L2": lambda: (point, V.GaussianPrior(adaptive=True)),
        "Adaptive mean L2 (σ² = 0.1)": lambda: (point, V.GaussianPrior(0.0, 0.1, adapt_mean=True)),
        "L2 (μ = 0, σ² = 0.1)": lambda: (point, V.GaussianPrior(0.0, 0.1)),
        "Maximum likelihood": lambda: (point, None),
        "L1 (μ = 0, b = 1/12)": lambda: (point, V.LaplacePrior(0.0, 1 / 12)),
        "Adaptive mean L1 (b = 1/12)": lambda: (point, V.LaplacePrior(0.0, 1 / 12, adapt_mean=True)),
        "Weight noise (σᵢ = 0.075)": lambda: (fixed_noise(), None),
        "Adaptive prior weight noise": lambda: (fixed_noise(), V.GaussianPrior(adaptive=True)),
        "Adaptive weight noise": lambda: (V.make_variational(base, init_var=init_var), V.GaussianPrior(adaptive=True)),
    }[row]()


def compression(model: torch.nn.Module, prior: Any, x: torch.Tensor, y: torch.Tensor, *, samples: int = 1,
                plain_bits: float | None = None) -> dict:
    """The description length DL of the labels ``y`` given ``x`` under the model, in bits, and its ratios.

    Gaussian posterior: bits-back, DL = (L^E + KL(Q ‖ P))/ln 2, L^E estimated with ``samples`` draws. Point estimate:
    the best two-part code (:func:`cl_utils.variational.two_part_length`: weights rounded to a power-of-two
    precision and sent with the prior, then the labels with the rounded network). A model trained without a prior
    is coded with the Gaussian prior fitted to it in closed form.

    Returns ``bits`` (DL), ``error_bits`` and ``complexity_bits`` (its two parts), ``code``, ``bits_per_label``
    (DL/N), ``uniform_ratio`` = DL/(N log₂ 10) (against sending each of the N labels uniformly, without a network)
    and, with ``plain_bits`` given (the DL of the plain network, see :func:`weight_noise_table`),
    ``ratio`` = DL / ``plain_bits``.
    """
    from . import variational as V

    if plain_bits is not None and not (isinstance(plain_bits, (int, float)) and math.isfinite(plain_bits)
                                       and plain_bits > 0):
        raise ValueError(f"plain_bits must be a finite number of bits > 0, got {plain_bits!r}")

    p = prior if prior is not None else V.GaussianPrior(adaptive=True).fit(model)
    if V.is_variational(model):
        dl = V.description_length(model, p, x, y, samples)
        bits, code = dl["total_bits"], "bits-back"
        parts = {"error_bits": dl["error_nats"] / math.log(2), "complexity_bits": dl["complexity_nats"] / math.log(2)}
    else:
        tp = V.two_part_length(model, p, x, y)
        exponent = str(round(math.log2(tp["precision"]))).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))
        bits, code = tp["total_bits"], f"two-part, δ = 2{exponent}"
        parts = {"error_bits": tp["error_bits"], "complexity_bits": tp["complexity_bits"]}
    out = {"bits": bits, "bits_per_label": bits / len(y), "uniform_ratio": bits / (len(y) * math.log2(10)),
           "code": code, **parts}
    if plain_bits is not None:
        out["ratio"] = bits / plain_bits
    return out


def weight_noise_table(
    sizes: Any,
    *,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
    rows: Sequence[str] = WEIGHT_NOISE_ROWS,
) -> dict[str, Any]:
    """Train one MLP per row of Graves' (2011) table on MNIST and measure error, epochs and compression ratio.

    Every row starts from the same initial weights and the same random state (``set_seed(seed)`` before each row)
    and sees the same minibatches, so a row's numbers do not depend on which other rows are trained. All train
    with Adadelta (lr 1) on L^E + L^C, the prior re-estimated at every step, and stop early on the validation error
    (``sizes.patience`` epochs without a strictly lower error, at most ``sizes.max_epochs``; the best epoch's
    network is kept and its epoch reported; ``capped`` says that the epoch cap came before the criterion, so that the
    epochs are a lower bound). Test error: the mean network on the test digits.

    Compression (see :func:`compression`): ``ratio`` = DL(row) / DL(plain network), where the plain network is the
    maximum-likelihood row's network and its DL the best two-part code with the Gaussian prior fitted to it in
    closed form: what sending the labels with the plain network costs, its weights included (the
    maximum-likelihood row is trained for this even when ``rows`` leaves it out; its ratio is 1 by construction).
    ``uniform_ratio``: DL(row) / (N log₂ 10).

    Returns ``rows`` (plain data, one dict per row), ``models`` (row → trained model, for pruning and plots),
    ``pruning`` (test error vs pruned fraction: SNR pruning of adaptive weight noise if trained, magnitude pruning
    of maximum likelihood), ``plain_bits`` and the sizes used.
    """
    from . import variational as V
    from .models import MLP
    from .training import set_seed

    rows = list(rows)
    if not rows or any(r not in WEIGHT_NOISE_ROWS for r in rows):
        raise ValueError(f"rows must be a non-empty selection of {WEIGHT_NOISE_ROWS}, got {rows!r}")
    task, val = weight_noise_data(sizes, device=device)
    set_seed(seed)
    base = MLP(784, sizes.hidden, 10).to(task.device)
    trained: dict[str, tuple[Any, dict, float, dict]] = {}
    for row in dict.fromkeys(rows + [PLAIN_ROW]):  # the requested rows, then the plain network if not among them
        set_seed(seed)  # every row from the same random state: the same noise draws, whatever rows came before
        model, prior = weight_noise_variant(row, base, init_var=sizes.init_var)
        hist = V.train_variational(model, task, prior=prior, epochs=sizes.max_epochs, batch_size=sizes.batch_size,
                                   samples=sizes.samples, val=val, patience=sizes.patience, seed=seed,
                                   progress=progress)
        test_error = 100 * V.error_rate(model, task.test_x, task.test_y)
        code = compression(model, prior, task.train_x, task.train_y, samples=sizes.dl_samples)
        trained[row] = (model, hist, test_error, code)
    plain_bits = trained[PLAIN_ROW][3]["bits"]
    out_rows, models = [], {}
    for row in rows:
        model, hist, test_error, code = trained[row]
        out_rows.append({"row": row, "error": test_error, "epochs": hist["best_epoch"],
                         "epochs_run": hist["epochs_run"],
                         # the cap came first: no `patience` epochs without a new best, so "epochs" is a lower bound
                         "capped": hist["epochs_run"] - hist["best_epoch"] < sizes.patience,
                         "val_error": [100 * e for e in hist["val_error"]],
                         "prior": hist["prior"], "seconds": hist["seconds"], **code,
                         "ratio": code["bits"] / plain_bits})
        models[row] = model
    pruning = {}
    if "Adaptive weight noise" in models:
        pruning["snr"] = V.pruning_curve(models["Adaptive weight noise"], task.test_x, task.test_y, PRUNE_FRACTIONS)
    pruning["magnitude"] = V.pruning_curve(trained[PLAIN_ROW][0], task.test_x, task.test_y, PRUNE_FRACTIONS,
                                           score="magnitude")
    return {"rows": out_rows, "models": models, "pruning": pruning, "seed": seed, "plain_bits": plain_bits,
            "mlp": f"784-{'-'.join(map(str, sizes.hidden))}-10", "n_train": len(task.train_y), "n_val": len(val[1]),
            "n_test": len(task.test_y)}


def _ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n (1: smallest), ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson(a: Sequence[float], b: Sequence[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va, vb = sum((x - ma) ** 2 for x in a), sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else float("nan")


def weight_noise_summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Ours next to Graves' (2011): mean (± std over runs) per row, ranks, and the rank correlation of the errors."""
    if not runs:
        raise ValueError("weight_noise_summary needs at least one run")
    names = [r["row"] for r in runs[0]["rows"]]
    graves = {g["row"]: g for g in GRAVES_2011_TABLE}
    table = []
    for i, name in enumerate(names):
        err = mean_std([run["rows"][i]["error"] for run in runs])
        ep = mean_std([float(run["rows"][i]["epochs"]) for run in runs])
        ratio = mean_std([run["rows"][i]["ratio"] for run in runs])
        uniform = mean_std([run["rows"][i]["uniform_ratio"] for run in runs])
        capped = sum(bool(run["rows"][i]["capped"]) for run in runs)
        table.append({"row": name, "error %": err[0], "error std": err[1], "epochs": ep[0], "capped": capped,
                      "ratio": ratio[0],
                      "uniform ratio": uniform[0], "code": runs[0]["rows"][i]["code"],
                      "Graves error %": graves[name]["error"],
                      "Graves epochs": graves[name]["epochs"], "Graves ratio": graves[name]["ratio"]})
    ours = [r["error %"] for r in table]
    theirs = [r["Graves error %"] for r in table]
    ra, rb = _ranks(ours), _ranks(theirs)
    for r, a, b in zip(table, ra, rb):
        r["rank"], r["Graves rank"] = a, b
    rho = _pearson(ra, rb) if len(table) > 2 else float("nan")  # Spearman's ρ: Pearson's r of the ranks
    return {"rows": table, "spearman_error": rho, "runs": len(runs)}


def weight_noise_table_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """The summary's rows as text cells (ours, then Graves'), as printed by ``reproduce`` and shown in the book."""
    def num(v: Any, fmt: str) -> str:
        return "—" if v is None else format(v, fmt)

    several = summary["runs"] > 1

    def epochs(r: dict[str, Any]) -> str:
        text = f"{r['epochs']:.0f}" if not several else f"{r['epochs']:.1f}"
        if r["capped"]:  # the epoch cap came before the stopping criterion: a lower bound
            text += f" (cap: {r['capped']}/{summary['runs']})"
        return text

    return [{
        "row": r["row"],
        "error %": f"{r['error %']:.2f}" + (f" ± {r['error std']:.2f}" if several else ""),
        "rank": f"{r['rank']:g}",
        "epochs": epochs(r),
        "ratio": f"{r['ratio']:.3f}",
        "vs uniform": f"{r['uniform ratio']:.3f}",
        "code": r["code"],
        "Graves error %": num(r["Graves error %"], ".1f"),
        "Graves rank": f"{r['Graves rank']:g}",
        "Graves epochs": num(r["Graves epochs"], "d"),
        "Graves ratio": num(r["Graves ratio"], ".3f"),
    } for r in summary["rows"]]


def format_weight_noise_table(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table (ours | Graves), the same cells in the book and on the command line."""
    return format_table(weight_noise_table_rows(summary))


def weight_noise_grid(
    variances: Sequence[float],
    task: Any,
    *,
    hidden: Sequence[int] = (100,),
    epochs: int = 8,
    batch_size: int = 100,
    seed: int = 0,
    progress: bool = True,
    snr_edges: Sequence[float] = tuple(x / 4 for x in range(-12, 13)),
) -> dict[str, Any]:
    """Fixed weight noise σᵢ² = σ² for each σ² in ``variances``: train an MLP and measure errors and SNRs.

    For every σ² independently: ``set_seed(seed)``, an MLP ``784-hidden-10`` made variational with σᵢ² = σ² fixed
    (no prior), trained with Adadelta for ``epochs`` epochs (no early stopping) on ``task``'s training split with
    the minibatch order of ``seed``. Each grid point depends only on (σ², the arguments), so the points can be
    computed in any order or in parallel.

    Returns plain data, lists aligned with ``variances``: ``train_error`` and ``test_error`` (% of the mean
    network), ``noisy_train_error`` (% with one weight sample per digit), ``snr_median``, ``snr_hist`` (fraction
    of weights per bin of log₁₀ |μ|/σ, edges ``snr_edges``, outliers in the end bins) and ``seconds`` (each
    point's share of the training time: the K points train at once, see :func:`cl_utils.sweeps.weight_noise_sweep`).
    """
    from . import variational as V
    from .sweeps import weight_noise_sweep

    variances = [float(v) for v in variances]
    if not variances or any(not (v > 0) for v in variances):
        raise ValueError(f"variances must be a non-empty list of numbers > 0, got {variances!r}")
    edges = torch.tensor(snr_edges, dtype=torch.float64)
    out: dict[str, Any] = {"variances": variances, "train_error": [], "test_error": [], "noisy_train_error": [],
                           "snr_median": [], "snr_hist": [], "snr_edges": list(snr_edges), "seconds": []}
    # All grid points train at once (cl_utils.sweeps; equal to the separate runs up to float rounding).
    sweep = weight_noise_sweep(variances, task, hidden=hidden, epochs=epochs, batch_size=batch_size, seed=seed,
                               progress=progress)
    for var, model in zip(variances, sweep.models):
        sweep.restore_rng()  # the sampled error below draws the noise that a separate run would draw
        s = torch.cat([t.flatten() for t in V.snr(model).values()]).double().cpu()
        logs = s.clamp_min(1e-300).log10().clamp(edges[0] + 1e-9, edges[-1] - 1e-9)
        counts = torch.histogram(logs, bins=edges).hist
        out["train_error"].append(100 * V.error_rate(model, task.train_x, task.train_y))
        out["test_error"].append(100 * V.error_rate(model, task.test_x, task.test_y))
        out["noisy_train_error"].append(100 * V.error_rate(model, task.train_x, task.train_y, sampled=True))
        out["snr_median"].append(float(s.median()))
        out["snr_hist"].append((counts / counts.sum()).tolist())
        out["seconds"].append(sweep.seconds / len(variances))
    return out


@experiment("weight-noise-table",
            "Graves' (2011) ten regularisers on MNIST: error %, epochs, compression ratio; SNR pruning (chapter 6).")
def weight_noise_table_experiment(cfg: Config, *, seeds: int, device: torch.device,
                                  progress: bool = True) -> ExperimentResult:
    sizes = cfg.weight_noise
    runs = [weight_noise_table(sizes, seed=s, device=device, progress=progress) for s in range(seeds)]
    summary = weight_noise_summary(runs)
    prune_rows = [{"pruned %": f"{100 * f:g}", "SNR-pruned adaptive weight noise, error %": a,
                   "magnitude-pruned maximum likelihood, error %": b}
                  for f, a, b in zip(PRUNE_FRACTIONS, runs[0]["pruning"]["snr"]["error"],
                                     runs[0]["pruning"]["magnitude"]["error"])]
    r0 = runs[0]
    text = (format_weight_noise_table(summary)
            + f"\n\nMLP {r0['mlp']} on MNIST: {r0['n_train']} training, {r0['n_val']} validation, {r0['n_test']} test "
            f"digits; Adadelta, batch {sizes.batch_size}, early stopping (patience {sizes.patience}, at most "
            f"{sizes.max_epochs} epochs; \"cap: k/n\": in k of the n seeds the cap came first, so the epochs are a "
            f"lower bound); {seeds} seed(s). Error: test error of the mean network. Ratio: description "
            "length DL of the training labels / DL with the plain (maximum-likelihood) network, two-part code; "
            "vs uniform: DL / (N log2 10). Graves (2011): TIMIT phoneme error rates."
            f"\nSpearman rank correlation of the errors with Graves': {summary['spearman_error']:.2f}"
            f"\n\nPruning (seed 0):\n" + format_table(prune_rows))
    data = {"summary": summary, "pruning": r0["pruning"], "mlp": r0["mlp"], "n_train": r0["n_train"],
            "runs": [run["rows"] for run in runs]}
    return ExperimentResult("weight-noise-table", text, data)


# ----------------------------------------------------------- chapter 5: forgetting and EWC (split / permuted MNIST)

#: Hsu, Liu, Ramasamy and Kira (2018), "Re-evaluating continual learning scenarios: a categorization and case for
#: strong baselines" (NeurIPS Continual Learning workshop), Table 2: split MNIST (five digit pairs), MLP 2×400,
#: 4 epochs per task, batch 128; final average test accuracy (%) over the five tasks, mean of 10 runs.
HSU_2018_SPLIT_MNIST: dict[str, dict[str, float]] = {
    "Adam": {"task": 93.46, "domain": 55.16, "class": 19.71},
    "SGD": {"task": 97.98, "domain": 63.20, "class": 19.46},
    "L2": {"task": 98.18, "domain": 66.00, "class": 22.52},
    "EWC": {"task": 97.70, "domain": 58.85, "class": 19.80},
    "Online EWC": {"task": 98.04, "domain": 57.33, "class": 19.77},
    "Offline": {"task": 99.52, "domain": 98.59, "class": 97.53},
}
#: Their regularisation strengths c (``--reg_coef`` in the scripts of github.com/GT-RIPL/Continual-Learning-Benchmark):
#: penalty c Σ F (θ − θ*)², without the ½, and F from the model's most probable label (per sample, all of a task's
#: training digits). With the same F our λ would be 2c.
HSU_2018_REG_COEF: dict[str, dict[str, float]] = {
    "L2": {"task": 0.01, "domain": 0.5, "class": 100.0},
    "EWC": {"task": 100.0, "domain": 100.0, "class": 600.0},
    "Online EWC": {"task": 400.0, "domain": 700.0, "class": 100.0},
}
#: Learning rate of plain SGD (no momentum) in the split-MNIST table: Hsu et al.'s value.
SPLIT_SGD_LR = 0.01
SPLIT_METHODS = ("Adam", "SGD", "L2", "EWC", "Online EWC", "Offline")
PERMUTED_METHODS = ("Adam", "L2", "EWC", "Online EWC", "Offline")
REGULARIZED = ("L2", "EWC", "Online EWC")
#: Our λ (with the ½; true Fisher averaged over 2,000 training digits of the task; mean loss), chosen by the
#: validation search ``python -m cl_utils reproduce ewc-lambda-search`` (one seed by default): the best final average
#: accuracy on 10 % of each task's training digits held out (seed 100, full sizes) over LAMBDA_SEARCH_GRID. Its
#: validation accuracies are LAMBDA_SEARCH_SCORES; every chosen λ lies inside the grid (the optimum is bracketed).
SPLIT_MNIST_LAMBDA: dict[str, dict[str, float]] = {
    "L2": {"task": 0.01, "domain": 100.0, "class": 100.0},
    "EWC": {"task": 1e3, "domain": 1e7, "class": 1e8},
    "Online EWC": {"task": 1e3, "domain": 1e7, "class": 1e8},
}
PERMUTED_MNIST_LAMBDA: dict[str, float] = {"L2": 0.01, "EWC": 100.0, "Online EWC": 100.0}
#: What our λ multiplies (said wherever λ is shown, since other libraries differ).
LAMBDA_CONVENTION = ("the penalty is (λ/2) Σᵢ Fᵢ (θᵢ − θ*ᵢ)² (L2: Fᵢ = 1), with the ½, F the true Fisher averaged "
                     "(not summed) over samples, added to the mean loss of the current task.")
LAMBDA_SEARCH_GRID: dict[str, tuple[float, ...]] = {
    "L2": (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3),
    "EWC": (1.0, 10.0, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9),
    "Online EWC": (1.0, 10.0, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9),
}
#: The recorded result of ``python -m cl_utils reproduce ewc-lambda-search`` (full sizes, one seed: 100; CPU;
#: 108 runs, 60 min on two CPU cores shared with another job, about 15 min on free ones at ~10 s per split-MNIST
#: run). ``LAMBDA_SEARCH_SCORES[scenario][method][k]`` is the validation final average accuracy (%) with
#: λ = ``LAMBDA_SEARCH_GRID[method][k]``; the tables' λ (SPLIT_MNIST_LAMBDA, PERMUTED_MNIST_LAMBDA) are the argmax of
#: each row, all inside the grid. With one seed, neighbouring λ in the domain- and class-incremental rows differ by a
#: few points of noise.
LAMBDA_SEARCH_SCORES: dict[str, dict[str, tuple[float, ...]]] = {
    "task": {
        "L2": (95.18, 98.04, 97.95, 92.08, 73.12, 62.05, 61.93),
        "EWC": (93.44, 96.56, 97.96, 99.14, 98.97, 98.39, 98.41, 97.78, 97.74, 97.59),
        "Online EWC": (93.68, 96.86, 98.09, 99.07, 99.01, 98.65, 98.12, 98.41, 97.82, 97.63),
    },
    "domain": {
        "L2": (61.08, 58.89, 61.65, 60.59, 50.42, 62.05, 59.94),
        "EWC": (56.95, 59.29, 63.15, 60.69, 67.68, 71.81, 74.80, 77.72, 76.50, 75.33),
        "Online EWC": (57.51, 59.62, 63.93, 62.65, 69.32, 70.14, 74.52, 79.12, 74.22, 75.53),
    },
    "class": {
        "L2": (19.76, 19.73, 19.53, 16.98, 16.85, 25.77, 19.94),
        "EWC": (19.83, 19.90, 19.88, 19.85, 19.78, 20.90, 20.34, 25.54, 29.12, 17.76),
        "Online EWC": (19.81, 19.83, 19.71, 19.83, 21.59, 20.02, 19.46, 25.90, 27.22, 17.19),
    },
    "permuted": {
        "L2": (83.30, 85.80, 78.50, 53.23, 29.85, 28.18, 27.89),
        "EWC": (84.13, 85.94, 86.97, 81.22, 74.09, 67.13, 57.96, 61.64, 60.16, 53.23),
        "Online EWC": (84.78, 85.01, 88.37, 81.89, 69.62, 67.21, 57.13, 61.67, 60.06, 53.21),
    },
}


def continual_strategy(method: str, lam: float | None = None, *, fisher_samples: int | None = None) -> Any:
    """The ``run_sequence`` strategy of a method of the tables: None (fine-tuning) or a penalty object.

    ``"L2"``: (λ/2)‖θ − θ*‖² anchored at the parameters after the previous task (as in Hsu et al.'s code);
    ``"EWC"``: one penalty per task (true Fisher); ``"Online EWC"``: one accumulated penalty (γ = 1).
    """
    from .ewc import EWC, L2Anchor

    if method in ("Adam", "SGD", "Offline"):
        return None
    if method not in REGULARIZED:
        raise ValueError(f"unknown method {method!r}; choose one of {SPLIT_METHODS}")
    if lam is None:
        raise ValueError(f"method {method!r} needs a λ")
    if method == "L2":
        return L2Anchor(lam, mode="online", gamma=0.0)
    return EWC(lam, mode="separate" if method == "EWC" else "online", fisher_samples=fisher_samples)


def run_method(
    method: str,
    tasks: Sequence[Any],
    *,
    seed: int,
    lam: float | None = None,
    hidden: Sequence[int] = (400, 400),
    epochs: int = 4,
    batch_size: int = 128,
    lr: float = 1e-3,
    sgd_lr: float = SPLIT_SGD_LR,
    fisher_samples: int | None = None,
    eval_every: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a fresh MLP (initialised from ``seed``) on ``tasks`` with one method of the tables.

    Sequential methods return ``accuracy``, the T×T matrix R (in %, R[i, j]: task j after training on task i);
    ``"Offline"`` (joint training on all tasks at once, the upper bound) returns one row, the final accuracies.
    ``curves`` (with ``eval_every``): the accuracy on every task over all training steps.
    """
    from .models import MLP
    from .training import evaluate, run_sequence, set_seed, train

    if method not in SPLIT_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {SPLIT_METHODS}")
    tasks = list(tasks)
    set_seed(seed)  # the same initial weights for every method
    model = MLP.for_tasks(tasks, hidden).to(tasks[0].device)
    if method == "Offline":
        train(model, tasks, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed * 1000, progress=progress)
        return {"accuracy": [[100 * a for a in evaluate(model, tasks)]]}
    sgd = method == "SGD"
    res = run_sequence(model, tasks, strategy=continual_strategy(method, lam, fisher_samples=fisher_samples),
                       epochs=epochs, batch_size=batch_size, lr=sgd_lr if sgd else lr,
                       optimizer="sgd" if sgd else "adam", seed=seed, progress=progress, eval_every=eval_every)
    out: dict[str, Any] = {"accuracy": (100 * res.accuracy).tolist()}
    if eval_every:
        out["curves"] = sequence_curves(res)
    return out


def sequence_curves(result: Any) -> dict[str, Any]:
    """The accuracies recorded during a ``run_sequence(..., eval_every=k)`` as one curve over all steps.

    Returns ``steps`` (cumulative training steps), ``accuracy`` (rows: evaluations, columns: tasks; in %) and
    ``boundaries`` (the step at which each task's training starts).
    """
    steps, rows, bounds, offset = [], [], [], 0
    for h in result.histories:
        bounds.append(offset)
        if not h["eval_steps"]:
            raise ValueError("the result has no recorded evaluations: run run_sequence with eval_every")
        steps += [offset + s for s in h["eval_steps"]]
        rows += (100 * h["eval_accuracy"]).tolist()
        offset += h["steps"]
    return {"steps": steps, "accuracy": rows, "boundaries": bounds, "names": list(result.names)}


def summarize_runs(mats: Sequence[Sequence[Sequence[float]]]) -> dict[str, Any]:
    """Mean and spread over seeds of accuracy matrices (one per seed, in %).

    ``final_average``: the mean accuracy over all tasks after the last one (mean, std, per seed);
    ``accuracy``: the matrix, mean over seeds and per seed; ``average_accuracy``: the mean accuracy over the tasks
    seen so far after each task (mean and std over seeds; one value for joint training).
    """
    if isinstance(mats, (str, bytes)) or not hasattr(mats, "__len__") or len(mats) == 0:
        raise ValueError("summarize_runs needs a non-empty sequence of accuracy matrices, one per seed")
    from .training import _seen_average

    try:
        R = torch.stack([torch.as_tensor(m, dtype=torch.float64) for m in mats])  # seeds × rows × T
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"the accuracy matrices must be numbers, all of the same shape: {e}") from None
    if R.dim() != 3 or R.shape[2] == 0 or R.shape[1] not in (1, R.shape[2]):
        raise ValueError("each accuracy matrix must be T×T (a sequential run) or 1×T (joint training), got shape "
                         f"{tuple(R.shape[1:])}")
    rows, T = R.shape[1], R.shape[2]
    if rows == T:
        avg = _seen_average(R)  # seeds × T
    else:
        avg = R.mean(2)
    finals = R[:, -1].mean(1).tolist()
    m, s = mean_std(finals)
    return {
        "final_average": {"mean": m, "std": s, "per_seed": finals},
        "accuracy": {"mean": R.mean(0).tolist(), "per_seed": R.tolist()},
        "average_accuracy": {"mean": avg.mean(0).tolist(),
                             "std": (avg.std(0) if len(R) > 1 else torch.zeros(avg.shape[1])).tolist()},
    }


def continual_table(
    tasks: dict[str, Sequence[Any]],
    methods: Sequence[str],
    lambdas: dict[str, dict[str, float]],
    *,
    seeds: int,
    progress: bool = True,
    stacked: bool | None = None,
    **sizes: Any,
) -> dict[str, dict[str, Any]]:
    """Every method on every task sequence (``tasks``: scenario → tasks) for seeds 0..seeds-1.

    ``lambdas[method][scenario]`` gives the λ of the regularised methods; ``sizes`` go to :func:`run_method`.
    Returns ``results[method][scenario]`` = :func:`summarize_runs` plus ``lam`` and ``seconds``.

    With ``stacked=True`` the runs of a scenario train at once (:func:`cl_utils.sweeps.sequence_sweep`): one stacked
    run for the methods that use Adam (fine-tuning, L2, EWC, online EWC; every seed), one for SGD and one for joint
    training; ``seconds`` is then the method's share of its stacked run. Each copy keeps its own initial weights,
    penalty and minibatches, so it computes what the separate :func:`run_method` run computes, but batched products
    round differently and 20 epochs of training amplify that: single final accuracies move by up to a few points
    (within the spread over seeds). ``stacked=None`` (the default) stacks on a GPU, where one batched run replaces
    many small kernel launches, and runs separately on a CPU, where stacking does not pay (the full split-MNIST
    table took 11.9 min stacked and 12.3 min separately on 2 cores).
    """
    positive_int("seeds", seeds)
    unknown = [m for m in methods if m not in SPLIT_METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {SPLIT_METHODS}")
    unknown_sizes = set(sizes) - {"hidden", "epochs", "batch_size", "lr", "sgd_lr", "fisher_samples"}
    if unknown_sizes:
        raise ValueError(f"unknown sizes {sorted(unknown_sizes)} for continual_table")
    results: dict[str, dict[str, Any]] = {m: {} for m in methods}
    if stacked is None:
        first = next((seq[0] for seq in tasks.values() if len(seq)), None)
        stacked = first is not None and first.device.type == "cuda"

    def lam_of(method: str, scenario: str) -> float | None:
        return lambdas.get(method, {}).get(scenario) if method in REGULARIZED else None

    for scenario, seq in tasks.items():
        if not stacked:
            for method in methods:
                start = time.perf_counter()
                mats = [run_method(method, seq, seed=seed, lam=lam_of(method, scenario), progress=progress,
                                   **sizes)["accuracy"] for seed in range(seeds)]
                results[method][scenario] = {**summarize_runs(mats), "lam": lam_of(method, scenario),
                                             "seconds": round(time.perf_counter() - start, 2)}
            continue
        groups = [[m for m in methods if m in ("Adam", *REGULARIZED)], [m for m in methods if m == "SGD"],
                  [m for m in methods if m == "Offline"]]
        for group in (g for g in groups if g):
            runs = [(m, seed) for m in group for seed in range(seeds)]
            start = time.perf_counter()
            mats = _stacked_runs(runs, list(seq), {m: lam_of(m, scenario) for m in group}, progress=progress,
                                 **sizes)
            share = (time.perf_counter() - start) / len(group)
            for m in group:
                results[m][scenario] = {**summarize_runs([mats[(m, seed)] for seed in range(seeds)]),
                                        "lam": lam_of(m, scenario), "seconds": round(share, 2)}
    return {m: {sc: results[m][sc] for sc in tasks} for m in methods}


def _stacked_runs(
    runs: Sequence[tuple[str, int]],
    tasks: list[Any],
    lams: dict[str, float | None],
    *,
    hidden: Sequence[int] = (400, 400),
    epochs: int = 4,
    batch_size: int = 128,
    lr: float = 1e-3,
    sgd_lr: float = SPLIT_SGD_LR,
    fisher_samples: int | None = None,
    progress: bool = True,
) -> dict[tuple[str, int], list[list[float]]]:
    """:func:`run_method` for several (method, seed) pairs of one optimizer in one stacked run: the accuracy
    matrices (in %) by (method, seed)."""
    from .models import MLP
    from .sweeps import evaluate_stacked, sequence_sweep, stack_copies, train_stacked
    from .training import set_seed

    models = []
    for _, seed in runs:
        set_seed(seed)  # the same initial weights as run_method
        models.append(MLP.for_tasks(tasks, hidden).to(tasks[0].device))
    methods = {m for m, _ in runs}
    if methods == {"Offline"}:
        params = stack_copies(models)
        train_stacked(models[0], params, tasks, epochs=epochs, batch_size=batch_size, lr=lr, progress=progress,
                      optimizer=lambda p: torch.optim.Adam(p, lr=lr),  # train()'s Adam, not the fused one
                      seed=[seed * 1000 for _, seed in runs])
        acc = 100 * evaluate_stacked(models[0], params, tasks)
        return {run: [acc[j].tolist()] for j, run in enumerate(runs)}
    if "Offline" in methods or ("SGD" in methods and len(methods) > 1):
        raise ValueError("stack Adam-based methods, SGD and Offline separately")
    sgd = methods == {"SGD"}
    strategies = [continual_strategy(m, lams.get(m), fisher_samples=fisher_samples) for m, _ in runs]
    sweep = sequence_sweep(models, tasks, strategies, seeds=[seed for _, seed in runs], epochs=epochs,
                           batch_size=batch_size, lr=sgd_lr if sgd else lr, optimizer="sgd" if sgd else "adam",
                           progress=progress)
    return {run: (100 * sweep.accuracy[j]).tolist() for j, run in enumerate(runs)}


def _sized(tasks: Sequence[Any], n_train: int | None, n_test: int | None) -> list[Any]:
    return [t.subset(n_train, n_test, seed=i) for i, t in enumerate(tasks)]


def split_mnist_tasks(cfg: Config, device: torch.device | str | None = None, *, n_train: int | None | str = "config",
                      scenarios: Sequence[str] | None = None) -> dict[str, list[Any]]:
    """The split-MNIST task sequences (scenario → 5 tasks), sized by ``cfg.ewc`` unless ``n_train`` is given
    (training digits per task, a random subset fixed by the task's index; None: all)."""
    from .data import SCENARIOS, split_mnist

    s = cfg.ewc
    n_train = s.split_train if n_train == "config" else n_train
    return {sc: _sized(split_mnist(scenario=sc, device=device), n_train, s.split_test)
            for sc in (scenarios or SCENARIOS)}


def permuted_mnist_tasks(cfg: Config, n_tasks: int | None = None, device: torch.device | str | None = None, *,
                         n_train: int | None | str = "config") -> list[Any]:
    """Permuted MNIST (permutations from seed 0, task 0 unpermuted), sized by ``cfg.ewc`` unless ``n_tasks`` or
    ``n_train`` (training digits per task; None: all 60,000) are given."""
    from .data import permuted_mnist

    if n_tasks is not None and (isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 1):
        raise ValueError(f"n_tasks must be a positive integer or None (the config's {cfg.ewc.permuted_tasks}), "
                         f"got {n_tasks!r}")
    s = cfg.ewc
    n_train = s.permuted_train if n_train == "config" else n_train
    n_tasks = s.permuted_tasks if n_tasks is None else n_tasks
    return _sized(permuted_mnist(n_tasks, seed=0, device=device), n_train, s.permuted_test)


def continual_table_rows(results: dict[str, dict[str, Any]], reference: dict[str, dict[str, float]] | None = None,
                         ref_name: str = "Hsu") -> list[dict[str, Any]]:
    """Final average accuracy (mean ± std, %) per method and scenario, with a published column beside each.

    ``results[method][scenario]`` as :func:`continual_table` returns it (``final_average`` with ``mean`` and
    ``std``, and ``lam``); ``reference[method][scenario]`` (optional): published values, in %.
    """
    if not isinstance(results, dict) or not results:
        raise ValueError("results must be a non-empty dict method -> scenario -> result, as continual_table returns")
    for method, by_scenario in results.items():
        if not isinstance(by_scenario, dict) or not by_scenario:
            raise ValueError(f"results[{method!r}] must be a non-empty dict scenario -> result")
        for scenario, r in by_scenario.items():
            fa = r.get("final_average") if isinstance(r, dict) else None
            if not isinstance(fa, dict) or not {"mean", "std"} <= set(fa) or "lam" not in r:
                raise ValueError(f"results[{method!r}][{scenario!r}] must hold 'lam' and 'final_average' with 'mean' "
                                 "and 'std' (see continual_table)")
    if reference is not None and not (isinstance(reference, dict)
                                      and all(isinstance(v, dict) for v in reference.values())):
        raise ValueError("reference must be None or a dict method -> scenario -> published accuracy (%)")
    rows = []
    for method, by_scenario in results.items():
        row: dict[str, Any] = {"method": method}
        lams = [r["lam"] for r in by_scenario.values()]
        row["λ"] = "/".join(f"{v:g}" for v in lams) if any(v is not None for v in lams) else "–"
        for scenario, r in by_scenario.items():
            fa = r["final_average"]
            row[scenario] = f"{fa['mean']:.2f} ± {fa['std']:.2f}"
            if reference is not None and method in reference and scenario in reference[method]:
                row[f"{ref_name} {scenario}"] = f"{reference[method][scenario]:.2f}"
        rows.append(row)
    return rows


@experiment("split-mnist", "Split MNIST, task/domain/class-incremental: Adam, SGD, L2, EWC, online EWC, joint; "
                           "Hsu et al. (2018) Table 2 beside ours (chapter 5).")
def split_mnist_experiment(cfg: Config, *, seeds: int, device: torch.device, progress: bool = True) -> ExperimentResult:
    s = cfg.ewc
    tasks = split_mnist_tasks(cfg, device)
    start = time.perf_counter()
    results = continual_table(tasks, SPLIT_METHODS, SPLIT_MNIST_LAMBDA, seeds=seeds, progress=progress,
                              hidden=s.split_hidden, epochs=s.split_epochs, batch_size=s.batch_size, lr=s.lr,
                              sgd_lr=SPLIT_SGD_LR, fisher_samples=s.fisher_samples)
    seconds = time.perf_counter() - start
    n_train = [len(t.train_y) for t in tasks["task"]]
    settings = {"hidden": list(s.split_hidden), "epochs": s.split_epochs, "batch_size": s.batch_size, "lr": s.lr,
                "sgd_lr": SPLIT_SGD_LR, "fisher_samples": s.fisher_samples, "train_per_task": n_train,
                "test_per_task": [len(t.test_y) for t in tasks["task"]]}
    caption = (f"Final average test accuracy (%) over the 5 tasks, mean ± std over {seeds} seed(s); Hsu: Hsu et al. "
               f"(2018) Table 2, 10 runs. MLP 784-{'-'.join(map(str, s.split_hidden))}, {s.split_epochs} epoch(s) per "
               f"task, batch {s.batch_size}, Adam lr {s.lr:g} (SGD lr {SPLIT_SGD_LR:g}); {sum(n_train)} training digits "
               f"in all; Fisher on {s.fisher_samples or 'all'} digits per task. λ per scenario task/domain/class: "
               f"{LAMBDA_CONVENTION} {seconds:.0f} s.")
    text = format_table(continual_table_rows(results, HSU_2018_SPLIT_MNIST)) + "\n\n" + caption
    data = {"methods": list(SPLIT_METHODS), "scenarios": list(tasks), "results": results, "caption": caption,
            "hsu_2018": HSU_2018_SPLIT_MNIST, "hsu_2018_reg_coef": HSU_2018_REG_COEF, "settings": settings,
            "seeds": seeds, "table_seconds": round(seconds, 2)}
    return ExperimentResult("split-mnist", text, data)


@experiment("permuted-mnist", "Permuted MNIST: fine-tuning (Adam), L2, EWC, online EWC and joint training (chapter 5).",
            default_seeds=lambda cfg: cfg.ewc.permuted_seeds)
def permuted_mnist_experiment(cfg: Config, *, seeds: int, device: torch.device,
                              progress: bool = True) -> ExperimentResult:
    s = cfg.ewc
    tasks = permuted_mnist_tasks(cfg, device=device)
    lambdas = {m: {"permuted": lam} for m, lam in PERMUTED_MNIST_LAMBDA.items()}
    start = time.perf_counter()
    results = continual_table({"permuted": tasks}, PERMUTED_METHODS, lambdas, seeds=seeds, progress=progress,
                              hidden=s.permuted_hidden, epochs=s.permuted_epochs, batch_size=s.batch_size, lr=s.lr,
                              fisher_samples=s.fisher_samples)
    seconds = time.perf_counter() - start
    settings = {"tasks": len(tasks), "hidden": list(s.permuted_hidden), "epochs": s.permuted_epochs,
                "batch_size": s.batch_size, "lr": s.lr, "fisher_samples": s.fisher_samples,
                "train_per_task": len(tasks[0].train_y), "test_per_task": len(tasks[0].test_y)}
    caption = (f"Final average test accuracy (%) over {len(tasks)} permuted-MNIST tasks, mean ± std over {seeds} "
               f"seed(s). MLP 784-{'-'.join(map(str, s.permuted_hidden))}-10, {s.permuted_epochs} epoch(s) per task, "
               f"{len(tasks[0].train_y)} training digits per task, batch {s.batch_size}, Adam lr {s.lr:g}; Fisher on "
               f"{s.fisher_samples or 'all'} digits per task. λ: {LAMBDA_CONVENTION} {seconds:.0f} s.")
    text = format_table(continual_table_rows(results)) + "\n\n" + caption
    data = {"methods": list(PERMUTED_METHODS), "scenarios": ["permuted"], "results": results, "caption": caption,
            "settings": settings,
            "seeds": seeds, "table_seconds": round(seconds, 2)}
    return ExperimentResult("permuted-mnist", text, data)


def ewc_lambda_grid(
    model: torch.nn.Module,
    tasks: Sequence[Any],
    lams: Sequence[float],
    *,
    fisher_kind: str = "true",
    mode: str = "separate",
    gamma: float = 1.0,
    fisher_samples: int | None = None,
    epochs: int = 1,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str = "adam",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """EWC over a grid of λ: one run of the task sequence per λ, every run from the same initial ``model``.

    The same as K separate ``run_sequence(copy.deepcopy(model), tasks, strategy=EWC(λ_k, fisher_kind=..., mode=...,
    gamma=..., fisher_samples=...), epochs=..., batch_size=..., lr=..., optimizer=..., seed=seed)`` runs (to float
    rounding), computed in one batched run by :func:`cl_utils.sweeps.ewc_lambda_sweep`; ``model`` itself is left
    unchanged. Returns plain data: ``lams`` (the grid), ``names`` (the tasks) and ``accuracy``, a
    K×T×T float64 tensor of accuracies in [0, 1] (``accuracy[k]`` is the matrix R of run k).
    """
    from .sweeps import ewc_lambda_sweep

    sweep = ewc_lambda_sweep(model, tasks, lams, fisher_kind=fisher_kind,
                             ewc=dict(mode=mode, gamma=gamma, fisher_samples=fisher_samples), epochs=epochs,
                             batch_size=batch_size, lr=lr, optimizer=optimizer, seed=seed, progress=progress)
    return {"lams": sweep.lams, "names": sweep.names, "accuracy": sweep.accuracy}


def fisher_kinds_sweep(
    tasks: Sequence[Any],
    lams: Sequence[float],
    *,
    kinds: Sequence[str] = ("true", "sampled", "empirical", "batched"),
    hidden: Sequence[int] = (400, 400),
    seed: int = 0,
    fisher_samples: int | None = None,
    progress: bool = True,
    **train_kw: Any,
) -> dict[str, Any]:
    """EWC with each Fisher estimate over the same λ grid (:func:`ewc_lambda_grid`, one initial model).

    Also measures each estimate's size: ``mean_fisher[kind]``, the mean over all parameters of the Fisher diagonal
    of the model trained on the first task (same training for every kind), on that task's training data.
    Returns ``lams``, ``kinds``, ``final_average[kind]`` (K values, %), ``accuracy[kind]`` (K×T×T, %) and
    ``mean_fisher``.
    """
    import copy

    from .ewc import EWC
    from .models import MLP
    from .training import set_seed, train

    tasks = list(tasks)
    set_seed(seed)
    model = MLP.for_tasks(tasks, hidden).to(tasks[0].device)
    first = copy.deepcopy(model)
    train(first, tasks[0], seed=seed * 1000, progress=progress, **{k: v for k, v in train_kw.items()
                                                                    if k in ("epochs", "batch_size", "lr", "optimizer")})
    mean_fisher, out_final, out_acc = {}, {}, {}
    for kind in kinds:
        F = EWC(1.0, fisher_kind=kind, fisher_samples=fisher_samples).importance(first, tasks[0])
        mean_fisher[kind] = float(sum(v.double().sum() for v in F.values()) / sum(v.numel() for v in F.values()))
        grid = ewc_lambda_grid(model, tasks, lams, fisher_kind=kind, fisher_samples=fisher_samples, seed=seed,
                               progress=progress, **train_kw)
        acc = 100 * grid["accuracy"]
        out_acc[kind] = acc.tolist()
        out_final[kind] = acc[:, -1].mean(1).tolist()
    return {"lams": [float(v) for v in lams], "kinds": list(kinds), "final_average": out_final,
            "accuracy": out_acc, "mean_fisher": mean_fisher}


def _validation_tasks(tasks: Sequence[Any], fraction: float = 0.1, seed: int = 100) -> list[Any]:
    """Each task with a random ``fraction`` of its training data held out as its "test" split."""
    from .data import Task

    out = []
    for i, t in enumerate(tasks):
        g = torch.Generator().manual_seed(seed + i)
        perm = torch.randperm(len(t.train_y), generator=g).to(t.train_y.device)
        n_val = max(1, int(fraction * len(perm)))
        val, keep = perm[:n_val], perm[n_val:]
        out.append(Task(t.name, t.train_x[keep], t.train_y[keep], t.train_x[val], t.train_y[val], t.n_outputs,
                        t.head, dict(t.info)))
    return out


def lambda_search(
    cfg: Config,
    *,
    seeds: int = 1,
    device: torch.device | str | None = None,
    scenarios: Sequence[str] = ("task", "domain", "class", "permuted"),
    methods: Sequence[str] = REGULARIZED,
    grid: dict[str, Sequence[float]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The validation search for λ: every method of ``methods`` over its ``grid`` (default
    :data:`LAMBDA_SEARCH_GRID`) on each scenario, scored by the final average accuracy (%) on 10 % of each task's
    training digits held out (:func:`_validation_tasks`), mean over seeds 100..100+seeds-1.

    Returns ``scores[scenario][method]`` (one score per λ of ``grid[method]``), ``best[method][scenario]`` (the
    λ of the highest score), ``at_edge[method][scenario]`` (True where that λ is the grid's largest or smallest:
    the optimum is not bracketed) and ``rows`` (one per run, for the table).
    """
    from .data import SCENARIOS

    positive_int("seeds", seeds)
    if not methods or any(m not in REGULARIZED for m in methods):
        raise ValueError(f"methods must be a non-empty subset of {REGULARIZED}, got {list(methods)}")
    allowed = (*SCENARIOS, "permuted")
    if not scenarios or any(sc not in allowed for sc in scenarios):
        raise ValueError(f"scenarios must be a non-empty subset of {allowed}, got {list(scenarios)}")
    grid = grid or LAMBDA_SEARCH_GRID
    if any(m not in grid for m in methods):
        raise ValueError(f"grid must give a list of λ for every method of {list(methods)}")
    from .sweeps import _check_grid

    grid = {m: _check_grid(grid[m], f"grid[{m!r}]") for m in methods}  # at least one finite λ >= 0 per method
    s = cfg.ewc
    split = [sc for sc in scenarios if sc != "permuted"]
    sequences = {sc: _validation_tasks(t) for sc, t in split_mnist_tasks(cfg, device, scenarios=split).items()} \
        if split else {}
    if "permuted" in scenarios:
        sequences["permuted"] = _validation_tasks(permuted_mnist_tasks(cfg, device=device))
    rows, best, scores, at_edge = [], {}, {}, {}
    for scenario in scenarios:
        seq = sequences[scenario]
        permuted = scenario == "permuted"
        sizes = dict(hidden=s.permuted_hidden if permuted else s.split_hidden,
                     epochs=s.permuted_epochs if permuted else s.split_epochs, batch_size=s.batch_size, lr=s.lr,
                     fisher_samples=s.fisher_samples, progress=progress)
        for method in methods:
            vals = []
            for lam in grid[method]:
                finals = [summarize_runs([run_method(method, seq, seed=100 + k, lam=lam, **sizes)["accuracy"]])
                          ["final_average"]["mean"] for k in range(seeds)]
                vals.append(sum(finals) / len(finals))
                rows.append({"scenario": scenario, "method": method, "λ": f"{lam:g}",
                             "validation accuracy %": vals[-1]})
            k_best = max(range(len(vals)), key=vals.__getitem__)
            scores.setdefault(scenario, {})[method] = vals
            best.setdefault(method, {})[scenario] = grid[method][k_best]
            at_edge.setdefault(method, {})[scenario] = len(vals) > 1 and k_best in (0, len(vals) - 1)
    return {"rows": rows, "best": best, "scores": scores, "at_edge": at_edge, "grid": grid, "seeds": seeds}


@experiment("ewc-lambda-search", "The validation search behind the λ of the split- and permuted-MNIST tables "
                                 "(10 % of the training digits held out; chapter 5).", default_seeds=lambda cfg: 1)
def ewc_lambda_search(cfg: Config, *, seeds: int, device: torch.device, progress: bool = True) -> ExperimentResult:
    out = lambda_search(cfg, seeds=seeds, device=device, progress=progress)
    edges = [f"{m} {sc}" for m, by in out["at_edge"].items() for sc, edge in by.items() if edge]
    text = (format_table(out["rows"]) + "\n\nbest λ: " + json.dumps(out["best"])
            + (f"\nat the edge of the grid (optimum not bracketed): {', '.join(edges)}" if edges else "")
            + f"\nλ: {LAMBDA_CONVENTION}")
    return ExperimentResult("ewc-lambda-search", text, out)
