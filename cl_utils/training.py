"""Training and evaluation over device tensors: no DataLoader, no per-sample loop, no host sync per step.

:func:`train` fits a model to one task (or jointly to several) with shuffled minibatches cut from the task's
tensors; an optional ``penalty`` (a callable ``model -> scalar tensor``, such as :class:`cl_utils.ewc.EWC`) is added
to the mean cross-entropy. :func:`run_sequence` trains on tasks one after another and records the accuracy matrix
``R[i, j]`` = test accuracy on task ``j`` after training on task ``i``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import optimizers as _optimizers
from .checks import nonnegative_int, positive_int
from .data import Task
from .devices import default_device
from .models import forward
from .progress import progress_bar

__all__ = [
    "set_seed",
    "default_device",
    "make_optimizer",
    "train",
    "evaluate",
    "run_sequence",
    "SequenceResult",
    "OPTIMIZERS",
]

Penalty = Callable[[nn.Module], Tensor]
OptimizerSpec = Union[str, torch.optim.Optimizer, Callable[..., torch.optim.Optimizer]]

#: Optimizers by name (:data:`cl_utils.optimizers.NAMES`); ``lr`` is passed through (``lr=0`` is allowed, as in
#: ``torch.optim``; Adadelta's ``lr`` scales its unit-free step, 1.0 in the paper). The momentum μ is
#: :data:`cl_utils.optimizers.MOMENTUM`, the one value chapter 1's rules use; Adam and Adadelta keep ``torch.optim``'s
#: defaults, which are also the defaults of :class:`cl_utils.optimizers.Adam` and :class:`~cl_utils.optimizers.Adadelta`.
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda p, lr: torch.optim.SGD(p, lr=lr),
    "momentum": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=_optimizers.MOMENTUM),
    "nesterov": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=_optimizers.MOMENTUM, nesterov=True),
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr),
    "adadelta": lambda p, lr: torch.optim.Adadelta(p, lr=lr),
}


def _model_device(model: nn.Module) -> torch.device:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    p = next(model.parameters(), None)
    if p is None:
        raise ValueError("the model has no parameters to train")
    return p.device


@torch.no_grad()
def _check_labels(model: nn.Module, x: Tensor, y: Tensor, head: int | Tensor | None) -> None:
    """Labels must index the model's outputs (on a GPU a wrong one would stop in an opaque device-side assert)."""
    was_training = model.training
    model.eval()  # no dropout or weight noise: this forward pass draws no random numbers
    n_out = forward(model, x[:1], head[:1] if isinstance(head, Tensor) else head).shape[-1]
    model.train(was_training)
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= n_out:
        raise ValueError(f"labels run from {low} to {high}, but the model has {n_out} outputs")


def _seen_average(R: Tensor) -> Tensor:
    """Mean accuracy over the tasks seen so far, after each task: ``mean_j<=i R[..., i, j]`` for ``...×T×T``."""
    T = R.shape[-1]
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    return (R * mask).sum(-1) / mask.sum(1)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices), so that a run repeats exactly on the same device."""
    nonnegative_int("seed", seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(params: Any, optimizer: OptimizerSpec, lr: float) -> torch.optim.Optimizer:
    """An optimizer from a name in :data:`OPTIMIZERS`, a factory ``params -> Optimizer``, or an instance."""
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
        return OPTIMIZERS[optimizer](params, lr)
    if callable(optimizer):
        return optimizer(params)
    raise ValueError(f"optimizer must be a name, a torch optimizer or a factory, got {optimizer!r}")


def _stack(tasks: Task | Sequence[Task], split: str) -> tuple[Tensor, Tensor, Tensor | int | None]:
    """Inputs, labels and heads of one task, or of several concatenated (joint training)."""
    if isinstance(tasks, Task):
        return getattr(tasks, f"{split}_x"), getattr(tasks, f"{split}_y"), tasks.head
    tasks = list(tasks)
    if not tasks or not all(isinstance(t, Task) for t in tasks):
        raise ValueError("expected a Task or a non-empty sequence of Tasks")
    xs = torch.cat([getattr(t, f"{split}_x") for t in tasks])
    ys = torch.cat([getattr(t, f"{split}_y") for t in tasks])
    if all(t.head is None for t in tasks):
        return xs, ys, None
    if any(t.head is None for t in tasks):
        raise ValueError("cannot train jointly on tasks with and without heads")
    heads = torch.cat([torch.full((len(getattr(t, f"{split}_y")),), t.head, device=ys.device) for t in tasks])
    return xs, ys, heads


def train(
    model: nn.Module,
    task: Task | Sequence[Task],
    *,
    epochs: int = 1,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: OptimizerSpec = "adam",
    penalty: Penalty | None = None,
    progress: bool = True,
    seed: int | None = None,
    eval_tasks: Sequence[Task] | None = None,
    eval_every: int | None = None,
) -> dict[str, Any]:
    """Minimise the mean cross-entropy on ``task`` (plus ``penalty(model)`` when given) with minibatches.

    Each epoch draws one permutation of the training set (from ``seed`` when given, else from torch's global
    generator) and cuts it into consecutive minibatches of indices, each gathered from the device tensors where it
    is used; the last batch may be smaller. A sequence of tasks is trained jointly (their data concatenated, each
    sample with its own head). Losses stay on the device until the end, so the loop never waits for the host.

    With ``eval_tasks`` and ``eval_every`` (steps), the test accuracy on each of ``eval_tasks`` is recorded during
    training (for forgetting curves).

    Returns a history dict: ``loss`` (per step, CPU tensor), ``train_accuracy`` (per epoch), ``eval_steps`` and
    ``eval_accuracy`` (rows: evaluations, columns: ``eval_tasks``; empty when not asked), ``steps``, ``seconds``.
    """
    positive_int("epochs", epochs)
    positive_int("batch_size", batch_size)
    if eval_every is not None:
        positive_int("eval_every", eval_every)
        if not eval_tasks:
            raise ValueError("eval_every needs eval_tasks")
    if penalty is not None and not callable(penalty):
        raise ValueError(f"penalty must be a callable model -> scalar tensor, got {penalty!r}")
    x, y, head = _stack(task, "train")
    device = _model_device(model)
    if x.device != device:
        raise ValueError(f"the task's data is on {x.device} but the model is on {device}; use task.to(device)")
    _check_labels(model, x, y, head)
    opt = make_optimizer(model.parameters(), optimizer, lr)
    n = len(y)
    steps_per_epoch = (n + batch_size - 1) // batch_size
    total = epochs * steps_per_epoch
    losses: list[Tensor] = []  # one 0-d device tensor per step, stacked at the end (no host sync in the loop)
    correct: list[Tensor] = []  # hits per epoch, on the device
    eval_rows: list[Tensor] = []
    eval_steps: list[int] = []
    gen = torch.Generator().manual_seed(seed) if seed is not None else None

    def record(step: int) -> None:
        eval_steps.append(step)
        eval_rows.append(_accuracies(model, list(eval_tasks or ())))

    model.train()
    start = time.perf_counter()
    bar = progress_bar(total, desc=getattr(task, "name", "joint"), enabled=progress)
    step = 0
    if eval_every is not None:
        record(0)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        hits: list[Tensor] = []
        for i in range(0, n, batch_size):
            # Gathering each minibatch where it is used keeps it in cache (cheaper than permuting the whole epoch
            # first); the minibatches are the same: rows perm[i : i + batch_size].
            idx = perm[i : i + batch_size]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            hb = head.index_select(0, idx) if isinstance(head, Tensor) else head
            logits = forward(model, xb, hb)
            loss = F.cross_entropy(logits, yb)
            total_loss = loss + penalty(model) if penalty is not None else loss
            opt.zero_grad(set_to_none=True)
            total_loss.backward()
            opt.step()
            losses.append(loss.detach())
            hits.append((logits.detach().argmax(1) == yb).sum())
            step += 1
            bar.update(1)
            if eval_every is not None and step % eval_every == 0:
                record(step)
                model.train()
        correct.append(torch.stack(hits).sum())
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    model.eval()
    return {
        "loss": torch.stack(losses).cpu(),
        "train_accuracy": (torch.stack(correct).double() / n).cpu(),
        "eval_steps": eval_steps,
        "eval_accuracy": torch.stack(eval_rows).cpu() if eval_rows else torch.empty(0, len(eval_tasks or ())),
        "steps": total,
        "seconds": seconds,
    }


@torch.no_grad()
def _accuracies(model: nn.Module, tasks: Sequence[Task], split: str = "test", batch_size: int = 8192) -> Tensor:
    """Accuracy on each task as one device tensor (no host sync)."""
    was_training = model.training
    model.eval()
    out = []
    for t in tasks:
        x, y = getattr(t, f"{split}_x"), getattr(t, f"{split}_y")
        hits = torch.zeros((), dtype=torch.long, device=y.device)
        for i in range(0, len(y), batch_size):
            hits += (forward(model, x[i : i + batch_size], t.head).argmax(1) == y[i : i + batch_size]).sum()
        out.append(hits.double() / len(y))
    model.train(was_training)
    return torch.stack(out)


def evaluate(model: nn.Module, tasks: Task | Sequence[Task], *, split: str = "test") -> list[float]:
    """Accuracy (in [0, 1]) of ``model`` on each task's ``split`` (``"test"`` or ``"train"``)."""
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    tasks = [tasks] if isinstance(tasks, Task) else list(tasks)
    if not tasks:
        raise ValueError("evaluate needs at least one task")
    return _accuracies(model, tasks, split).tolist()


@dataclass
class SequenceResult:
    """What :func:`run_sequence` returns.

    ``accuracy[i, j]`` is the test accuracy on task ``j`` after training on tasks ``0..i`` (the matrix R);
    ``histories[i]`` is :func:`train`'s history for task ``i``.
    """

    names: list[str]
    accuracy: Tensor
    histories: list[dict[str, Any]] = field(default_factory=list)

    @property
    def average_accuracy(self) -> Tensor:
        """Mean accuracy over the tasks seen so far, after each task: ``mean_j<=i R[i, j]``."""
        return _seen_average(self.accuracy)

    @property
    def final_average(self) -> float:
        """Average accuracy over all tasks after the last one (the usual headline number)."""
        return float(self.accuracy[-1].mean())


def run_sequence(
    model: nn.Module,
    tasks: Sequence[Task],
    *,
    strategy: Any = None,
    epochs: int = 1,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str | Callable[..., torch.optim.Optimizer] = "adam",
    progress: bool = True,
    seed: int | None = None,
    eval_every: int | None = None,
) -> SequenceResult:
    """Train on ``tasks`` in order and record the accuracy matrix.

    ``strategy`` is None (plain fine-tuning) or an object with ``consolidate(model, task)`` and
    ``penalty(model)``, such as :class:`cl_utils.ewc.EWC`: after each task but the last it is consolidated, and
    its penalty is added to the loss of every later task (after the last task no Fisher is computed, since nothing
    would use it; call ``strategy.consolidate(model, tasks[-1])`` to go on with more tasks). A fresh optimizer is
    made for each task. With ``eval_every``, each
    history also records the accuracy on all tasks during training.
    """
    tasks = list(tasks)
    if not tasks:
        raise ValueError("run_sequence needs at least one task")
    if strategy is not None and not (hasattr(strategy, "consolidate") and hasattr(strategy, "penalty")):
        raise ValueError("strategy must have consolidate(model, task) and penalty(model) methods")
    T = len(tasks)
    R = torch.zeros(T, T, dtype=torch.float64)
    histories = []
    for i, task in enumerate(tasks):
        hist = train(
            model, task, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
            penalty=strategy.penalty if (strategy is not None and i > 0) else None, progress=progress,
            seed=None if seed is None else seed * 1000 + i, eval_tasks=tasks if eval_every else None,
            eval_every=eval_every,
        )
        histories.append(hist)
        R[i] = _accuracies(model, tasks).cpu()
        if strategy is not None and i < T - 1:  # no later task would use the last consolidation
            strategy.consolidate(model, task)
    return SequenceResult([t.name for t in tasks], R, histories)
