"""Reverse-mode automatic differentiation by hand, on tensors (micrograd's idea, one tensor per node).

A :class:`Function` has a ``forward`` that computes its output from its inputs (and keeps what it will need), and
a ``backward`` that turns ∂l/∂output into ∂l/∂input for every input: one application of the chain rule. A
:class:`Var` remembers which function made it from which inputs, so a computation builds a graph; :func:`backward`
walks that graph from the loss back to the leaves in reverse topological order and *adds up* the contributions of
every path (the multivariate chain rule), exactly what ``torch.autograd`` does.

The affine map ``k = W x + b`` of a linear layer is the centre piece (:class:`Affine`); its backward is

    ∂l/∂W = (∂l/∂k) xᵀ,   ∂l/∂x = Wᵀ (∂l/∂k),   ∂l/∂b = ∂l/∂k,

and for a batch (rows of ``x``) the parameter gradients are summed over the batch. Everything here is checked
against ``torch.autograd`` in ``tests/test_foundations.py``.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

__all__ = [
    "Function",
    "Affine",
    "ReLU",
    "Sigmoid",
    "Tanh",
    "Add",
    "SoftmaxCrossEntropy",
    "Var",
    "apply",
    "backward",
    "topological_order",
    "leaves",
    "graph_layout",
]


class Function:
    """One node type of a computation graph. Subclasses implement ``forward`` and ``backward``.

    ``forward(*inputs)`` returns the output tensor and may store tensors on ``self`` for the backward pass;
    ``backward(grad_out)`` returns one gradient per input (``None`` for inputs that need none, such as labels).
    Use a fresh instance per call (it holds that call's saved tensors).
    """

    def forward(self, *inputs: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def backward(self, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, *inputs: Tensor) -> Tensor:
        return self.forward(*inputs)

    def __getattr__(self, name: str) -> object:  # only reached for a missing attribute: a saved tensor, before forward
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"{type(self).__name__} has no saved {name!r}: call forward before backward")


class Affine(Function):
    """``k = W x + b``: ``W`` is out×in, ``b`` has length out, ``x`` is one vector (in) or a batch (N×in, one row
    per sample, giving N×out). The backward returns ``(∂l/∂W, ∂l/∂x, ∂l/∂b)``; over a batch the gradients of ``W``
    and ``b`` are sums over the samples (each sample's ``(∂l/∂k) xᵀ`` added up)."""

    def forward(self, W: Tensor, x: Tensor, b: Tensor) -> Tensor:
        if W.ndim != 2:
            raise ValueError(f"W must be a matrix (out×in), got shape {tuple(W.shape)}")
        if b.shape != (W.shape[0],):
            raise ValueError(f"b must have shape ({W.shape[0]},) to match W {tuple(W.shape)}, got {tuple(b.shape)}")
        if x.ndim not in (1, 2) or x.shape[-1] != W.shape[1]:
            raise ValueError(f"x must have shape ({W.shape[1]},) or N×{W.shape[1]}, got {tuple(x.shape)}")
        self.W, self.x = W, x
        return W @ x + b if x.ndim == 1 else x @ W.T + b

    def backward(self, grad_k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        W, x = self.W, self.x
        if x.ndim == 1:
            return torch.outer(grad_k, x), W.T @ grad_k, grad_k
        return grad_k.T @ x, grad_k @ W, grad_k.sum(0)


class ReLU(Function):
    """``max(0, k)`` elementwise; its derivative is 1 where ``k > 0`` and 0 elsewhere (torch's choice at 0)."""

    def forward(self, k: Tensor) -> Tensor:
        self.mask = k > 0
        return k.clamp(min=0)

    def backward(self, grad_out: Tensor) -> tuple[Tensor]:
        return (grad_out * self.mask,)


class Sigmoid(Function):
    """``σ(k) = 1 / (1 + e^{-k})``; ``σ'(k) = σ(k) (1 − σ(k)) ≤ 1/4``, the root of vanishing gradients."""

    def forward(self, k: Tensor) -> Tensor:
        self.out = torch.sigmoid(k)
        return self.out

    def backward(self, grad_out: Tensor) -> tuple[Tensor]:
        return (grad_out * self.out * (1 - self.out),)


class Tanh(Function):
    """``tanh(k)``; ``tanh'(k) = 1 − tanh(k)²``."""

    def forward(self, k: Tensor) -> Tensor:
        self.out = torch.tanh(k)
        return self.out

    def backward(self, grad_out: Tensor) -> tuple[Tensor]:
        return (grad_out * (1 - self.out**2),)


class Add(Function):
    """``a + b`` (same shapes): the gradient flows unchanged to both inputs."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if a.shape != b.shape:
            raise ValueError(f"Add needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
        return a + b

    def backward(self, grad_out: Tensor) -> tuple[Tensor, Tensor]:
        return grad_out, grad_out


class SoftmaxCrossEntropy(Function):
    """Mean cross-entropy of logits (N×C) against integer labels (N): ``−(1/N) Σₙ log softmax(kₙ)[yₙ]``.

    Its backward is the famous ``(softmax(k) − onehot(y)) / N``; labels get no gradient.
    """

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        if logits.ndim != 2 or y.shape != (logits.shape[0],):
            raise ValueError(f"need logits N×C and labels of length N, got {tuple(logits.shape)} and {tuple(y.shape)}")
        logp = torch.log_softmax(logits, dim=1)
        self.p, self.y = logp.exp(), y
        return -logp.gather(1, y[:, None]).mean()

    def backward(self, grad_out: Tensor) -> tuple[Tensor, None]:
        g = self.p.clone()
        g[torch.arange(len(self.y)), self.y] -= 1
        return grad_out * g / len(self.y), None


class Var:
    """A node of the computation graph: a tensor ``value``, the :class:`Function` that made it (None for a leaf)
    and its ``parents`` (the input nodes). After :func:`backward`, ``grad`` holds ∂l/∂value."""

    def __init__(self, value: Tensor, name: str = "", *, fn: Function | None = None,
                 parents: tuple["Var", ...] = ()) -> None:
        if not isinstance(value, Tensor):
            raise ValueError(f"Var holds a tensor, got {type(value).__name__}")
        self.value, self.name, self.fn, self.parents = value, name, fn, parents
        self.grad: Tensor | None = None

    def __repr__(self) -> str:
        op = type(self.fn).__name__ if self.fn is not None else "leaf"
        return f"Var({self.name or '?'}, {op}, shape={tuple(self.value.shape)})"


def apply(fn: Function, *inputs: Var, name: str = "") -> Var:
    """Run ``fn.forward`` on the inputs' values and return the output as a new node of the graph."""
    if not isinstance(fn, Function):
        raise ValueError(f"fn must be a Function instance, got {fn!r}")
    if not all(isinstance(v, Var) for v in inputs):
        raise ValueError("apply takes Var inputs (wrap tensors with Var(tensor, name))")
    return Var(fn.forward(*(v.value for v in inputs)), name, fn=fn, parents=tuple(inputs))


def topological_order(out: Var) -> list[Var]:
    """Every node that ``out`` depends on, each after all of its parents (``out`` last)."""
    order: list[Var] = []
    seen: set[int] = set()
    stack: list[tuple[Var, bool]] = [(out, False)]
    while stack:  # iterative depth-first search, so deep graphs do not hit Python's recursion limit
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        stack.extend((p, False) for p in reversed(node.parents) if id(p) not in seen)
    return order


def backward(out: Var, grad: Tensor | None = None) -> list[Var]:
    """Fill ``.grad`` of every node that ``out`` depends on with ∂out/∂node (times ``grad``).

    ``grad`` defaults to 1 for a scalar ``out``. Nodes are visited from ``out`` back to the leaves; each node's
    function maps its output gradient to its inputs' gradients, and a node used by several functions receives the
    *sum* of their contributions. Returns the nodes in topological order.
    """
    if grad is None:
        if out.value.numel() != 1:
            raise ValueError(f"backward from a non-scalar ({tuple(out.value.shape)}) needs an explicit grad")
        grad = torch.ones_like(out.value)
    elif grad.shape != out.value.shape:
        raise ValueError(f"grad must have the output's shape {tuple(out.value.shape)}, got {tuple(grad.shape)}")
    order = topological_order(out)
    for node in order:
        node.grad = None
    out.grad = grad
    for node in reversed(order):
        if node.fn is None or node.grad is None:
            continue
        grads = node.fn.backward(node.grad)
        for parent, g in zip(node.parents, grads):
            if g is None:
                continue
            parent.grad = g if parent.grad is None else parent.grad + g
    return order


def leaves(nodes: Iterable[Var]) -> list[Var]:
    """The leaf nodes (inputs and parameters) among ``nodes``."""
    return [n for n in nodes if n.fn is None]


def graph_layout(out: Var) -> tuple[list[dict], list[tuple[int, int]]]:
    """Where to draw each node of the graph behind ``out``, as plain data for a figure.

    Returns ``(nodes, edges)``: each node a dict with ``name``, ``op`` (the function that made it, or ``"input"``),
    ``shape``, ``column`` (operations one column right of their latest input; leaves just left of their first use)
    and ``row`` (position within the column); each edge a pair ``(parent index, child index)`` into ``nodes``.
    """
    order = topological_order(out)
    index = {id(n): i for i, n in enumerate(order)}
    col: dict[int, int] = {}
    for n in order:
        if n.fn is not None:
            col[id(n)] = 1 + max(col.get(id(p), 0) for p in n.parents)
    for n in order:  # leaves: one column left of the first operation that uses them
        if n.fn is None:
            users = [col[id(c)] for c in order if c.fn is not None and any(p is n for p in c.parents)]
            col[id(n)] = min(users) - 1 if users else 0
    rows: dict[int, int] = {}
    nodes = []
    for n in order:
        c = col[id(n)]
        rows[c] = rows.get(c, -1) + 1
        nodes.append({"name": n.name or "?", "op": type(n.fn).__name__ if n.fn is not None else "input",
                      "shape": tuple(n.value.shape), "column": c, "row": rows[c]})
    edges = [(index[id(p)], index[id(n)]) for n in order for p in n.parents]
    return nodes, edges
