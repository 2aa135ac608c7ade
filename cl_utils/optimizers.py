"""The update rules of SGD, momentum, Nesterov, Adam and Adadelta, written out in a few lines each.

Each rule is a small frozen dataclass holding its hyperparameters, with

- ``init(θ)``: the rule's state (running averages...) for parameters shaped like ``θ``;
- ``update(θ, g, state)``: one step, a pure function returning the new ``θ`` and the new state;
- ``torch_optimizer(params)``: the ``torch.optim`` optimizer with the same hyperparameters.

:func:`trajectory` runs a rule on a loss, :func:`torch_trajectory` runs the matching ``torch.optim`` optimizer on
the same loss; the book and the tests assert that the two paths agree (to rounding, in float64). The formulas
follow PyTorch's documentation, which differs from some papers in where the learning rate enters (Nesterov) or in
the ε placement (Adam, Adadelta); the docstrings say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Union

import torch
from torch import Tensor

from .checks import nonnegative_int

__all__ = ["SGD", "Adam", "Adadelta", "Rule", "MOMENTUM", "NAMES", "rule", "rules", "trajectory", "torch_trajectory"]

State = dict[str, Union[Tensor, int]]
#: ``loss_fn(θ, step)`` returns the scalar loss at step ``step`` (the step lets a minibatch change every step).
LossFn = Callable[[Tensor, int], Tensor]


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise ValueError(f"{name} must be a positive number, got {v!r}")


@dataclass(frozen=True)
class SGD:
    """(Minibatch) SGD with optional heavy-ball momentum μ and Nesterov's variant, as ``torch.optim.SGD``:

    - plain:     ``θ ← θ − η g``
    - momentum:  ``v ← μ v + g``,  ``θ ← θ − η v``               (``v`` starts at 0, so ``v₁ = g₁``)
    - Nesterov:  ``v ← μ v + g``,  ``θ ← θ − η (g + μ v)``

    Nesterov's method evaluates the gradient at the look-ahead point ``φ − η μ v`` of its iterate ``φ`` (Sutskever et
    al., 2013); PyTorch's form above is the same method after the change of variables ``θ = φ − η μ v``: its ``θ`` is
    the look-ahead point, so the gradient is taken at ``θ``.
    """

    lr: float
    momentum: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        _check_positive(lr=self.lr)
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("Nesterov needs momentum > 0")

    def init(self, theta: Tensor) -> State:
        return {"v": torch.zeros_like(theta)} if self.momentum else {}

    def update(self, theta: Tensor, g: Tensor, state: State) -> tuple[Tensor, State]:
        if not self.momentum:
            return theta - self.lr * g, state
        v = self.momentum * state["v"] + g
        step = g + self.momentum * v if self.nesterov else v
        return theta - self.lr * step, {"v": v}

    def torch_optimizer(self, params: Iterable[Tensor]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov)


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba, 2015), as ``torch.optim.Adam``: with step count ``t``,

    ``m ← β₁ m + (1 − β₁) g``,  ``s ← β₂ s + (1 − β₂) g²``,
    ``θ ← θ − η (m / (1 − β₁ᵗ)) / (√(s / (1 − β₂ᵗ)) + ε)``.
    """

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        _check_positive(lr=self.lr, eps=self.eps)
        for name, b in (("beta1", self.beta1), ("beta2", self.beta2)):
            if not 0 <= b < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {b!r}")

    def init(self, theta: Tensor) -> State:
        return {"m": torch.zeros_like(theta), "s": torch.zeros_like(theta), "t": 0}

    def update(self, theta: Tensor, g: Tensor, state: State) -> tuple[Tensor, State]:
        t = state["t"] + 1
        m = self.beta1 * state["m"] + (1 - self.beta1) * g
        s = self.beta2 * state["s"] + (1 - self.beta2) * g * g
        m_hat = m / (1 - self.beta1**t)
        s_hat = s / (1 - self.beta2**t)
        return theta - self.lr * m_hat / (s_hat.sqrt() + self.eps), {"m": m, "s": s, "t": t}

    def torch_optimizer(self, params: Iterable[Tensor]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=self.lr, betas=(self.beta1, self.beta2), eps=self.eps)


@dataclass(frozen=True)
class Adadelta:
    """Adadelta (Zeiler, 2012), as ``torch.optim.Adadelta``: a step with the *units* of θ, no learning rate needed
    (``lr`` = 1 in the paper; PyTorch multiplies the step by it):

    ``s ← ρ s + (1 − ρ) g²``,  ``Δ = √(u + ε) / √(s + ε) · g``,  ``u ← ρ u + (1 − ρ) Δ²``,  ``θ ← θ − η Δ``.
    """

    lr: float = 1.0
    rho: float = 0.9
    eps: float = 1e-6

    def __post_init__(self) -> None:
        _check_positive(lr=self.lr, eps=self.eps)
        if not 0 <= self.rho < 1:
            raise ValueError(f"rho must lie in [0, 1), got {self.rho!r}")

    def init(self, theta: Tensor) -> State:
        return {"s": torch.zeros_like(theta), "u": torch.zeros_like(theta)}

    def update(self, theta: Tensor, g: Tensor, state: State) -> tuple[Tensor, State]:
        s = self.rho * state["s"] + (1 - self.rho) * g * g
        delta = (state["u"] + self.eps).sqrt() / (s + self.eps).sqrt() * g
        u = self.rho * state["u"] + (1 - self.rho) * delta * delta
        return theta - self.lr * delta, {"s": s, "u": u}

    def torch_optimizer(self, params: Iterable[Tensor]) -> torch.optim.Optimizer:
        return torch.optim.Adadelta(params, lr=self.lr, rho=self.rho, eps=self.eps)


Rule = Union[SGD, Adam, Adadelta]


#: The momentum μ of the book's momentum and Nesterov runs (the one value used everywhere, ``training.OPTIMIZERS`` too).
MOMENTUM = 0.9
#: The five rules of chapter 1, by name.
NAMES = ("sgd", "momentum", "nesterov", "adam", "adadelta")


def rule(name: str, lr: float, *, momentum: float = MOMENTUM) -> Rule:
    """One of the five rules by name (:data:`NAMES`) with learning rate ``lr``; momentum and Nesterov use
    ``momentum`` (default :data:`MOMENTUM`), Adam and Adadelta ``torch.optim``'s default hyperparameters."""
    if name == "sgd":
        return SGD(lr)
    if name == "momentum":
        return SGD(lr, momentum=momentum)
    if name == "nesterov":
        return SGD(lr, momentum=momentum, nesterov=True)
    if name == "adam":
        return Adam(lr)
    if name == "adadelta":
        return Adadelta(lr)
    raise ValueError(f"unknown rule {name!r}; choose one of {NAMES}")


def rules(sgd_lr: float, adam_lr: float, *, momentum: float = MOMENTUM, momentum_lr: float | None = None,
          adadelta_lr: float = 1.0) -> dict[str, Rule]:
    """The five rules of chapter 1 by name: ``sgd``, ``momentum``, ``nesterov``, ``adam``, ``adadelta``.

    ``momentum_lr`` (default ``sgd_lr``) is the learning rate of the two momentum methods: with momentum μ their
    steps grow to ``1/(1 − μ)`` times the gradient along a steady slope, so a smaller rate is often fairer.
    """
    mlr = sgd_lr if momentum_lr is None else momentum_lr
    lrs = {"sgd": sgd_lr, "momentum": mlr, "nesterov": mlr, "adam": adam_lr, "adadelta": adadelta_lr}
    return {name: rule(name, lrs[name], momentum=momentum) for name in NAMES}


def _check(rule: Rule, loss_fn: LossFn, theta0: Tensor, steps: int) -> None:
    if not isinstance(rule, (SGD, Adam, Adadelta)):
        raise ValueError(f"rule must be SGD, Adam or Adadelta, got {rule!r}")
    if not callable(loss_fn):
        raise ValueError("loss_fn must be a callable loss_fn(theta, step) -> scalar tensor")
    if not isinstance(theta0, Tensor) or not theta0.is_floating_point():
        raise ValueError("theta0 must be a floating-point tensor")
    nonnegative_int("steps", steps)


def _grad(loss_fn: LossFn, theta: Tensor, step: int) -> Tensor:
    theta = theta.detach().requires_grad_(True)
    loss = loss_fn(theta, step)
    if loss.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
    (g,) = torch.autograd.grad(loss, theta)
    return g


def trajectory(rule: Rule, loss_fn: LossFn, theta0: Tensor, steps: int) -> Tensor:
    """The path ``θ₀, θ₁, …, θ_steps`` of the hand-written ``rule`` on ``loss_fn(θ, step)`` (rows of the result).

    Gradients come from ``torch.autograd``; the update is the rule's own few lines.
    """
    _check(rule, loss_fn, theta0, steps)
    theta = theta0.detach().clone()
    state = rule.init(theta)
    path = [theta]
    for t in range(steps):
        theta, state = rule.update(theta, _grad(loss_fn, theta, t), state)
        path.append(theta)
    return torch.stack(path)


def torch_trajectory(rule: Rule, loss_fn: LossFn, theta0: Tensor, steps: int) -> Tensor:
    """The path of the matching ``torch.optim`` optimizer (``rule.torch_optimizer``) on the same loss."""
    _check(rule, loss_fn, theta0, steps)
    theta = theta0.detach().clone().requires_grad_(True)
    opt = rule.torch_optimizer([theta])
    path = [theta.detach().clone()]
    for t in range(steps):
        opt.zero_grad()
        loss_fn(theta, t).backward()
        opt.step()
        path.append(theta.detach().clone())
    return torch.stack(path)
