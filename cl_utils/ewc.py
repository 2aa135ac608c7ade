"""Elastic weight consolidation (Kirkpatrick et al., 2017) and its isotropic sibling, as quadratic penalties.

After task A, Bayes' rule makes the posterior p(θ | D_A) the prior for task B. Its Laplace approximation with the
diagonal Fisher as precision turns into a penalty on the parameters, added to the mean loss of task B:

    L(θ) = L_B(θ) + (λ/2) Σᵢ Fᵢ (θᵢ − θ*ᵢ)²

with θ* the parameters after task A and F the diagonal of its Fisher information, **averaged over A's samples**
(:func:`cl_utils.fisher.fisher_diagonal`). With the mean loss, Bayes' own value is λ = N_A / N_B (both tasks'
training-set sizes); in practice λ is tuned, and much larger values are used.

- :class:`EWC` stores one (θ*, F) pair per task (``mode="separate"``, one penalty per task, as in the paper), or a
  single accumulated pair (``mode="online"``: F ← γ F_old + F_new, anchored at the latest θ*; Schwarz et al., 2018,
  which is what applying Bayes' rule recursively gives).
- :class:`L2Anchor` is the same with F = 1: an isotropic pull towards the old parameters.

Task sizes. Bayes' rule applied recursively gives the precision Σₖ Nₖ Fₖ (the *summed* Fisher of each old task is
Nₖ times its mean); divided by N_t, to go with the mean loss of the current task t, the penalty's weights are
Nₖ / N_t. Both modes here add the *mean* Fishers unweighted, λ Σₖ Fₖ: the same as Bayes' when every task has the
same number of training samples (then λ_Bayes = 1), while with unequal sizes each old task is weighted as if it had
the average size. The factor N lives in λ: one λ for all tasks assumes they are equally large.

Both are callables ``model -> scalar tensor``, so they plug into ``cl_utils.training.train(penalty=...)``, and have
``consolidate(model, task)``, so they plug into ``cl_utils.training.run_sequence(strategy=...)``.

A sum of quadratics is one quadratic: Σₜ Fₜ (θ − θ*ₜ)² = F̄ (θ − m)² + c with F̄ = Σₜ Fₜ, m the F-weighted mean of
the anchors and c a constant. :meth:`EWC.penalty` evaluates it in this form, so its cost per training step does not
grow with the number of tasks (the value is the same; ``terms`` keeps every task's own θ* and F).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor, nn

from .checks import nonnegative_int, positive_int
from .data import Task
from .fisher import KINDS, fisher_diagonal

__all__ = ["EWC", "L2Anchor", "MODES", "merge_terms"]

#: How several tasks' penalties combine: one term per task, or one accumulated term.
MODES = ("separate", "online")

#: Samples the exact Fisher estimates process at once (bounds memory only; the result does not depend on it).
_CHUNK = 1024


class _Quadratic(torch.autograd.Function):
    """(scale/2)·(Σₖ Σ wₖ (θₖ − cₖ)² + const) over parameter tensors θₖ, with its gradient scale·wₖ(θₖ − cₖ).

    One pass forward and one multiply backward: about half the memory traffic of the same expression built from
    autograd's elementwise operations, which matters because it runs at every training step. First derivatives only.
    """

    @staticmethod
    def forward(ctx: Any, scale: float, centers: list[Tensor], weights: list[Tensor], const: Tensor,
                *params: Tensor) -> Tensor:
        scaled = []
        total = const.clone()
        for p, c, w in zip(params, centers, weights):
            d = p.detach() - c
            wd = w * d
            total = total + torch.dot(d.reshape(-1), wd.reshape(-1))
            scaled.append(wd)
        ctx.save_for_backward(*scaled)
        ctx.scale = scale
        return total * (0.5 * scale)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        factor = grad * ctx.scale
        return (None, None, None, None, *(wd * factor for wd in ctx.saved_tensors))


def merge_terms(terms: list[dict[str, dict[str, Tensor]]]) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
    """Σₜ Σᵢ Fₜ,ᵢ (θᵢ − θ*ₜ,ᵢ)² as one quadratic Σᵢ F̄ᵢ (θᵢ − mᵢ)² + c: returns ``(m, F̄, c)``.

    ``terms`` holds ``{"anchor": θ*, "fisher": F}`` per task (dicts keyed by parameter name). F̄ = Σₜ Fₜ and
    m = Σₜ Fₜ θ*ₜ / F̄ (the latest anchor where F̄ = 0) and c are computed in float64, then cast back.
    """
    if not terms:
        raise ValueError("merge_terms needs at least one {'anchor', 'fisher'} term")
    if len(terms) == 1:
        t = terms[0]
        ref = next(iter(t["anchor"].values()))
        return t["anchor"], t["fisher"], torch.zeros((), dtype=ref.dtype, device=ref.device)
    total, center = {}, {}
    const = 0.0
    for k in terms[0]["anchor"]:
        fs = [t["fisher"][k].double() for t in terms]
        anchors = [t["anchor"][k].double() for t in terms]
        f = sum(fs)
        m = torch.where(f > 0, sum(fi * a for fi, a in zip(fs, anchors)) / f.clamp_min(1e-300), anchors[-1])
        const = const + sum((fi * (a - m).square()).sum() for fi, a in zip(fs, anchors))
        dtype = terms[0]["anchor"][k].dtype
        total[k], center[k] = f.to(dtype), m.to(dtype)
    ref = next(iter(terms[0]["anchor"].values()))
    return center, total, torch.as_tensor(const).to(ref)


def _real(value: Any) -> float | None:
    """``value`` as a float if it is a real number (a Python or NumPy scalar, a 0-d tensor), else None."""
    if isinstance(value, bool) or (isinstance(value, Tensor) and (value.numel() != 1 or value.is_complex())):
        return None
    if isinstance(value, (numbers.Real, Tensor)):
        return float(value)
    return None


def _check_lam(lam: Any) -> float:
    value = _real(lam)
    if value is None or not math.isfinite(value) or value < 0:
        raise ValueError(f"lam must be a finite real number >= 0, got {lam!r}")
    return value


def _check_terms(terms: Any) -> list[dict[str, dict[str, Tensor]]]:
    """A cloned, checked copy of a state's ``terms``: every term has an anchor and a Fisher with the same parameter
    names and shapes, and every term names the same parameters."""
    if not isinstance(terms, (list, tuple)):
        raise ValueError(f"state['terms'] must be a list of {{'anchor': ..., 'fisher': ...}} dicts, got "
                         f"{type(terms).__name__}")
    out = []
    for i, t in enumerate(terms):
        if not isinstance(t, dict) or set(t) != {"anchor", "fisher"}:
            raise ValueError(f"term {i} must be a dict with exactly the keys 'anchor' and 'fisher'")
        anchor, fisher = t["anchor"], t["fisher"]
        if not (isinstance(anchor, dict) and isinstance(fisher, dict) and anchor
                and all(isinstance(v, Tensor) for v in (*anchor.values(), *fisher.values()))):
            raise ValueError(f"term {i}: 'anchor' and 'fisher' must be non-empty dicts of tensors")
        if anchor.keys() != fisher.keys():
            raise ValueError(f"term {i}: the anchor's parameters {sorted(anchor)} and the Fisher's {sorted(fisher)} "
                             "differ")
        bad = [k for k in anchor if anchor[k].shape != fisher[k].shape]
        if bad:
            raise ValueError(f"term {i}: anchor and Fisher have different shapes for {bad}")
        if out and anchor.keys() != out[0]["anchor"].keys():
            raise ValueError(f"term {i} holds other parameters than term 0: {sorted(anchor)} vs "
                             f"{sorted(out[0]['anchor'])}")
        out.append({part: {k: v.clone() for k, v in t[part].items()} for part in ("anchor", "fisher")})
    return out


class EWC:
    """Elastic weight consolidation: (λ/2) Σ_tasks Σᵢ Fᵢ (θᵢ − θ*ᵢ)², F the Fisher diagonal of each task.

    Args:
        lam: the strength λ ≥ 0 (with the ½; the Fisher is averaged over samples, the loss is the mean NLL).
        fisher_kind: which Fisher estimate (:data:`cl_utils.fisher.KINDS`): ``"true"`` (exact expectation over the
            model's classes, the default), ``"sampled"``, ``"empirical"`` (data labels) or ``"batched"`` (squared
            minibatch-mean gradients, ≈ ``fisher_batch_size`` times smaller).
        mode: ``"separate"`` (one term per task) or ``"online"`` (one term: F ← γ F_old + F_new, anchor = latest θ*).
        gamma: the decay γ ∈ [0, 1] of the online mode (1: plain accumulation, as Bayes' rule says; ignored in
            ``"separate"`` mode).
        fisher_samples: estimate F on this many training samples of the task, drawn at random (None, the default:
            all of them). A few thousand give nearly the same penalty at a fraction of the cost.
        fisher_batch_size: the minibatch of the ``"batched"`` estimate (128, the book's training batch); the other
            estimates do not depend on it.
        seed: seeds the choice of the ``fisher_samples`` subset and the labels of ``"sampled"`` (task t uses
            ``seed + t``), so the same seed gives the same penalty.

    After :meth:`consolidate` (once per finished task), :meth:`penalty` (also ``ewc(model)``) is the scalar to add
    to the next task's mean loss. ``terms`` holds, per stored term, ``{"anchor": θ*, "fisher": F}`` (dicts keyed by
    parameter name, on the model's device).
    """

    def __init__(
        self,
        lam: float,
        *,
        fisher_kind: str = "true",
        mode: str = "separate",
        gamma: float = 1.0,
        fisher_samples: int | None = None,
        fisher_batch_size: int = 128,
        seed: int = 0,
    ) -> None:
        self.lam = _check_lam(lam)
        if fisher_kind not in KINDS:
            raise ValueError(f"unknown fisher_kind {fisher_kind!r}; choose one of {KINDS}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        gamma_value = _real(gamma)
        if gamma_value is None or not 0.0 <= gamma_value <= 1.0:
            raise ValueError(f"gamma must be a real number in [0, 1], got {gamma!r}")
        if fisher_samples is not None and (
            isinstance(fisher_samples, bool) or not isinstance(fisher_samples, int) or fisher_samples < 1
        ):
            raise ValueError(f"fisher_samples must be a positive integer or None (all samples), got {fisher_samples!r}")
        positive_int("fisher_batch_size", fisher_batch_size)
        nonnegative_int("seed", seed)
        self.fisher_kind = fisher_kind
        self.mode = mode
        self.gamma = gamma_value
        self.fisher_samples = fisher_samples
        self.fisher_batch_size = fisher_batch_size
        self.seed = seed
        self.terms: list[dict[str, dict[str, Tensor]]] = []
        self.consolidations = 0
        self._merged: tuple[dict[str, Tensor], dict[str, Tensor], Tensor] | None = None

    # ------------------------------------------------------------------------------------------ importance

    def importance(self, model: nn.Module, task: Task) -> dict[str, Tensor]:
        """The Fisher diagonal of ``model`` on ``task``'s training data (its head), averaged over the samples."""
        seed = self.seed + self.consolidations  # the subset and the sampled labels: new for every consolidation
        sub = task.subset(self.fisher_samples, seed=seed)  # all training samples when fisher_samples is None
        batch = self.fisher_batch_size if self.fisher_kind == "batched" else _CHUNK
        return fisher_diagonal(model, sub.train_x, sub.train_y, kind=self.fisher_kind, batch_size=batch,
                               head=task.head, generator=seed)

    # ------------------------------------------------------------------------------------------- interface

    def consolidate(self, model: nn.Module, task: Task) -> None:
        """Store θ* (the model's current parameters) and the importance of each parameter for ``task``."""
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(task, Task):
            raise ValueError(f"task must be a cl_utils.data.Task, got {type(task).__name__}")
        weight = {k: v.detach().clone() for k, v in self.importance(model, task).items()}
        anchor = {k: p.detach().clone() for k, p in model.named_parameters() if k in weight}
        if self.mode == "online" and self.terms:
            old = self.terms[0]
            if old["fisher"].keys() != weight.keys():
                raise ValueError("the model's parameters changed since the last consolidation")
            weight = {k: self.gamma * old["fisher"][k] + w for k, w in weight.items()}
            self.terms = [{"anchor": anchor, "fisher": weight}]
        else:
            if self.terms and self.terms[0]["anchor"].keys() != anchor.keys():
                raise ValueError("the model's parameters changed since the last consolidation")
            self.terms.append({"anchor": anchor, "fisher": weight})
        self.consolidations += 1
        self._merge()

    def _merge(self) -> None:
        """Fold the stored terms into one quadratic F̄ (θ − m)² + c (see the module docstring)."""
        self._merged = merge_terms(self.terms) if self.terms else None

    def quadratic(self) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
        """The stored penalty as one quadratic: ``(m, F̄, c)`` with Σₜ Fₜ (θ − θ*ₜ)² = Σᵢ F̄ᵢ (θᵢ − mᵢ)² + c.

        ``m`` and ``F̄`` are dicts keyed by parameter name; the penalty is (λ/2) times this. One stored term gives
        its own anchor and Fisher and c = 0. Used by :func:`cl_utils.sweeps.lambda_sweep` to evaluate K penalties
        at once.
        """
        if self._merged is None:
            raise ValueError("quadratic() before any consolidate(): there is no old task to remember yet")
        return self._merged

    def penalty(self, model: nn.Module) -> Tensor:
        """(λ/2) Σ over stored terms Σᵢ Fᵢ (θᵢ − θ*ᵢ)², a scalar tensor that back-propagates into ``model``."""
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if self._merged is None:
            raise ValueError("penalty() before any consolidate(): there is no old task to remember yet")
        center, weight, const = self._merged
        params = dict(model.named_parameters())
        selected = []
        for k, m in center.items():
            p = params.get(k)
            if p is None or p.shape != m.shape:
                raise ValueError(f"the model's parameter {k!r} is missing or has another shape than when consolidated")
            selected.append(p)
        return _Quadratic.apply(self.lam, list(center.values()), list(weight.values()), const, *selected)

    __call__ = penalty

    # ------------------------------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the penalty exactly (settings and stored tensors, cloned)."""
        return {
            "class": type(self).__name__,
            "lam": self.lam,
            "fisher_kind": self.fisher_kind,
            "mode": self.mode,
            "gamma": self.gamma,
            "fisher_samples": self.fisher_samples,
            "fisher_batch_size": self.fisher_batch_size,
            "seed": self.seed,
            "consolidations": self.consolidations,
            "terms": [{part: {k: v.clone() for k, v in t[part].items()} for part in ("anchor", "fisher")}
                      for t in self.terms],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (the settings are checked as in the constructor)."""
        if not isinstance(state, dict) or "terms" not in state:
            raise ValueError("state must be a dict returned by state_dict()")
        if state.get("class", type(self).__name__) != type(self).__name__:
            raise ValueError(f"state of a {state['class']} cannot be loaded into a {type(self).__name__}")
        keys = ("lam", "fisher_kind", "mode", "gamma", "fisher_samples", "fisher_batch_size", "seed")
        fresh = type(self).__new__(type(self))
        EWC.__init__(fresh, state["lam"], **{k: state[k] for k in keys[1:]})  # validates the settings
        terms = _check_terms(state["terms"])
        if fresh.mode == "online" and len(terms) > 1:
            raise ValueError("an online penalty holds at most one term")
        consolidations = state.get("consolidations")
        if isinstance(consolidations, bool) or not isinstance(consolidations, int) or consolidations < len(terms):
            raise ValueError(f"consolidations must be an integer >= the number of terms ({len(terms)}), "
                             f"got {consolidations!r}")
        self.__dict__.update(fresh.__dict__)
        self.terms = terms
        self.consolidations = consolidations
        self._merge()

    def __repr__(self) -> str:
        extra = f", gamma={self.gamma:g}" if self.mode == "online" else ""
        return (f"{type(self).__name__}(lam={self.lam:g}, fisher_kind={self.fisher_kind!r}, mode={self.mode!r}{extra}, "
                f"tasks={self.consolidations})")


class L2Anchor(EWC):
    """(λ/2) Σ_tasks ‖θ − θ*‖²: EWC with every Fᵢ = 1, an isotropic pull towards the old parameters.

    ``mode``/``gamma`` act as in :class:`EWC`: ``mode="online", gamma=0.0`` keeps a single anchor at the latest θ*
    with unit weight (the L2 baseline of Hsu et al., 2018).
    """

    def __init__(self, lam: float, *, mode: str = "separate", gamma: float = 1.0) -> None:
        super().__init__(lam, mode=mode, gamma=gamma)

    def importance(self, model: nn.Module, task: Task) -> dict[str, Tensor]:
        """All ones: every parameter counts the same."""
        return {k: torch.ones_like(p) for k, p in model.named_parameters() if p.requires_grad}

    def __repr__(self) -> str:
        extra = f", gamma={self.gamma:g}" if self.mode == "online" else ""
        return f"L2Anchor(lam={self.lam:g}, mode={self.mode!r}{extra}, tasks={self.consolidations})"
