"""Regularisers as priors: the MAP estimates of linear least squares under L2, L1 and dropout, in closed form.

With Gaussian noise of variance σ², ``y = Xθ + ε``, the negative log-posterior times σ² is

- Gaussian prior N(0, σ₀² I):  ``½‖y − Xθ‖² + (λ/2)‖θ‖²`` with ``λ = σ²/σ₀²``   (:func:`ridge`; the ½ as in the book)
- Laplace prior ∝ exp(−|θⱼ|/b): ``½‖y − Xθ‖² + λ‖θ‖₁``    with ``λ = σ²/b``     (:func:`lasso`)

plus constants that do not depend on θ. Input dropout with keep-probability p (inverted: kept inputs scaled by 1/p)
makes the *expected* squared loss ``½‖y − Xθ‖² + ½ (1−p)/p Σⱼ (XᵀX)ⱼⱼ θⱼ²``, a ridge penalty scaled per input
(:func:`dropout_ridge`; Srivastava et al., 2014; Wager et al., 2013). All functions compute in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "ridge",
    "lasso",
    "soft_threshold",
    "dropout_ridge",
    "dropout_penalty",
    "penalty",
    "lambda_gaussian_prior",
    "lambda_laplace_prior",
]


def _design(X: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(X, Tensor) or not isinstance(y, Tensor) or X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"need X of shape N×D and y of length N, got {getattr(X, 'shape', X)} and "
                         f"{getattr(y, 'shape', y)}")
    return X.double(), y.double()


def _check_lam(lam: float) -> None:
    if not isinstance(lam, (int, float)) or isinstance(lam, bool) or lam < 0:
        raise ValueError(f"lam must be a number >= 0, got {lam!r}")


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise ValueError(f"{name} must be a number > 0, got {v!r}")


def _check_keep(keep: float) -> None:
    if not isinstance(keep, (int, float)) or isinstance(keep, bool) or not 0 < keep <= 1:
        raise ValueError(f"keep must be a number in (0, 1], got {keep!r}")


def _check_theta(theta: Tensor, dim: int | None = None) -> None:
    if not isinstance(theta, Tensor) or theta.ndim == 0 or not theta.is_floating_point():
        raise ValueError(f"theta must be a floating-point tensor of shape (D,) or (K, D), got "
                         f"{getattr(theta, 'shape', type(theta).__name__)}")
    if dim is not None and theta.shape[-1] != dim:
        raise ValueError(f"theta must end in dimension {dim} (the columns of X), got shape {tuple(theta.shape)}")


def lambda_gaussian_prior(noise_var: float, prior_var: float) -> float:
    """The L2 strength λ (with the ½: (λ/2)‖θ‖²) of a Gaussian prior N(0, prior_var·I) under noise variance σ², for
    the *summed* squared error ½‖y − Xθ‖² (with the mean loss ½‖y − Xθ‖²/N the same prior gives λ/N)."""
    _check_positive(noise_var=noise_var, prior_var=prior_var)
    return noise_var / prior_var


def lambda_laplace_prior(noise_var: float, scale: float) -> float:
    """The L1 strength λ (λ‖θ‖₁) of a Laplace prior with density exp(−|θⱼ|/b)/(2b), ``b = scale``, for the summed
    squared error (λ/N for the mean loss)."""
    _check_positive(noise_var=noise_var, scale=scale)
    return noise_var / scale


def penalty(theta: Tensor, kind: str, lam: float) -> Tensor:
    """``(λ/2)‖θ‖²`` for ``kind="l2"``, ``λ‖θ‖₁`` for ``kind="l1"`` (over the last dimension)."""
    _check_lam(lam)
    _check_theta(theta)
    if kind == "l2":
        return 0.5 * lam * (theta**2).sum(-1)
    if kind == "l1":
        return lam * theta.abs().sum(-1)
    raise ValueError(f"kind must be 'l2' or 'l1', got {kind!r}")


def ridge(X: Tensor, y: Tensor, lam: float) -> Tensor:
    """``argmin ½‖y − Xθ‖² + (λ/2)‖θ‖² = (XᵀX + λI)⁻¹ Xᵀy`` (the MAP under a Gaussian prior; λ = 0: least squares)."""
    X, y = _design(X, y)
    _check_lam(lam)
    A = X.T @ X + lam * torch.eye(X.shape[1], dtype=X.dtype, device=X.device)
    return torch.linalg.solve(A, X.T @ y)


def soft_threshold(z: Tensor, t: float | Tensor) -> Tensor:
    """``sign(z) · max(|z| − t, 0)``: the minimiser of ``½(θ − z)² + t|θ|`` (exactly 0 when ``|z| ≤ t``)."""
    if not isinstance(z, Tensor):
        raise ValueError(f"z must be a tensor, got {type(z).__name__}")
    if isinstance(t, bool) or not isinstance(t, (int, float, Tensor)) or bool((torch.as_tensor(t) < 0).any()):
        raise ValueError(f"threshold must be a number or tensor >= 0, got {t!r}")
    return torch.sign(z) * (z.abs() - t).clamp(min=0)


def lasso(X: Tensor, y: Tensor, lam: float, *, tol: float = 1e-13, max_sweeps: int = 100_000) -> Tensor:
    """``argmin ½‖y − Xθ‖² + λ‖θ‖₁`` (the MAP under a Laplace prior) by cyclic coordinate descent.

    Each coordinate step is a :func:`soft_threshold`, so coordinates become *exactly* zero. Stops when a sweep moves
    no coordinate by more than ``tol`` (relative to the solution's scale). Columns of ``X`` must be non-zero.
    """
    X, y = _design(X, y)
    _check_lam(lam)
    col_sq = (X**2).sum(0)
    if (col_sq == 0).any():
        raise ValueError("every column of X must be non-zero for the lasso's coordinate steps")
    theta = torch.zeros(X.shape[1], dtype=X.dtype, device=X.device)
    r = y.clone()
    for _ in range(max_sweeps):
        biggest = 0.0
        for j in range(X.shape[1]):
            old = theta[j].clone()
            z = X[:, j] @ r + col_sq[j] * old  # x_jᵀ (residual without coordinate j)
            theta[j] = soft_threshold(z, lam) / col_sq[j]
            r -= X[:, j] * (theta[j] - old)
            biggest = max(biggest, float((theta[j] - old).abs()))
        if biggest <= tol * max(1.0, float(theta.abs().max())):
            return theta
    raise RuntimeError(f"lasso did not converge in {max_sweeps} sweeps (tol={tol})")


def dropout_penalty(X: Tensor, theta: Tensor, keep: float) -> Tensor:
    """The extra expected loss from input dropout: ``½ (1−p)/p Σⱼ (XᵀX)ⱼⱼ θⱼ²`` (``p = keep``), for θ of shape (D,)
    or (K, D) with ``X`` of shape N×D."""
    if not isinstance(X, Tensor) or X.ndim != 2:
        raise ValueError(f"X must be a matrix N×D, got {getattr(X, 'shape', type(X).__name__)}")
    _check_theta(theta, X.shape[1])
    _check_keep(keep)
    return 0.5 * (1 - keep) / keep * ((X.double() ** 2).sum(0) * theta.double() ** 2).sum(-1)


def dropout_ridge(X: Tensor, y: Tensor, keep: float) -> Tensor:
    """The minimiser of the expected squared loss under inverted input dropout with keep-probability ``keep``:
    ``(XᵀX + (1−p)/p · diag(XᵀX))⁻¹ Xᵀy``."""
    X, y = _design(X, y)
    _check_keep(keep)
    G = X.T @ X
    return torch.linalg.solve(G + (1 - keep) / keep * torch.diag(G.diagonal()), X.T @ y)
