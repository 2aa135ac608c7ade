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

from .config import Config, get_config

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
    name: str
    description: str
    run: Callable[..., ExperimentResult]


EXPERIMENTS: dict[str, Experiment] = {}


def experiment(name: str, description: str) -> Callable[[Callable[..., ExperimentResult]], Callable[..., ExperimentResult]]:
    """Register ``fn(cfg, *, seeds, device, progress) -> ExperimentResult`` under ``name``."""

    def register(fn: Callable[..., ExperimentResult]) -> Callable[..., ExperimentResult]:
        if name in EXPERIMENTS:
            raise ValueError(f"experiment {name!r} is registered twice")
        EXPERIMENTS[name] = Experiment(name, description, fn)
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

    ``seeds`` overrides the number of seeds of the chosen sizes; ``device`` defaults to the best available.
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
    result = EXPERIMENTS[name].run(cfg, seeds=seeds or cfg.seeds, device=dev, progress=progress)
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


@experiment("mnist-mlp", "The 784-400-400-10 MLP on MNIST with Adam: test accuracy per seed (chapter 1).")
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
