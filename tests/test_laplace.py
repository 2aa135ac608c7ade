"""cl_utils.laplace on cases with known answers: Gaussian posteriors (exact), Beta posteriors (closed form)."""

from __future__ import annotations

import math

import pytest
import torch

from cl_utils.laplace import (
    GridPosterior,
    LaplaceGaussian,
    find_mode,
    grid_posterior,
    laplace,
    logistic_neg_log_posterior,
    logistic_predictive,
    probit_approximation,
)

D = torch.float64


def _gaussian_u(mean: torch.Tensor, cov: torch.Tensor, const: float = 0.3):
    prec = torch.linalg.inv(cov)
    return lambda t: 0.5 * (((t - mean) @ prec) * (t - mean)).sum(-1) + const


def test_laplace_is_exact_for_a_gaussian():
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    a = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, -0.4], [0.0, -0.4, 0.7]], dtype=D)
    cov = a @ a.t() + 0.1 * torch.eye(3, dtype=D)
    g = laplace(_gaussian_u(mean, cov), torch.zeros(3, dtype=D))
    assert torch.allclose(g.mean, mean, atol=1e-10)
    assert torch.allclose(g.covariance, cov, atol=1e-10)
    assert torch.allclose(g.variance, cov.diagonal(), atol=1e-10)
    # ∫ exp(−½ xᵀ Σ⁻¹ x − c) dx = exp(−c) (2π)^{d/2} |Σ|^{1/2}
    want = -0.3 + 1.5 * math.log(2 * math.pi) + 0.5 * torch.logdet(cov)
    assert abs(float(g.log_normalizer - want)) < 1e-10
    x = torch.randn(4, 3, dtype=D)
    ref = torch.distributions.MultivariateNormal(mean, cov).log_prob(x)
    assert torch.allclose(g.log_prob(x), ref, atol=1e-10)
    draws = g.sample(40000, torch.Generator().manual_seed(0))
    assert torch.allclose(torch.cov(draws.t()), cov, atol=0.05 * float(cov.abs().max()))


def test_diagonal_laplace_keeps_diag_of_the_precision():
    mean = torch.tensor([0.5, 1.0], dtype=D)
    cov = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=D)
    full = laplace(_gaussian_u(mean, cov), torch.zeros(2, dtype=D))
    diag = laplace(_gaussian_u(mean, cov), torch.zeros(2, dtype=D), hessian="diag")
    assert diag.diagonal and not full.diagonal
    assert torch.allclose(diag.precision, full.precision.diagonal())
    # 1/H_ii = σ²(1 − ρ²): the diagonal approximation is over-confident when parameters are correlated
    assert torch.allclose(diag.variance, torch.full((2,), 1 - 0.8**2, dtype=D))
    x = torch.randn(5, 2, dtype=D)
    ref = torch.distributions.Normal(diag.mean, diag.variance.sqrt()).log_prob(x).sum(-1)
    assert torch.allclose(diag.log_prob(x), ref)
    assert torch.allclose(torch.var(diag.sample(40000, torch.Generator().manual_seed(1)), 0), diag.variance, rtol=0.05)


@pytest.mark.parametrize("a,b", [(3.0, 5.0), (30.0, 12.0), (300.0, 120.0)])
def test_beta_posterior_mode_and_curvature(a, b):
    u = lambda t: -(a - 1) * torch.log(t).sum() - (b - 1) * torch.log1p(-t).sum()  # noqa: E731
    g = laplace(u, torch.tensor([0.5], dtype=D))
    mode = (a - 1) / (a + b - 2)
    curvature = (a - 1) / mode**2 + (b - 1) / (1 - mode) ** 2  # = (a+b−2)³ / ((a−1)(b−1))
    assert abs(float(g.mean) - mode) < 1e-10
    assert abs(float(g.precision) - curvature) / curvature < 1e-10
    assert abs(curvature - (a + b - 2) ** 3 / ((a - 1) * (b - 1))) / curvature < 1e-12
    # the normaliser is the Beta function B(a, b); Laplace approaches it as the data grow
    log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    err = abs(float(g.log_normalizer) - log_beta)
    assert err < {3.0: 0.15, 30.0: 0.02, 300.0: 0.002}[a]


def test_find_mode_stays_in_the_domain_and_checks():
    u = lambda t: -(2.0 * torch.log(t) + 40.0 * torch.log1p(-t)).sum()  # noqa: E731  mode 2/42, near 0
    assert abs(float(find_mode(u, torch.tensor([0.9], dtype=D))) - 2 / 42) < 1e-10
    with pytest.raises(ValueError, match="not finite"):
        find_mode(u, torch.tensor([1.5], dtype=D))
    with pytest.raises(ValueError, match="scalar"):
        find_mode(lambda t: t * 2, torch.zeros(2, dtype=D))
    with pytest.raises(ValueError, match="flat"):
        find_mode(lambda t: t.sum(), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="did not converge"):
        find_mode(lambda t: -t.sum(), torch.zeros(1, dtype=D), steps=3)
    with pytest.raises(ValueError, match="hessian"):
        laplace(u, [0.1], hessian="kfac")
    with pytest.raises(ValueError, match="positive definite"):
        laplace(lambda t: -(t**2).sum(), [0.0, 0.0], optimize=False)


def _blobs(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g, dtype=D) + (2 * y[:, None] - 1) * torch.tensor([1.0, 0.5], dtype=D)
    return x, y


def test_logistic_regression_laplace_grid_and_predictive():
    x, y = _blobs(30)
    u = logistic_neg_log_posterior(x, y, prior_precision=1.0)
    g = laplace(u, torch.zeros(2, dtype=D))
    assert torch.func.grad(u)(g.mean).abs().max() < 1e-8  # the first-order term vanishes at the mode
    # batched evaluation agrees with one-at-a-time
    pts = torch.randn(5, 2, dtype=D)
    assert torch.allclose(u(pts), torch.stack([u(p) for p in pts]))
    # Hessian in closed form: Σ σ(1−σ) x xᵀ + α I
    s = torch.sigmoid(x @ g.mean)
    assert torch.allclose(g.precision, (x * (s * (1 - s))[:, None]).t() @ x + torch.eye(2, dtype=D))
    axes = [torch.linspace(-4, 8, 301, dtype=D), torch.linspace(-5, 7, 301, dtype=D)]
    grid = grid_posterior(u, axes)
    assert isinstance(grid, GridPosterior)
    assert grid.boundary_ratio < 1e-8  # the grid holds the posterior: its Riemann sums can be trusted
    # the posterior is close to Gaussian: Laplace's mean, covariance and evidence near the grid's
    assert torch.allclose(grid.mean, g.mean, atol=0.15)
    assert torch.allclose(grid.covariance, g.covariance, atol=0.15)
    assert abs(float(grid.log_normalizer - g.log_normalizer)) < 0.1
    xt = torch.tensor([[0.0, 0.0], [3.0, 3.0], [-1.0, 2.0]], dtype=D)
    exact = logistic_predictive(xt, grid)
    probit = logistic_predictive(xt, g)
    mc = logistic_predictive(xt, g, method="mc", samples=40000, generator=torch.Generator().manual_seed(0))
    plug_in = logistic_predictive(xt, g, method="map")
    assert torch.allclose(probit, mc, atol=0.02) and torch.allclose(probit, exact, atol=0.05)
    # averaging over the posterior pulls the confident plug-in prediction towards ½
    assert ((probit - 0.5).abs() <= (plug_in - 0.5).abs() + 1e-12).all()
    with pytest.raises(ValueError, match="method"):
        logistic_predictive(xt, g, method="laplace")
    with pytest.raises(ValueError, match="method"):  # checked for a grid posterior too, not silently ignored
        logistic_predictive(xt, grid, method="laplace")
    assert torch.equal(logistic_predictive(xt, grid, method="mc"), exact)  # a grid is always averaged exactly


def test_grid_boundary_ratio_flags_a_grid_that_cuts_the_posterior():
    u = lambda t: 0.5 * ((t - 1.0) / 0.5).square().sum(-1)  # noqa: E731  N(1, 0.25) in each coordinate
    wide = grid_posterior(u, [torch.linspace(-3, 5, 201, dtype=D)])
    cut = grid_posterior(u, [torch.linspace(-3, 1.5, 181, dtype=D)])  # ends one standard deviation above the mean
    assert wide.boundary_ratio < 1e-8
    assert abs(cut.boundary_ratio - math.exp(-0.5)) < 1e-12
    # the sum over the grid is one either way: it cannot tell the two apart
    for grid in (cut, wide):
        assert abs(float(grid.density.sum()) * grid.cell - 1) < 1e-12
    two = grid_posterior(u, [torch.linspace(-3, 5, 81, dtype=D), torch.linspace(-3, 1.5, 91, dtype=D)])
    assert abs(two.boundary_ratio - math.exp(-0.5)) < 1e-12


def test_probit_approximation_against_quadrature():
    a = torch.linspace(-10, 10, 20001, dtype=D)
    for m, v in [(0.0, 1.0), (1.5, 4.0), (-2.0, 0.3)]:
        w = torch.exp(-0.5 * (a - m) ** 2 / v)
        exact = (torch.sigmoid(a) * w).sum() / w.sum()
        approx = probit_approximation(torch.tensor(m, dtype=D), torch.tensor(v, dtype=D))
        assert abs(float(exact - approx)) < 0.02


def test_flat_prior_hessian_is_the_nll_hessian():
    """With α = 0 the posterior's Hessian is the Hessian of the negative log-likelihood alone."""
    x, y = _blobs(20, seed=3)
    flat = logistic_neg_log_posterior(x, y, prior_precision=0.0)
    theta = torch.tensor([0.3, -0.2], dtype=D)
    nll = lambda t: torch.nn.functional.binary_cross_entropy_with_logits(x @ t, y.to(D), reduction="sum")  # noqa: E731
    assert torch.allclose(torch.func.hessian(flat)(theta), torch.func.hessian(nll)(theta))


def test_input_checks():
    x, y = _blobs(10)
    with pytest.raises(ValueError, match="0 or 1"):
        logistic_neg_log_posterior(x, y + 1)
    with pytest.raises(ValueError, match="N×d"):
        logistic_neg_log_posterior(x, y[:5])
    with pytest.raises(ValueError, match="prior_precision"):
        logistic_neg_log_posterior(x, y, -1.0)
    u = logistic_neg_log_posterior(x, y)
    with pytest.raises(ValueError, match="evenly spaced"):
        grid_posterior(u, [torch.tensor([0.0, 1.0, 3.0]), torch.linspace(0, 1, 3)])
    with pytest.raises(ValueError, match="axes"):
        grid_posterior(u, [torch.linspace(0, 1, 3)] * 3)
    with pytest.raises(ValueError, match="positive integer"):
        LaplaceGaussian(torch.zeros(2), torch.ones(2), torch.tensor(0.0)).sample(0)
