"""K copies of a model trained at once: a whole λ grid in one run.

A slider over λ needs one trained network per grid value. Instead of K runs one after another, the K copies are
stacked along a new leading dimension (``torch.func.stack_module_state``) and run with ``torch.func.vmap`` over
``torch.func.functional_call``: every copy sees the same minibatches (the same seeds give the same order as
:func:`cl_utils.training.train`), the forward and backward passes become batched matrix products, and the
optimizer updates the stacked tensors. Adam, SGD (with or without momentum) and Adadelta act elementwise, so K
stacked copies follow the same trajectories as K separate runs, up to float rounding in the batched products.

The summed loss ``Σ_k loss_k`` gives copy ``k`` exactly the gradient of its own loss, because the copies share no
parameters. A per-copy penalty (``params -> K losses``) adds each copy's regulariser, e.g. EWC with its own λ.
With one seed per copy, each copy draws its own minibatches (a K×B gather; the products stay batched), so K runs
that differ in everything but the architecture, such as the seeds and methods of a results table, train at once.

:func:`ewc_lambda_sweep` is the λ sweep of chapter 5: K runs of :func:`cl_utils.training.run_sequence` with
``EWC(λ_k)`` in one batched run. The first task is trained once and shared (λ only acts from the second task on).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from .checks import positive_int
from .data import Task
from .progress import progress_bar
from .training import SequenceResult, _seen_average, _stack, evaluate, make_optimizer, train

__all__ = [
    "stack_copies",
    "copy_at",
    "stacked_forward",
    "train_stacked",
    "evaluate_stacked",
    "SweepResult",
    "lambda_sweep",
    "ewc_lambda_sweep",
    "sequence_sweep",
    "NoiseSweep",
    "weight_noise_sweep",
]

#: ``params -> K`` per-copy penalties (a tensor of shape ``(K,)``) added to the copies' losses.
StackedPenalty = Callable[[dict[str, Tensor]], Tensor]


def _copies(params: dict[str, Tensor]) -> int:
    if not isinstance(params, dict) or not params:
        raise ValueError("params must be the non-empty dict of stacked parameters from stack_copies")
    return next(iter(params.values())).shape[0]


def stack_copies(model: nn.Module | Sequence[nn.Module], k: int | None = None) -> dict[str, Tensor]:
    """The parameters of K models stacked along a new first dimension, as leaf tensors.

    Pass one model and ``k`` (K identical copies, as ``copy.deepcopy`` would make) or a list of models with the
    same architecture. Keys are the ``named_parameters()`` names; ``params[name][i]`` belongs to copy ``i``.
    A stacked tensor requires grad when the first model's parameter does (frozen parameters stay frozen).
    """
    if isinstance(model, nn.Module):
        positive_int("k", k)
        models = [model] * k
    else:
        models = list(model)
        if not models or not all(isinstance(m, nn.Module) for m in models):
            raise ValueError("stack_copies needs a model and k, or a non-empty sequence of models")
        if k is not None and k != len(models):
            raise ValueError(f"k={k} but {len(models)} models were given")
    if not list(models[0].parameters()):
        raise ValueError("the model has no parameters to train")
    if len({tuple((n, p.shape) for n, p in m.named_parameters()) for m in models}) > 1:
        raise ValueError("the models to stack must have the same parameter names and shapes")
    params, _ = stack_module_state(models)
    trainable = {n: p.requires_grad for n, p in models[0].named_parameters()}
    return {n: p.detach().clone().requires_grad_(trainable[n]) for n, p in params.items()}


def copy_at(model: nn.Module, params: dict[str, Tensor], i: int) -> nn.Module:
    """A deep copy of ``model`` holding copy ``i`` of the stacked parameters (for evaluation, Fisher, plots)."""
    k = _copies(params)
    if not isinstance(i, int) or not -k <= i < k:
        raise ValueError(f"copy index must lie in 0..{k - 1}, got {i!r}")
    out = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in out.named_parameters():
            p.copy_(params[n][i])
    return out


def stacked_forward(model: nn.Module, params: dict[str, Tensor], x: Tensor, head: int | Tensor | None = None) -> Tensor:
    """The outputs of all K copies on the same inputs: shape K×N×outputs.

    ``model`` supplies the architecture and its mode (train/eval); its own parameter values are not used. Random
    draws inside the model (weight noise, dropout) are shared by the copies and consume the random stream exactly
    as one call of the model would, so K copies see the noise that K separate runs from the same seed see.
    """
    kwargs = {} if head is None else {"head": head}
    return vmap(lambda p: functional_call(model, p, (x,), kwargs), randomness="same")(params)


def _forward_per_copy(model: nn.Module, params: dict[str, Tensor], x: Tensor, head: int | Tensor | None) -> Tensor:
    """Copy k on its own inputs ``x[k]`` (K×N×in, and ``head`` K×N when it is a tensor): K×N×outputs."""
    if isinstance(head, Tensor):
        return vmap(lambda p, xk, hk: functional_call(model, p, (xk,), {"head": hk}), randomness="same")(params, x, head)
    kwargs = {} if head is None else {"head": head}
    return vmap(lambda p, xk: functional_call(model, p, (xk,), kwargs), randomness="same")(params, x)


def _optimizer(params: list[Tensor], optimizer: Any, lr: float) -> torch.optim.Optimizer:
    """The optimizer over the stacked tensors. ``"adam"`` uses PyTorch's fused Adam where it exists: the same
    update as ``train``'s Adam (rounding aside), in one pass over the K copies instead of six."""
    if optimizer == "adam":
        try:
            return torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
            pass
    return make_optimizer(params, optimizer, lr)


def _losses(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy of each copy: K×N×C logits, N labels (shared) or K×N (per copy) → K losses."""
    k, n, c = logits.shape
    labels = y.reshape(-1) if y.ndim == 2 else y.repeat(k)
    return F.cross_entropy(logits.reshape(k * n, c), labels, reduction="none").view(k, n).mean(1)


def train_stacked(
    model: nn.Module,
    params: dict[str, Tensor],
    task: Task | Sequence[Task],
    *,
    epochs: int = 1,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str | Callable[..., torch.optim.Optimizer] = "adam",
    penalty: StackedPenalty | None = None,
    progress: bool = True,
    seed: int | Sequence[int] | None = None,
) -> dict[str, Any]:
    """:func:`cl_utils.training.train` for K stacked copies at once; updates ``params`` in place.

    Same minibatches as ``train`` with the same ``seed`` (one permutation per epoch, contiguous cuts of it); a
    sequence of K seeds gives copy ``k`` the minibatches of ``train(..., seed=seed[k])``. The
    same mean cross-entropy per copy, plus ``penalty(params)`` (a tensor of K per-copy penalties) when given, and
    one optimizer over the stacked tensors that require grad (``optimizer`` is a name or a factory
    ``params -> Optimizer``; it must act elementwise, as Adam, SGD and Adadelta do, so that the copies stay
    independent).

    Returns a history: ``loss`` (K×steps, CPU), ``train_accuracy`` (K×epochs), ``steps``, ``seconds``.
    """
    return _fit_stacked(model, params, task, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                        penalty=penalty, progress=progress, seed=seed)


def _fit_stacked(
    model: nn.Module,
    params: dict[str, Tensor],
    task: Task | Sequence[Task],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: Any,
    penalty: StackedPenalty | None,
    progress: bool,
    seed: int | Sequence[int] | None,
    scale: str = "mean",
) -> dict[str, Any]:
    """The loop of :func:`train_stacked`. ``scale="n·mean"`` minimises N × the mean minibatch loss instead (the
    whole-data-set estimate that :func:`cl_utils.variational.train_variational` uses)."""
    positive_int("epochs", epochs)
    positive_int("batch_size", batch_size)
    k = _copies(params)
    if sorted(n for n, _ in model.named_parameters()) != sorted(params) or any(
        params[n].shape[1:] != p.shape for n, p in model.named_parameters()
    ):
        raise ValueError("params do not match the model's named parameters (use stack_copies(model, k))")
    trainable = [p for p in params.values() if p.requires_grad]
    if not trainable or any(not p.is_leaf for p in params.values()):
        raise ValueError("params must be leaf tensors, some requiring grad (use stack_copies(model, k))")
    if isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError("train_stacked makes its own optimizer: pass a name or a factory, not an instance")
    if penalty is not None and not callable(penalty):
        raise ValueError(f"penalty must be a callable params -> tensor of {k} per-copy penalties, got {penalty!r}")
    x, y, head = _stack(task, "train")
    device = trainable[0].device
    if x.device != device:
        raise ValueError(f"the task's data is on {x.device} but the parameters are on {device}; use task.to(device)")
    opt = _optimizer(trainable, optimizer, lr)
    n = len(y)
    total = epochs * ((n + batch_size - 1) // batch_size)
    losses: list[Tensor] = []
    correct: list[Tensor] = []
    if seed is None or isinstance(seed, int):
        gens = [torch.Generator().manual_seed(seed) if seed is not None else None]
    else:
        seeds = list(seed)
        if len(seeds) != k or any(isinstance(v, bool) or not isinstance(v, int) for v in seeds):
            raise ValueError(f"seed must be None, an int or a sequence of {k} ints (one per copy), got {seed!r}")
        gens = [torch.Generator().manual_seed(v) for v in seeds]
    per_copy = len(gens) > 1
    model.train()
    start = time.perf_counter()
    bar = progress_bar(total, desc=f"{getattr(task, 'name', 'joint')} ×{k}", enabled=progress)
    for _ in range(epochs):
        # the same draws as train(): copy k sees the minibatches of its own seed (K×n when they differ)
        perm = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)
        hits: list[Tensor] = []
        for i in range(0, n, batch_size):
            if per_copy:
                idx = perm[:, i : i + batch_size]
                b, flat = idx.shape[1], idx.reshape(-1)
                xb = x.index_select(0, flat).view(k, b, *x.shape[1:])
                yb = y.index_select(0, flat).view(k, b)
                hb = head.index_select(0, flat).view(k, b) if isinstance(head, Tensor) else head
                logits = _forward_per_copy(model, params, xb, hb)
            else:
                idx = perm[0, i : i + batch_size]
                xb, yb = x.index_select(0, idx), y.index_select(0, idx)
                hb = head.index_select(0, idx) if isinstance(head, Tensor) else head
                logits = stacked_forward(model, params, xb, hb)
            loss = _losses(logits, yb)
            total_loss = loss if scale == "mean" else n * loss
            if penalty is not None:
                pen = penalty(params)
                if not isinstance(pen, Tensor) or pen.shape != (k,):
                    raise ValueError(f"penalty must return a tensor of shape ({k},), one value per copy")
                total_loss = total_loss + pen
            opt.zero_grad(set_to_none=True)
            total_loss.sum().backward()  # copy k's parameters only see copy k's loss
            opt.step()
            losses.append(total_loss.detach() if scale != "mean" else loss.detach())
            hits.append((logits.detach().argmax(2) == yb).sum(-1))
            bar.update(1)
        correct.append(torch.stack(hits).sum(0))
    bar.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    model.eval()
    return {
        "loss": torch.stack(losses, 1).cpu(),
        "train_accuracy": (torch.stack(correct, 1).double() / n).cpu(),
        "steps": total,
        "seconds": time.perf_counter() - start,
    }


@torch.no_grad()
def evaluate_stacked(
    model: nn.Module, params: dict[str, Tensor], tasks: Task | Sequence[Task], *, split: str = "test",
    batch_size: int = 2048,
) -> Tensor:
    """Accuracy of every copy on every task: a K×T tensor (float64, on the CPU)."""
    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    tasks = [tasks] if isinstance(tasks, Task) else list(tasks)
    if not tasks:
        raise ValueError("evaluate_stacked needs at least one task")
    k = _copies(params)
    was_training = model.training
    model.eval()
    out = []
    for t in tasks:
        x, y = getattr(t, f"{split}_x"), getattr(t, f"{split}_y")
        hits = torch.zeros(k, dtype=torch.long, device=y.device)
        for i in range(0, len(y), batch_size):
            logits = stacked_forward(model, params, x[i : i + batch_size], t.head)
            hits += (logits.argmax(2) == y[i : i + batch_size]).sum(1)
        out.append(hits.double() / len(y))
    model.train(was_training)
    return torch.stack(out, 1).cpu()


@dataclass
class SweepResult:
    """K runs of a task sequence, one per grid value, as one batched sweep returns them.

    ``accuracy[k, i, j]`` is the test accuracy on task ``j`` after training on tasks ``0..i`` with ``values[k]``
    (the matrix R of run ``k``); ``histories[i]`` is the history of task ``i`` with K rows (``loss`` K×steps,
    ``train_accuracy`` K×epochs); ``models[k]`` is run ``k``'s network after the last task; ``seconds`` the wall
    time of the whole sweep. :meth:`run` gives run ``k`` as a :class:`cl_utils.training.SequenceResult`.
    """

    name: str
    values: list[float]
    names: list[str]
    accuracy: Tensor
    histories: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    models: list[nn.Module] = field(default_factory=list, repr=False)

    @property
    def lams(self) -> list[float]:
        """The grid values (λ for an EWC sweep)."""
        return self.values

    @property
    def average_accuracy(self) -> Tensor:
        """K×T: mean accuracy over the tasks seen so far, after each task, for each grid value."""
        return _seen_average(self.accuracy)

    @property
    def final_average(self) -> Tensor:
        """K: average accuracy over all tasks after the last one, for each grid value."""
        return self.accuracy[:, -1].mean(1)

    def run(self, k: int) -> SequenceResult:
        """Run ``k`` alone, shaped like :func:`cl_utils.training.run_sequence`'s result."""
        if not isinstance(k, int) or not 0 <= k < len(self.values):
            raise ValueError(f"run index must lie in 0..{len(self.values) - 1}, got {k!r}")
        hist = [
            {"loss": h["loss"][k], "train_accuracy": h["train_accuracy"][k], "steps": h["steps"],
             "seconds": h["seconds"]}
            for h in self.histories
        ]
        return SequenceResult(list(self.names), self.accuracy[k].clone(), hist)


def _check_grid(values: Any, name: str) -> list[float]:
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a non-empty sequence of numbers, got {values!r}") from None
    if not values:
        raise ValueError(f"{name} must hold at least one value")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"{name} must be finite and >= 0, got {values}")
    return values



# -------------------------------------------------------------------------------------------- λ sweeps (chapter 5)


def _quadratic(strategy: Any, names: list[str]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A consolidated strategy's penalty as one quadratic F̄ (θ − m)² (+ a constant that has no gradient).

    ``strategy.quadratic()`` (:meth:`cl_utils.ewc.EWC.quadratic`) folds its stored terms into F̄ = Σₜ Fₜ and
    m = Σₜ Fₜ θ*ₜ / F̄, the same fold its own penalty uses; the constant is dropped.
    """
    center, weight, _ = strategy.quadratic()
    unknown = set(center) - set(names)
    if unknown:
        raise ValueError(f"the strategy holds parameters the model does not have: {sorted(unknown)}")
    return center, weight


def _stacked_penalty(strategies: Sequence[Any], names: list[str], like: Tensor) -> StackedPenalty:
    """Σ_k (λ_k/2) Σᵢ F̄_k,i (θ_k,i − m_k,i)² for K consolidated strategies, evaluated on the stacked copies.
    A ``None`` strategy (plain fine-tuning) adds nothing to its copy's loss."""
    quads = [_quadratic(s, names) if s is not None else None for s in strategies]
    ref = next((q for q in quads if q is not None), None)
    if ref is None:
        raise ValueError("no strategy to stack: every entry is None")
    keys = list(ref[0])
    if any(q is not None and list(q[0]) != keys for q in quads):
        raise ValueError("the strategies must hold the same parameters to be stacked")
    center = {n: torch.stack([q[0][n] if q is not None else torch.zeros_like(ref[0][n]) for q in quads]) for n in keys}
    weight = {n: torch.stack([q[1][n] if q is not None else torch.zeros_like(ref[1][n]) for q in quads]) for n in keys}
    half_lam = torch.tensor([0.5 * s.lam if s is not None else 0.0 for s in strategies], dtype=like.dtype,
                            device=like.device)

    def penalty(params: dict[str, Tensor]) -> Tensor:
        total = sum(((params[n] - m).square() * weight[n]).flatten(1).sum(1) for n, m in center.items())
        return half_lam * total

    return penalty


def lambda_sweep(
    model: nn.Module,
    tasks: Sequence[Task],
    lams: Sequence[float],
    make_strategy: Callable[[float], Any],
    *,
    epochs: int = 1,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str | Callable[..., torch.optim.Optimizer] = "adam",
    seed: int = 0,
    progress: bool = True,
) -> SweepResult:
    """K runs of :func:`cl_utils.training.run_sequence` with ``strategy=make_strategy(λ_k)``, in one batched run.

    ``make_strategy(λ)`` returns a fresh quadratic strategy that differs only in λ, such as ``EWC(λ, ...)`` or
    ``L2Anchor(λ)`` from :mod:`cl_utils.ewc` (``consolidate``, ``penalty``, ``state_dict``/``load_state_dict`` and
    ``quadratic()``, its stored terms as one quadratic). ``model`` is not changed; every run starts from a copy.

    The first task does not depend on λ (no penalty yet), so it is trained once, from the seed ``seed * 1000`` as
    ``run_sequence`` does, and consolidated once (one Fisher). From the second task on, the K copies train stacked
    (:func:`train_stacked`, seed ``seed * 1000 + i`` for task ``i``), each with its own penalty, and each copy
    gets its own Fisher after every task but the last. Equals the K separate runs to float rounding.
    """
    tasks = list(tasks)
    if not tasks or not all(isinstance(t, Task) for t in tasks):
        raise ValueError("tasks must be a non-empty sequence of Tasks")
    values = _check_grid(lams, "lams")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer (each copy must see the same minibatches), got {seed!r}")
    if not callable(make_strategy):
        raise ValueError("make_strategy must be a callable λ -> strategy, e.g. lambda lam: EWC(lam)")
    strategies = [make_strategy(v) for v in values]
    for s in strategies:
        if not all(hasattr(s, a) for a in ("consolidate", "state_dict", "load_state_dict", "quadratic", "lam")):
            raise ValueError("make_strategy must return quadratic strategies such as cl_utils.ewc.EWC (consolidate, "
                             f"state_dict, load_state_dict, quadratic, lam); got {type(s).__name__}")
    k, T = len(values), len(tasks)
    start = time.perf_counter()
    first = copy.deepcopy(model)
    h0 = train(first, tasks[0], epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, progress=progress,
               seed=seed * 1000)
    R = torch.zeros(k, T, T, dtype=torch.float64)
    R[:, 0] = torch.tensor(evaluate(first, tasks), dtype=torch.float64)
    histories = [{"loss": h0["loss"].expand(k, -1).clone(), "train_accuracy": h0["train_accuracy"].expand(k, -1).clone(),
                  "steps": h0["steps"], "seconds": h0["seconds"]}]
    if T > 1:
        strategies[0].consolidate(first, tasks[0])  # one Fisher for all: the K runs are identical up to here
        state = strategies[0].state_dict()
        for s in strategies[1:]:
            s.load_state_dict({**state, "lam": s.lam})
        params = stack_copies(first, k)
        names = [n for n, _ in first.named_parameters()]
        for i in range(1, T):
            penalty = _stacked_penalty(strategies, names, next(iter(params.values())))
            hist = _fit_stacked(first, params, tasks[i], epochs=epochs, batch_size=batch_size, lr=lr,
                                optimizer=optimizer, penalty=penalty, progress=progress, seed=seed * 1000 + i)
            histories.append(hist)
            R[:, i] = evaluate_stacked(first, params, tasks)
            if i < T - 1:
                for j, s in enumerate(strategies):
                    s.consolidate(copy_at(first, params, j), tasks[i])
        models = [copy_at(first, params, j) for j in range(k)]
    else:
        models = [copy.deepcopy(first) for _ in range(k)]
    return SweepResult("λ", values, [t.name for t in tasks], R, histories, time.perf_counter() - start, models)


def ewc_lambda_sweep(
    model: nn.Module,
    tasks: Sequence[Task],
    lams: Sequence[float],
    *,
    fisher_kind: str = "true",
    ewc: dict[str, Any] | None = None,
    epochs: int = 1,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str | Callable[..., torch.optim.Optimizer] = "adam",
    seed: int = 0,
    progress: bool = True,
) -> SweepResult:
    """EWC on ``tasks`` for every λ in ``lams`` at once: the penalty (λ/2) Σᵢ Fᵢ (θᵢ − θ*ᵢ)², F averaged over
    samples, added to the mean loss.

    Equals, to float rounding, ``[run_sequence(copy.deepcopy(model), tasks, strategy=EWC(λ, fisher_kind=fisher_kind,
    **ewc), seed=seed, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer) for λ in lams]``; ``ewc``
    holds further :class:`cl_utils.ewc.EWC` options (``mode``, ``gamma``, ``fisher_samples``...). See
    :func:`lambda_sweep`.
    """
    from .ewc import EWC

    options = dict(ewc or {})
    if "lam" in options or "fisher_kind" in options:
        raise ValueError("pass lams and fisher_kind as arguments, not inside ewc=")
    EWC(0.0, fisher_kind=fisher_kind, **options)  # check the options once, before any training
    return lambda_sweep(model, tasks, lams, lambda lam: EWC(lam, fisher_kind=fisher_kind, **options), epochs=epochs,
                        batch_size=batch_size, lr=lr, optimizer=optimizer, seed=seed, progress=progress)

def sequence_sweep(
    models: Sequence[nn.Module],
    tasks: Sequence[Task],
    strategies: Sequence[Any],
    *,
    seeds: Sequence[int],
    epochs: int = 1,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str | Callable[..., torch.optim.Optimizer] = "adam",
    progress: bool = True,
) -> SweepResult:
    """K runs of :func:`cl_utils.training.run_sequence` that differ in everything but the architecture, at once.

    Run ``k`` is ``run_sequence(models[k], tasks, strategy=strategies[k], seed=seeds[k], ...)``: its own initial
    weights, its own strategy (``None`` for fine-tuning, or a quadratic one such as :class:`cl_utils.ewc.EWC` or
    :class:`cl_utils.ewc.L2Anchor`, each with its own λ) and its own minibatches (task ``i`` from seed
    ``seeds[k] * 1000 + i``, as ``run_sequence`` draws them). The copies share the optimizer settings. ``models``
    are not changed; ``values`` of the result are the copy indices.

    Unlike :func:`lambda_sweep`, a named optimizer is ``torch.optim``'s default implementation (not the fused Adam),
    the one ``run_sequence`` uses: the stacked copies then repeat the separate runs' arithmetic, and a results table
    comes out the same whether its runs were stacked or not (over many epochs a network amplifies any difference in
    rounding, so a fused update would move single accuracies by a few points).
    """
    models, tasks, strategies, seeds = list(models), list(tasks), list(strategies), list(seeds)
    if not models or not all(isinstance(m, nn.Module) for m in models):
        raise ValueError("models must be a non-empty sequence of modules of one architecture")
    if not tasks or not all(isinstance(t, Task) for t in tasks):
        raise ValueError("tasks must be a non-empty sequence of Tasks")
    if len(strategies) != len(models) or len(seeds) != len(models):
        raise ValueError(f"need one strategy and one seed per model: {len(models)} models, {len(strategies)} "
                         f"strategies, {len(seeds)} seeds")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in seeds):
        raise ValueError(f"seeds must be non-negative integers, got {seeds!r}")
    for s in strategies:
        if s is not None and not all(hasattr(s, a) for a in ("consolidate", "quadratic", "lam")):
            raise ValueError("strategies must be None or quadratic strategies such as cl_utils.ewc.EWC (consolidate, "
                             f"quadratic, lam); got {type(s).__name__}")
    if isinstance(optimizer, str):
        name = optimizer
        optimizer = lambda p: make_optimizer(p, name, lr)  # noqa: E731  (not the fused substitute of _optimizer)
    k, T = len(models), len(tasks)
    start = time.perf_counter()
    base = copy.deepcopy(models[0])
    params = stack_copies(models)
    names = [n for n, _ in base.named_parameters()]
    R = torch.zeros(k, T, T, dtype=torch.float64)
    histories = []
    active = any(s is not None for s in strategies)
    for i, task in enumerate(tasks):
        penalty = _stacked_penalty(strategies, names, next(iter(params.values()))) if i > 0 and active else None
        histories.append(_fit_stacked(base, params, task, epochs=epochs, batch_size=batch_size, lr=lr,
                                      optimizer=optimizer, penalty=penalty, progress=progress,
                                      seed=[s * 1000 + i for s in seeds]))
        R[:, i] = evaluate_stacked(base, params, tasks)
        if i < T - 1:
            for j, s in enumerate(strategies):
                if s is not None:
                    s.consolidate(copy_at(base, params, j), task)
    models_out = [copy_at(base, params, j) for j in range(k)]
    return SweepResult("run", [float(j) for j in range(k)], [t.name for t in tasks], R, histories,
                       time.perf_counter() - start, models_out)


# --------------------------------------------------------------------------------------- weight noise (chapter 6)


def _rng_state() -> tuple[Tensor, list[Tensor] | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def _set_rng_state(state: tuple[Tensor, list[Tensor] | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


@dataclass
class NoiseSweep:
    """What :func:`weight_noise_sweep` returns: one trained variational model per σ², in ``values`` order."""

    values: list[float]
    models: list[nn.Module]
    history: dict[str, Any]
    seconds: float
    rng_state: tuple[Tensor, list[Tensor] | None] = field(repr=False)

    def restore_rng(self) -> None:
        """Put torch's random state back to where each separate run would have left it after training, so that
        sampled evaluations of every model draw the noise that model's own run would have drawn."""
        _set_rng_state(self.rng_state)


def weight_noise_sweep(
    variances: Sequence[float],
    task: Task,
    *,
    hidden: Sequence[int] = (100,),
    epochs: int = 8,
    batch_size: int = 100,
    lr: float = 1.0,
    optimizer: str = "adadelta",
    seed: int = 0,
    progress: bool = True,
) -> NoiseSweep:
    """K variational MLPs with fixed weight noise σᵢ² = σ², one per value of ``variances``, trained at once.

    The batched equivalent of, for each σ²: ``set_seed(seed)``; ``make_variational(MLP(D, hidden, 10),
    init_var=σ², learn_var=False)``; :func:`cl_utils.variational.train_variational` (no prior, one sample, the
    minibatch order of ``seed``). All K runs start from the same means and draw the same standard-normal noise ε
    (each scales it by its own σ), so sharing one draw per step reproduces the K runs; results agree to float
    rounding.
    """
    from .models import MLP
    from .training import set_seed
    from .variational import make_variational

    values = _check_grid(variances, "variances")
    if any(v <= 0 for v in values):
        raise ValueError(f"variances must be > 0, got {values}")
    if not isinstance(task, Task):
        raise ValueError(f"task must be a Task, got {type(task).__name__}")
    set_seed(seed)
    base = MLP(task.train_x.shape[1], hidden, 10)
    after_init = _rng_state()
    models = []
    for v in values:  # each run makes its own variational copy from the same random state
        _set_rng_state(after_init)
        models.append(make_variational(base, init_var=v, learn_var=False).to(task.device))
    params = stack_copies(models)
    hist = _fit_stacked(models[0], params, task, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                        penalty=None, progress=progress, seed=seed, scale="n·mean")
    with torch.no_grad():
        for k, m in enumerate(models):
            for n, p in m.named_parameters():
                p.copy_(params[n][k])
            m.eval()
    return NoiseSweep(values, models, hist, hist["seconds"], _rng_state())
