"""Weight initialisation and the signal it lets through a deep network: forward variances, per-layer gradients.

For a layer ``k = W x + b`` with weights drawn independently, mean 0, variance Var(w), and ``b = 0``,

    Var(kᵢ) = Σⱼ Var(wᵢⱼ xⱼ) = fan_in · Var(w) · E[x²],

so the second moment passes unchanged from a layer's input to its pre-activations when ``fan_in · Var(w) = 1``
(LeCun; right for a first layer fed standardised data), and from one layer's pre-activations to the next one's when
``Var(w) = 2/fan_in``, since a ReLU halves it (Kaiming: He et al., 2015); ``2/(fan_in + fan_out)`` is the
compromise between the forward and backward pass (Xavier: Glorot & Bengio, 2010). PyTorch's default *weights* for ``nn.Linear`` are
uniform on ±1/√fan_in, i.e. ``Var(w) = 1/(3 fan_in)``; its default *biases* are uniform on ±1/√fan_in too.

:func:`initialize_` sets biases to 0 unless asked for PyTorch's biases (``bias="torch"``), and can give the first
layer a scheme of its own (``first="lecun"``: its input is not a ReLU output).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import positive_int
from .models import MLP

__all__ = ["SCHEMES", "BIASES", "init_std", "initialize_", "deep_mlp", "signal_stats"]

SCHEMES = ("default", "lecun", "xavier", "kaiming")
BIASES = ("zero", "torch")


def init_std(fan_in: int, fan_out: int, scheme: str) -> float:
    """The standard deviation of the weights of a ``fan_in → fan_out`` layer under ``scheme`` (see :data:`SCHEMES`;
    ``"default"`` is the standard deviation of PyTorch's default uniform weights)."""
    if not (isinstance(fan_in, int) and isinstance(fan_out, int) and fan_in > 0 and fan_out > 0):
        raise ValueError(f"fan_in and fan_out must be positive integers, got {fan_in!r} and {fan_out!r}")
    if scheme == "default":
        return 1 / math.sqrt(3 * fan_in)
    if scheme == "lecun":
        return 1 / math.sqrt(fan_in)
    if scheme == "xavier":
        return math.sqrt(2 / (fan_in + fan_out))
    if scheme == "kaiming":
        return math.sqrt(2 / fan_in)
    raise ValueError(f"unknown scheme {scheme!r}; choose one of {SCHEMES}")


def initialize_(model: nn.Module, scheme: str, *, first: str | None = None, bias: str = "zero",
                seed: int = 0) -> nn.Module:
    """Re-draw every ``nn.Linear`` of ``model`` in place and return it.

    Weights come from ``scheme`` (Gaussian; PyTorch's own uniform on ±1/√fan_in for ``"default"``); the first
    ``nn.Linear`` uses ``first`` instead when given (e.g. ``"lecun"`` in a ReLU network, whose first layer sees the
    inputs rather than ReLU outputs). Biases are 0 (``bias="zero"``, so that the variance rule holds exactly) or
    PyTorch's default uniform on ±1/√fan_in (``bias="torch"``; with ``scheme="default"`` this is ``nn.Linear``'s own
    initialisation). The draws come from ``seed`` (on the CPU, then moved), so they match on any device.
    """
    for name, value in (("scheme", scheme), ("first", scheme if first is None else first)):
        if value not in SCHEMES:
            raise ValueError(f"unknown {name} {value!r}; choose one of {SCHEMES}")
    if bias not in BIASES:
        raise ValueError(f"unknown bias {bias!r}; choose one of {BIASES}")
    g = torch.Generator().manual_seed(seed)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for i, m in enumerate(linears):
            out_f, in_f = m.weight.shape
            sch = first if (i == 0 and first is not None) else scheme
            std = init_std(in_f, out_f, sch)
            if sch == "default":
                w = (torch.rand(out_f, in_f, generator=g, dtype=torch.float64) * 2 - 1) * math.sqrt(3) * std
            else:
                w = torch.randn(out_f, in_f, generator=g, dtype=torch.float64) * std
            m.weight.copy_(w.to(m.weight))
            if m.bias is not None:
                if bias == "torch":
                    b = (torch.rand(out_f, generator=g, dtype=torch.float64) * 2 - 1) / math.sqrt(in_f)
                    m.bias.copy_(b.to(m.bias))
                else:
                    m.bias.zero_()
    return model


def deep_mlp(depth: int, width: int, activation: str, scheme: str, *, first: str | None = None, bias: str = "zero",
             in_features: int = 784, out_features: int = 10, seed: int = 0) -> MLP:
    """An :class:`~cl_utils.models.MLP` with ``depth`` hidden layers of ``width`` units, initialised by
    :func:`initialize_` (``scheme``, ``first``, ``bias``, ``seed``)."""
    positive_int("depth", depth)
    model = MLP(in_features, (width,) * depth, out_features, activation=activation)
    return initialize_(model, scheme, first=first, bias=bias, seed=seed)


def signal_stats(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, dict[str, float]]:
    """How the signal travels through ``model``'s linear layers on the batch ``(x, y)`` (mean cross-entropy loss).

    Returns ``{"forward": {name: E[k²]}, "grad_norm": {name: ‖∂L/∂W‖}}``, both keyed by the weight's parameter
    name in ``model.named_parameters()`` order: the second moment of each layer's pre-activations ``k`` (over the
    batch and units) and the Frobenius norm of the gradient of each weight matrix.
    """
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"need x of shape N×D and labels of length N, got {tuple(x.shape)} and {tuple(y.shape)}")
    names = {m: n for n, m in model.named_modules()}
    moments: dict[str, Tensor] = {}

    def record(mod: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        moments[f"{names[mod]}.weight"] = (out.detach() ** 2).mean()

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    finally:
        for h in hooks:
            h.remove()
    weights = [n for n, p in model.named_parameters() if n in moments]
    grads = dict(model.named_parameters())
    return {
        "forward": {n: float(moments[n]) for n in weights},
        "grad_norm": {n: float(grads[n].grad.norm()) for n in weights},
    }
