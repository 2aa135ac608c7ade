"""Two-dimensional loss surfaces for pictures of optimizer paths and of penalised optima.

Each surface is a function of a tensor whose last dimension is 2 (one point ``(θ₁, θ₂)`` or a batch of them), so
the same function gives the loss an optimizer sees and the grid a contour plot draws (:func:`grid`).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

__all__ = ["rosenbrock", "quadratic", "least_squares", "grid"]

Surface = Callable[[Tensor], Tensor]


def _check_points(theta: Tensor) -> None:
    if not isinstance(theta, Tensor) or theta.shape[-1:] != (2,):
        raise ValueError(f"expected points with last dimension 2, got {getattr(theta, 'shape', theta)!r}")


def rosenbrock(theta: Tensor, a: float = 1.0, b: float = 100.0) -> Tensor:
    """Rosenbrock's banana ``(a − θ₁)² + b (θ₂ − θ₁²)²``; minimum 0 at ``(a, a²)`` at the end of a curved valley."""
    _check_points(theta)
    x, y = theta[..., 0], theta[..., 1]
    return (a - x) ** 2 + b * (y - x**2) ** 2


def quadratic(condition: float = 10.0, angle: float = math.pi / 6) -> Surface:
    """An ill-conditioned quadratic bowl ``½ θᵀ A θ``: eigenvalues 1 and ``condition``, axes rotated by ``angle``.

    Returns the surface as a function; its Hessian ``A`` is attached as ``.hessian`` (float64).
    """
    if not condition >= 1:
        raise ValueError(f"condition must be >= 1, got {condition!r}")
    c, s = math.cos(angle), math.sin(angle)
    R = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    A = R @ torch.diag(torch.tensor([1.0, float(condition)], dtype=torch.float64)) @ R.T

    def f(theta: Tensor) -> Tensor:
        _check_points(theta)
        At = A.to(theta.dtype).to(theta.device)
        return 0.5 * ((theta @ At) * theta).sum(-1)

    f.hessian = A  # type: ignore[attr-defined]
    return f


def least_squares(X: Tensor, y: Tensor) -> Surface:
    """``½ ‖y − X θ‖²`` for a design ``X`` with two columns, as a surface over θ."""
    if X.ndim != 2 or X.shape[1] != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"need X of shape N×2 and y of length N, got {tuple(X.shape)} and {tuple(y.shape)}")

    def f(theta: Tensor) -> Tensor:
        _check_points(theta)
        r = y.to(theta.dtype) - theta @ X.to(theta.dtype).T  # (..., N)
        return 0.5 * (r**2).sum(-1)

    return f


def grid(f: Surface, x_range: tuple[float, float], y_range: tuple[float, float], n: int = 101
         ) -> tuple[Tensor, Tensor, Tensor]:
    """``(xs, ys, Z)`` with ``Z[i, j] = f((xs[j], ys[i]))`` on an ``n``×``n`` grid (plotly's contour layout)."""
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if not (x_range[0] < x_range[1] and y_range[0] < y_range[1]):
        raise ValueError(f"ranges must be increasing, got {x_range} and {y_range}")
    xs = torch.linspace(*x_range, n, dtype=torch.float64)
    ys = torch.linspace(*y_range, n, dtype=torch.float64)
    Y, Xg = torch.meshgrid(ys, xs, indexing="ij")
    return xs, ys, f(torch.stack([Xg, Y], -1))
