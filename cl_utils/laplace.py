"""The Laplace approximation: a Gaussian at the mode of a posterior, with the inverse Hessian as its covariance.

Write the posterior as p(θ | D) = exp(−U(θ)) / Z with U(θ) = −log p(D | θ) − log p(θ), the negative log joint.
A second-order Taylor expansion of U at its minimum θ* (where the gradient vanishes) gives

    U(θ) ≈ U(θ*) + ½ (θ − θ*)ᵀ H (θ − θ*),   H = ∇²U(θ*),

so p(θ | D) ≈ N(θ*, H⁻¹) and Z ≈ exp(−U(θ*)) (2π)^{d/2} |H|^{−1/2}. :func:`laplace` finds θ* by Newton's method
with autograd derivatives and returns a :class:`LaplaceGaussian`, full or diagonal (keeping only diag H, as EWC
does). For small d, :func:`grid_posterior` gives the exact posterior on a grid to compare with, and
:func:`logistic_neg_log_posterior` / :func:`logistic_predictive` cover the book's Bayesian logistic regression.
Everything works on flat parameter vectors; use float64 for the curvature of well-determined posteriors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import positive_int

__all__ = [
    "LaplaceGaussian",
    "GridPosterior",
    "find_mode",
    "laplace",
    "grid_posterior",
    "logistic_neg_log_posterior",
    "logistic_predictive",
    "probit_approximation",
]

NegLogJoint = Callable[[Tensor], Tensor]
_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class LaplaceGaussian:
    """N(mean, precision⁻¹) fitted at the mode of exp(−U).

    ``precision`` is d×d (full) or a vector of length d (diagonal); ``u_at_mode`` is U(θ*), which fixes the
    Laplace estimate of the normaliser.
    """

    mean: Tensor
    precision: Tensor
    u_at_mode: Tensor

    @property
    def dim(self) -> int:
        """The number d of parameters."""
        return self.mean.numel()

    @property
    def diagonal(self) -> bool:
        """Whether the precision is diagonal (stored as the vector diag H) rather than a full d×d matrix."""
        return self.precision.ndim == 1

    @property
    def covariance(self) -> Tensor:
        """The d×d covariance H⁻¹ (diagonal: diag(1/Hᵢᵢ))."""
        if self.diagonal:
            return torch.diag(1 / self.precision)
        return torch.cholesky_inverse(torch.linalg.cholesky(self.precision))

    @property
    def variance(self) -> Tensor:
        """The marginal variances, diag(H⁻¹) (note: not 1/diag(H) unless the precision is diagonal)."""
        return self.covariance.diagonal()

    @property
    def log_det_precision(self) -> Tensor:
        """log |H|, the log-determinant of the precision (by Cholesky; Σᵢ log Hᵢᵢ when diagonal)."""
        if self.diagonal:
            return self.precision.log().sum()
        return 2 * torch.linalg.cholesky(self.precision).diagonal().log().sum()

    @property
    def log_normalizer(self) -> Tensor:
        """The Laplace estimate of log ∫ exp(−U(θ)) dθ = −U(θ*) + (d/2) log 2π − ½ log|H| (the log evidence)."""
        return -self.u_at_mode + 0.5 * self.dim * _LOG_2PI - 0.5 * self.log_det_precision

    def log_prob(self, theta: Tensor) -> Tensor:
        """Log density of the Gaussian at ``theta`` (shape ...×d)."""
        diff = theta - self.mean
        if self.diagonal:
            quad = (diff.square() * self.precision).sum(-1)
        else:
            quad = ((diff @ self.precision) * diff).sum(-1)
        return -0.5 * (quad + self.dim * _LOG_2PI - self.log_det_precision)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws (n×d): mean + L⁻ᵀ ε with H = L Lᵀ."""
        positive_int("n", n)
        eps = torch.randn(n, self.dim, dtype=self.mean.dtype, device=self.mean.device, generator=generator)
        if self.diagonal:
            return self.mean + eps / self.precision.sqrt()
        chol = torch.linalg.cholesky(self.precision)
        return self.mean + torch.linalg.solve_triangular(chol.t(), eps.t(), upper=True).t()


def _as_vector(theta: Tensor | Sequence[float], name: str = "theta0") -> Tensor:
    t = torch.as_tensor(theta)
    if not t.dtype.is_floating_point:
        t = t.to(torch.get_default_dtype())
    if t.ndim > 1:
        raise ValueError(f"{name} must be a flat parameter vector (or a scalar), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty")
    return t.reshape(-1).detach().clone()


def _scalar_fn(u: NegLogJoint) -> Callable[[Tensor], Tensor]:
    def f(theta: Tensor) -> Tensor:
        out = u(theta)
        if not isinstance(out, Tensor) or out.numel() != 1:
            raise ValueError("the negative log joint must return a scalar tensor for a flat parameter vector")
        return out.reshape(())
    return f


def find_mode(u: NegLogJoint, theta0: Tensor | Sequence[float], *, steps: int = 100, tol: float = 1e-10) -> Tensor:
    """The minimiser θ* of ``u`` by damped Newton steps with a backtracking line search (autograd derivatives).

    Stops when the Newton decrement is below ``tol``; steps that leave the domain (``u`` not finite) are halved.
    Raises ``ValueError`` if ``steps`` iterations do not converge.
    """
    positive_int("steps", steps)
    f = _scalar_fn(u)
    theta = _as_vector(theta0)
    value = f(theta).detach()
    if not torch.isfinite(value):
        raise ValueError(f"the negative log joint is not finite at theta0 (got {value.item()})")
    eye = torch.eye(theta.numel(), dtype=theta.dtype, device=theta.device)
    for _ in range(steps):
        g = torch.func.grad(f)(theta)
        h = torch.func.hessian(f)(theta)
        damping = 0.0
        while True:  # make the Newton system positive definite (Levenberg-style damping if it is not)
            chol, info = torch.linalg.cholesky_ex(h + damping * eye)
            if info == 0:
                break
            damping = max(2 * damping, 1e-8 * (1 + float(h.diagonal().abs().max())))
        step = torch.cholesky_solve(g[:, None], chol)[:, 0]
        decrement = float(g @ step)
        if decrement / 2 < tol:  # converged: one last full Newton step makes the error quadratically small
            candidate = theta - step
            return candidate if bool(torch.isfinite(f(candidate))) else theta
        t = 1.0
        while t > 1e-12:
            candidate = theta - t * step
            new = f(candidate).detach()
            if torch.isfinite(new) and new <= value - 1e-4 * t * decrement:
                break
            t /= 2
        else:
            return theta  # no descent possible at machine precision: we are at the minimum
        theta, value = candidate, new
    raise ValueError(f"Newton's method did not converge in {steps} steps (last decrement {decrement:.3g})")


def laplace(
    u: NegLogJoint,
    theta0: Tensor | Sequence[float],
    *,
    hessian: str = "full",
    optimize: bool = True,
) -> LaplaceGaussian:
    """The Laplace approximation of exp(−u(θ)): mode by :func:`find_mode` (unless ``optimize=False``, when
    ``theta0`` is taken as the mode), precision the Hessian of ``u`` there, ``"full"`` or ``"diag"`` (its
    diagonal only). The Hessian must be positive definite (a strict local minimum)."""
    if hessian not in ("full", "diag"):
        raise ValueError(f"hessian must be 'full' or 'diag', got {hessian!r}")
    f = _scalar_fn(u)
    mode = find_mode(u, theta0) if optimize else _as_vector(theta0)
    h = torch.func.hessian(f)(mode).detach()
    if hessian == "diag":
        h = h.diagonal().clone()
        if bool((h <= 0).any()):
            raise ValueError("the Hessian's diagonal is not positive at theta: not a minimum of u")
    elif torch.linalg.cholesky_ex(h).info != 0:
        raise ValueError("the Hessian is not positive definite at theta: not a strict minimum of u")
    return LaplaceGaussian(mean=mode, precision=h, u_at_mode=f(mode).detach())


@dataclass(frozen=True)
class GridPosterior:
    """The posterior exp(−U)/Z evaluated on a regular grid (1-D or 2-D): the 'exact' answer for small d.

    ``density[i, j]`` is at ``(axes[0][i], axes[1][j])``; it integrates to one over the grid (Riemann sum).
    """

    axes: tuple[Tensor, ...]
    density: Tensor
    log_normalizer: Tensor

    @property
    def points(self) -> Tensor:
        """All grid points as a G×d matrix (row-major over the axes)."""
        return torch.stack(torch.meshgrid(*self.axes, indexing="ij"), -1).reshape(-1, len(self.axes))

    @property
    def cell(self) -> float:
        """The volume of one grid cell (the product of the axes' spacings)."""
        return math.prod(float(a[1] - a[0]) for a in self.axes)

    @property
    def boundary_ratio(self) -> float:
        """The largest density on the grid's boundary divided by the largest density anywhere.

        The grid holds the posterior (its Riemann-sum normaliser and moments are trustworthy) only if this is tiny,
        say below 1e-8; a grid that cuts the posterior off shows a large value. (That the density sums to one
        over the grid is true by construction and says nothing.)
        """
        d = self.density
        edges = [d.select(i, j) for i in range(d.ndim) for j in (0, -1)]
        return float(max(float(e.max()) for e in edges) / float(d.max()))

    def expectation(self, fn: Callable[[Tensor], Tensor]) -> Tensor:
        """E[fn(θ)] under the grid posterior; ``fn`` maps G×d points to G×... values."""
        w = (self.density.reshape(-1) * self.cell).to(self.axes[0].dtype)
        vals = fn(self.points)
        return torch.tensordot(w, vals, dims=([0], [0]))

    @property
    def mean(self) -> Tensor:
        return self.expectation(lambda t: t)

    @property
    def covariance(self) -> Tensor:
        m = self.mean
        return self.expectation(lambda t: (t - m)[:, :, None] * (t - m)[:, None, :])


def grid_posterior(u: NegLogJoint, axes: Sequence[Tensor]) -> GridPosterior:
    """Evaluate exp(−u)/Z on the grid spanned by ``axes`` (1 or 2 evenly spaced 1-D tensors).

    ``u`` must accept a G×d batch of points and return G values. Z is the Riemann sum over the grid, so the grid
    must cover the posterior's mass.
    """
    axes = tuple(torch.as_tensor(a) for a in axes)
    if not 1 <= len(axes) <= 2 or any(a.ndim != 1 or len(a) < 2 for a in axes):
        raise ValueError("axes must be one or two 1-D tensors of at least two evenly spaced points")
    for a in axes:
        d = torch.diff(a)
        if not torch.allclose(d, d[0].expand_as(d), rtol=1e-6, atol=0) or d[0] <= 0:
            raise ValueError("each axis must be evenly spaced and increasing")
    pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes))
    vals = u(pts)
    if not isinstance(vals, Tensor) or vals.shape != (len(pts),):
        raise ValueError(f"u must map a G×d batch to G values; for G={len(pts)} it returned "
                         f"{getattr(vals, 'shape', type(vals))}")
    logp = -vals.detach()
    cell = math.prod(float(a[1] - a[0]) for a in axes)
    log_z = torch.logsumexp(logp, 0) + math.log(cell)
    density = (logp - log_z).exp().reshape(*(len(a) for a in axes))
    return GridPosterior(axes=axes, density=density, log_normalizer=log_z)


def logistic_neg_log_posterior(x: Tensor, y: Tensor, prior_precision: float = 1.0) -> NegLogJoint:
    """U(θ) = Σₙ [softplus(aₙ) − yₙ aₙ] + (α/2)|θ|² with aₙ = xₙᵀθ: logistic regression, labels y ∈ {0, 1},
    Gaussian prior N(0, α⁻¹ I) (``prior_precision`` α ≥ 0; α = 0 is the flat prior).

    The returned function takes θ of shape d or G×d (a batch of parameter vectors) and returns a scalar or G values.
    """
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"need x of shape N×d and y of length N, got {tuple(x.shape)} and {tuple(y.shape)}")
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("labels y must be 0 or 1")
    if prior_precision < 0:
        raise ValueError(f"prior_precision must be >= 0, got {prior_precision}")
    yf = y.to(x.dtype)

    def u(theta: Tensor) -> Tensor:
        a = theta @ x.t()
        return (F.softplus(a) - yf * a).sum(-1) + 0.5 * prior_precision * theta.square().sum(-1)

    return u


def probit_approximation(mean: Tensor, var: Tensor) -> Tensor:
    """E[σ(a)] for a ~ N(mean, var) ≈ σ(mean / √(1 + π var / 8)) (MacKay, 1992)."""
    return torch.sigmoid(mean / torch.sqrt(1 + math.pi * var / 8))


def logistic_predictive(
    x: Tensor,
    posterior: LaplaceGaussian | GridPosterior,
    *,
    method: str = "probit",
    samples: int = 2000,
    generator: torch.Generator | None = None,
) -> Tensor:
    """p(y = 1 | x, D) for each row of ``x`` under a Gaussian or grid posterior over the weights.

    ``method``: ``"map"`` (plug in the mean: σ(xᵀθ*)), ``"probit"`` (the probit approximation of the Gaussian
    average), ``"mc"`` (average of σ over ``samples`` draws). A :class:`GridPosterior` is averaged exactly
    whatever the (valid) ``method``.
    """
    if method not in ("map", "probit", "mc"):
        raise ValueError(f"method must be 'map', 'probit' or 'mc', got {method!r}")
    if isinstance(posterior, GridPosterior):  # exact average over the grid, in chunks of inputs (bounded memory)
        pts = posterior.points
        step = max(1, 2**22 // len(pts))
        return torch.cat([posterior.expectation(lambda t: torch.sigmoid(t @ x[i : i + step].t()))
                          for i in range(0, len(x), step)])
    if method == "map":
        return torch.sigmoid(x @ posterior.mean)
    if method == "probit":
        mean = x @ posterior.mean
        var = ((x @ posterior.covariance) * x).sum(-1)
        return probit_approximation(mean, var)
    theta = posterior.sample(samples, generator)  # method == "mc"
    return torch.sigmoid(theta @ x.t()).mean(0)
