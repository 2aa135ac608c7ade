"""The multilayer perceptron used throughout the book, single- or multi-head."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .checks import positive_int

__all__ = ["MLP", "forward"]

_ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


class MLP(nn.Module):
    """Fully connected network ``in_features → hidden... → out_features`` with one activation between layers.

    With ``heads > 1`` the last layer holds one block of ``out_features`` units per head (the task-incremental
    scenario): ``model(x, head=t)`` returns the logits of head ``t``; ``head`` may also be a tensor with one head
    index per sample. Parameters are named ``layers.<i>.weight``/``.bias`` (``nn.Sequential`` order).
    """

    def __init__(
        self,
        in_features: int = 784,
        hidden: Sequence[int] = (400, 400),
        out_features: int = 10,
        *,
        heads: int = 1,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if isinstance(hidden, int):
            raise ValueError(f"hidden must be a sequence of layer widths, e.g. ({hidden},) for one layer; got {hidden!r}")
        hidden = tuple(hidden)
        for name, value in (("in_features", in_features), ("out_features", out_features), ("heads", heads)):
            positive_int(name, value)
        if any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in hidden):
            raise ValueError(f"hidden must be a sequence of positive integers, got {hidden!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(_ACTIVATIONS)}")
        self.in_features, self.hidden, self.out_features, self.heads = in_features, hidden, out_features, heads
        self.activation = activation
        sizes = (in_features, *hidden)
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), _ACTIVATIONS[activation]()]
        layers.append(nn.Linear(sizes[-1], out_features * heads))
        self.layers = nn.Sequential(*layers)

    @classmethod
    def for_tasks(cls, tasks: Sequence[Any], hidden: Sequence[int] = (400, 400), **kwargs: Any) -> MLP:
        """An MLP sized for a task sequence: enough outputs for every task, one head per task that has one."""
        if len(tasks) == 0:
            raise ValueError("for_tasks needs at least one task")
        heads = [t.head for t in tasks if t.head is not None]
        return cls(
            tasks[0].train_x.shape[1], hidden, max(t.n_outputs for t in tasks),
            heads=max(heads) + 1 if heads else 1, **kwargs,
        )

    def forward(self, x: Tensor, head: int | Tensor | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"expected input of shape N×{self.in_features}, got {tuple(x.shape)}")
        out = self.layers(x)
        if self.heads == 1:
            if head not in (None, 0) and not isinstance(head, Tensor):
                raise ValueError(f"this MLP has a single head; got head={head!r}")
            return out
        if head is None:
            raise ValueError(f"this MLP has {self.heads} heads: pass head=<task index> (or one index per sample)")
        out = out.view(len(x), self.heads, self.out_features)
        if isinstance(head, Tensor):
            return out[torch.arange(len(x), device=x.device), head]
        if not 0 <= head < self.heads:
            raise ValueError(f"head must lie in 0..{self.heads - 1}, got {head}")
        return out[:, head]

    def extra_repr(self) -> str:
        return f"heads={self.heads}" if self.heads > 1 else ""


def forward(model: nn.Module, x: Tensor, head: int | Tensor | None = None) -> Tensor:
    """``model(x)``, passing ``head`` only when there is one, so single-head models of any kind work too."""
    return model(x) if head is None else model(x, head=head)
