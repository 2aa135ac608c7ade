"""Bayesian linear regression: a model where Bayes' rule for the parameters can be done exactly, in float64.

Model: ``y = Xθ + ε`` with ``ε ~ N(0, σ² I)`` (σ² known) and a Gaussian prior ``θ ~ N(m₀, Λ₀⁻¹)``. The posterior is
Gaussian again (the prior is *conjugate*):

    Λ_N = Λ₀ + XᵀX / σ²,    m_N = Λ_N⁻¹ (Λ₀ m₀ + Xᵀy / σ²),

and the evidence (marginal likelihood) ``p(y) = ∫ p(y|θ) p(θ) dθ = N(y; X m₀, X Λ₀⁻¹ Xᵀ + σ² I)`` has a closed form
too (:func:`log_evidence`). Because a posterior is again a Gaussian, it can serve as the prior for the next data
set: the posterior after task A then task B equals the posterior on A ∪ B (:func:`two_task_terms` checks the
exact identity ``log p(θ|A,B) = log p(B|θ) + log p(θ|A) − log p(B|A)``).

Gaussians are stored by mean and *precision* (inverse covariance), the form in which data add up and the form a
Laplace approximation produces (its precision is a Hessian). Bishop (2006), §3.3 and §3.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor

from .checks import positive_int
from .regularizers import _check_positive, _design

__all__ = ["Gaussian", "Stats", "log_likelihood", "posterior", "log_evidence", "predictive", "two_task_terms",
           "regression_design", "sign_accuracy"]

_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class Gaussian:
    """A multivariate normal ``N(mean, precision⁻¹)`` in float64. ``mean`` has shape (D,), ``precision`` (D, D)."""

    mean: Tensor
    precision: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.mean, Tensor) or self.mean.ndim != 1:
            raise ValueError(f"mean must be a vector, got {getattr(self.mean, 'shape', self.mean)!r}")
        d = self.mean.shape[0]
        if not isinstance(self.precision, Tensor) or self.precision.shape != (d, d):
            raise ValueError(f"precision must have shape ({d}, {d}), got {getattr(self.precision, 'shape', None)}")
        object.__setattr__(self, "mean", self.mean.double())
        object.__setattr__(self, "precision", self.precision.double())

    @classmethod
    def isotropic(cls, dim: int, var: float, mean: Tensor | None = None) -> Gaussian:
        """``N(mean, var · I)`` (mean 0 by default): the usual weight prior."""
        if not isinstance(dim, int) or dim < 1 or not var > 0:
            raise ValueError(f"need dim >= 1 and var > 0, got dim={dim!r}, var={var!r}")
        m = torch.zeros(dim, dtype=torch.float64) if mean is None else mean
        return cls(m, torch.eye(dim, dtype=torch.float64) / var)

    @classmethod
    def from_cov(cls, mean: Tensor, cov: Tensor) -> Gaussian:
        """``N(mean, cov)`` from a covariance matrix."""
        return cls(mean, torch.cholesky_inverse(_cholesky(cov.double(), "cov")))

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    @property
    def cov(self) -> Tensor:
        """The covariance ``precision⁻¹``."""
        return torch.cholesky_inverse(_cholesky(self.precision, "precision"))

    def logdet_precision(self) -> Tensor:
        """``log |Λ|`` (= −log |Σ|)."""
        return 2 * _cholesky(self.precision, "precision").diagonal().log().sum()

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws (rows), ``mean + L⁻ᵀ z`` with ``Λ = L Lᵀ`` and ``z`` standard normal (CPU generator)."""
        positive_int("n", n)
        z = torch.randn(self.dim, n, generator=generator, dtype=torch.float64).to(self.mean.device)
        L = _cholesky(self.precision, "precision")
        return self.mean + torch.linalg.solve_triangular(L.T, z, upper=True).T

    def log_prob(self, theta: Tensor) -> Tensor:
        """``log N(θ; mean, Λ⁻¹) = −½ D log 2π + ½ log|Λ| − ½ (θ − mean)ᵀ Λ (θ − mean)``, θ of shape (D,) or (K, D)."""
        if theta.shape[-1:] != (self.dim,):
            raise ValueError(f"theta must end in dimension {self.dim}, got {tuple(theta.shape)}")
        d = theta.double() - self.mean
        quad = ((d @ self.precision) * d).sum(-1)
        return -0.5 * self.dim * _LOG_2PI + 0.5 * self.logdet_precision() - 0.5 * quad


def _cholesky(A: Tensor, what: str) -> Tensor:
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) != 0:
        raise ValueError(f"{what} is not symmetric positive definite")
    return L


@dataclass(frozen=True)
class Stats:
    """The sufficient statistics of a data set ``(X, y)`` for this model: ``XᵀX``, ``Xᵀy``, ``yᵀy`` and ``N``.

    Everything the model computes depends on the data only through them, and two data sets pool by adding their
    statistics (``Stats.of(Xa, ya) + Stats.of(Xb, yb)`` is the statistics of A ∪ B), so a large data set is
    reduced once to D×D numbers.
    """

    xtx: Tensor
    xty: Tensor
    yty: Tensor
    n: int

    @classmethod
    def of(cls, X: Tensor, y: Tensor) -> Stats:
        """The statistics of ``(X, y)``, computed in float64."""
        X, y = _design(X, y)
        return cls(X.T @ X, X.T @ y, y @ y, len(y))

    @property
    def dim(self) -> int:
        return self.xty.shape[0]

    def __add__(self, other: Stats) -> Stats:
        if not isinstance(other, Stats) or other.dim != self.dim:
            return NotImplemented
        return Stats(self.xtx + other.xtx, self.xty + other.xty, self.yty + other.yty, self.n + other.n)

    def sq_error(self, theta: Tensor) -> Tensor:
        """``‖y − Xθ‖² = yᵀy − 2 θᵀXᵀy + θᵀXᵀXθ`` for θ of shape (D,) or (K, D)."""
        theta = theta.double()
        return self.yty - 2 * theta @ self.xty + ((theta @ self.xtx) * theta).sum(-1)


Data = Union[Stats, "tuple[Tensor, Tensor]"]


def _check_dim(features: int, dim: int | None) -> None:
    if dim is not None and features != dim:
        raise ValueError(f"the data have {features} features but the Gaussian has dimension {dim}")


def _pair(data: Data, dim: int | None, noise_var: float) -> tuple[Tensor, Tensor]:
    """``data = (X, y)`` checked (shapes, ``dim`` features, σ² > 0) and in float64, without forming XᵀX."""
    _check_positive(noise_var=noise_var)
    X, y = _design(*data)
    _check_dim(X.shape[1], dim)
    return X, y


def _stats(data: Data, dim: int | None, noise_var: float) -> Stats:
    _check_positive(noise_var=noise_var)
    if isinstance(data, Stats):
        _check_dim(data.dim, dim)
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return Stats.of(*_pair(data, dim, noise_var))
    raise ValueError(f"data must be an (X, y) pair or a Stats, got {type(data).__name__}")


def log_likelihood(theta: Tensor, data: Data, noise_var: float) -> Tensor:
    """``log p(y | X, θ) = Σₙ log N(yₙ; xₙᵀθ, σ²)``, for θ of shape (D,) or (K, D) (one value per row).

    ``data`` is ``(X, y)`` or their :class:`Stats`.
    """
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        X, y = _pair(data, theta.shape[-1], noise_var)
        sq = ((y - theta.double() @ X.T) ** 2).sum(-1)
        n = len(y)
    else:
        st = _stats(data, theta.shape[-1], noise_var)
        sq, n = st.sq_error(theta), st.n
    return -0.5 * n * math.log(2 * math.pi * noise_var) - 0.5 * sq / noise_var


def posterior(prior: Gaussian, data: Data, noise_var: float) -> Gaussian:
    """The exact posterior ``p(θ | X, y)`` under ``prior``: ``Λ_N = Λ₀ + XᵀX/σ²``, ``m_N = Λ_N⁻¹(Λ₀m₀ + Xᵀy/σ²)``.

    ``data`` is ``(X, y)`` or their :class:`Stats`.
    """
    st = _stats(data, prior.dim, noise_var)
    prec = prior.precision + st.xtx / noise_var
    prec = 0.5 * (prec + prec.T)
    rhs = prior.precision @ prior.mean + st.xty / noise_var
    mean = torch.cholesky_solve(rhs[:, None], _cholesky(prec, "posterior precision"))[:, 0]
    return Gaussian(mean, prec)


def log_evidence(prior: Gaussian, data: Data, noise_var: float, *, method: str = "weights") -> Tensor:
    """``log p(y | X) = log ∫ p(y|X,θ) p(θ) dθ``, the log marginal likelihood (the evidence).

    ``method="function"``: ``log N(y; X m₀, X Λ₀⁻¹ Xᵀ + σ² I)``, an N×N Gaussian (the definition; cost O(N³);
    needs ``data = (X, y)``). ``method="weights"`` (default): the same number from D×D quantities only, with
    ``m_N``, ``Λ_N`` the posterior,
    ``−½ [N log 2πσ² + ‖y − X m_N‖²/σ² + (m_N − m₀)ᵀ Λ₀ (m_N − m₀) + log|Λ_N| − log|Λ₀|]``.
    """
    if method == "function":
        if isinstance(data, Stats):
            raise ValueError("method='function' needs data=(X, y), not Stats")
        X, y = _pair(data, prior.dim, noise_var)
        K = X @ prior.cov @ X.T + noise_var * torch.eye(len(y), dtype=X.dtype)
        L = _cholesky(0.5 * (K + K.T), "the evidence covariance")
        r = torch.linalg.solve_triangular(L, (y - X @ prior.mean)[:, None], upper=False)[:, 0]
        return -0.5 * len(y) * _LOG_2PI - L.diagonal().log().sum() - 0.5 * (r**2).sum()
    if method != "weights":
        raise ValueError(f"method must be 'weights' or 'function', got {method!r}")
    st = _stats(data, prior.dim, noise_var)
    post = posterior(prior, st, noise_var)
    d = post.mean - prior.mean
    return -0.5 * (st.n * math.log(2 * math.pi * noise_var) + st.sq_error(post.mean) / noise_var
                   + d @ prior.precision @ d + post.logdet_precision() - prior.logdet_precision())


def predictive(post: Gaussian, X: Tensor, noise_var: float = 0.0) -> tuple[Tensor, Tensor]:
    """Mean and variance of ``xᵀθ (+ ε)`` for each row of ``X`` under ``post`` (``noise_var=0``: the function alone)."""
    if X.ndim != 2 or X.shape[1] != post.dim or noise_var < 0:
        raise ValueError(f"need X of shape N×{post.dim} and noise_var >= 0, got {tuple(X.shape)} and {noise_var!r}")
    X = X.double()
    var = ((X @ post.cov) * X).sum(1) + noise_var
    return X @ post.mean, var


def two_task_terms(prior: Gaussian, task_a: Data, task_b: Data, noise_var: float, theta: Tensor) -> dict[str, Tensor]:
    """Every term of ``log p(θ|D_A,D_B) = log p(D_B|θ) + log p(θ|D_A) − log p(D_B|D_A)`` at ``theta``, in closed form.

    ``task_a``/``task_b`` are ``(X, y)`` pairs or their :class:`Stats`. Returns ``log_posterior_ab`` (the posterior
    on A ∪ B computed in one go from the prior), ``log_lik_b``, ``log_posterior_a``, ``log_evidence_b_given_a`` (the
    evidence of B under the prior p(θ|D_A)), ``log_evidence_b`` (under the original prior, for comparison) and
    ``rhs`` (the three terms combined).
    """
    sa, sb = _stats(task_a, prior.dim, noise_var), _stats(task_b, prior.dim, noise_var)
    post_a = posterior(prior, sa, noise_var)
    post_ab = posterior(prior, sa + sb, noise_var)
    lik_b = log_likelihood(theta, sb, noise_var)
    lp_a = post_a.log_prob(theta)
    ev_b_a = log_evidence(post_a, sb, noise_var)
    return {
        "log_posterior_ab": post_ab.log_prob(theta),
        "log_lik_b": lik_b,
        "log_posterior_a": lp_a,
        "log_evidence_b_given_a": ev_b_a,
        "log_evidence_b": log_evidence(prior, sb, noise_var),
        "rhs": lik_b + lp_a - ev_b_a,
    }


def regression_design(task: Any, split: str = "train") -> tuple[Tensor, Tensor]:
    """A two-class task as a regression problem for this model, in float64 on the CPU: the design ``X`` (the task's
    inputs and a constant 1 for the bias, N×(D+1)) and the targets ``y = 2·label − 1`` (−1 for label 0, +1 for 1).

    ``task`` is a :class:`cl_utils.data.Task` (or anything with ``train_x``/``train_y``/``test_x``/``test_y``) whose
    labels are 0 and 1, as in ``split_mnist(..., scenario="domain")``; ``split`` is ``"train"`` or ``"test"``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    x, labels = getattr(task, f"{split}_x", None), getattr(task, f"{split}_y", None)
    if not isinstance(x, Tensor) or not isinstance(labels, Tensor) or x.ndim != 2 or labels.shape != (x.shape[0],):
        raise ValueError(f"task must have {split}_x (N×D) and {split}_y (N) tensors, got {type(task).__name__}")
    if labels.numel() and not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError(f"labels must be 0 or 1 (a two-class task), got values {labels.unique().tolist()[:10]}")
    x = x.detach().cpu().double()
    return torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1), 2 * labels.detach().cpu().double() - 1


def sign_accuracy(theta: Tensor, data: "tuple[Tensor, Tensor]") -> float:
    """Test accuracy in % of the classifier ``sign(xᵀθ)`` on ``data = (X, y)`` with targets ±1 (a score of exactly 0
    counts as −1)."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError(f"data must be an (X, y) pair, got {type(data).__name__}")
    X, y = data
    if not isinstance(theta, Tensor) or X.ndim != 2 or theta.shape != (X.shape[1],) or y.shape != (X.shape[0],):
        raise ValueError(f"need theta of shape (D,), X of shape N×D and y of length N, got "
                         f"{tuple(getattr(theta, 'shape', ()))}, {tuple(X.shape)} and {tuple(y.shape)}")
    if not bool(((y == 1) | (y == -1)).all()):
        raise ValueError("targets y must be −1 or +1")
    if len(y) == 0:
        raise ValueError("sign_accuracy needs at least one sample")
    pred = torch.where(X.double() @ theta.double() > 0, 1.0, -1.0).to(torch.float64)
    return 100 * float((pred == y.double()).double().mean())
