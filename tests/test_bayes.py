"""Chapter 2's conjugate model: Bayesian linear regression in closed form, the two-task identity, on toy data and
on the MNIST digits 0/1 then 2/3."""

from __future__ import annotations

import math

import pytest
import torch

from cl_utils import bayes
from cl_utils.bayes import Gaussian, Stats

f64 = torch.float64


@pytest.fixture
def toy():
    g = torch.Generator().manual_seed(0)
    theta = torch.tensor([1.0, -2.0, 0.5], dtype=f64)
    xa, xb = torch.randn(15, 3, generator=g, dtype=f64), torch.randn(10, 3, generator=g, dtype=f64) + 1.0
    ya = xa @ theta + 0.3 * torch.randn(15, generator=g, dtype=f64)
    yb = xb @ theta + 0.3 * torch.randn(10, generator=g, dtype=f64)
    prior = Gaussian.from_cov(torch.tensor([0.1, 0.0, -0.2], dtype=f64),
                              torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, 0.1], [0.0, 0.1, 0.5]], dtype=f64))
    return prior, (xa, ya), (xb, yb), 0.09


def test_gaussian_log_prob_matches_torch(toy):
    prior = toy[0]
    ref = torch.distributions.MultivariateNormal(prior.mean, covariance_matrix=prior.cov)
    th = torch.randn(5, 3, dtype=f64)
    torch.testing.assert_close(prior.log_prob(th), ref.log_prob(th))
    torch.testing.assert_close(prior.log_prob(th[0]), ref.log_prob(th[0]))
    iso = Gaussian.isotropic(3, 4.0)
    torch.testing.assert_close(iso.cov, 4.0 * torch.eye(3, dtype=f64))


def test_sample_has_the_right_moments(toy):
    prior = toy[0]
    draws = prior.sample(200_000, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (200_000, 3)
    torch.testing.assert_close(draws.mean(0), prior.mean, rtol=0, atol=0.02)
    torch.testing.assert_close(torch.cov(draws.T), prior.cov, rtol=0, atol=0.03)
    with pytest.raises(ValueError, match="positive integer"):
        prior.sample(0)


def test_posterior_is_bayes_rule(toy):
    """log p(θ|D) − [log p(D|θ) + log p(θ)] is the same constant (−log p(D)) at every θ."""
    prior, a, _, s2 = toy
    post = bayes.posterior(prior, a, s2)
    th = torch.randn(6, 3, dtype=f64)
    diff = post.log_prob(th) - bayes.log_likelihood(th, a, s2) - prior.log_prob(th)
    torch.testing.assert_close(diff, -bayes.log_evidence(prior, a, s2).expand(6), rtol=0, atol=1e-10)
    # the likelihood against torch.distributions
    ref = torch.distributions.Normal(a[0] @ th[0], math.sqrt(s2)).log_prob(a[1]).sum()
    torch.testing.assert_close(bayes.log_likelihood(th[0], a, s2), ref)


def test_evidence_weight_space_equals_function_space(toy):
    prior, a, b, s2 = toy
    for data in (a, b):
        w = bayes.log_evidence(prior, data, s2)
        f = bayes.log_evidence(prior, data, s2, method="function")
        cov = data[0] @ prior.cov @ data[0].T + s2 * torch.eye(len(data[1]), dtype=f64)
        ref = torch.distributions.MultivariateNormal(data[0] @ prior.mean, cov)
        assert abs(float(w - f)) < 1e-10 and abs(float(f - ref.log_prob(data[1]))) < 1e-10


def test_sequential_posterior_equals_joint(toy):
    prior, a, b, s2 = toy
    seq = bayes.posterior(bayes.posterior(prior, a, s2), b, s2)
    joint = bayes.posterior(prior, (torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])), s2)
    torch.testing.assert_close(seq.mean, joint.mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(seq.precision, joint.precision, rtol=0, atol=1e-12)
    sa, sb = Stats.of(*a), Stats.of(*b)
    pooled = bayes.posterior(prior, sa + sb, s2)
    torch.testing.assert_close(pooled.mean, joint.mean, rtol=0, atol=1e-12)
    # the evidence factorises: log p(A, B) = log p(A) + log p(B | A)
    ev_ab = bayes.log_evidence(prior, sa + sb, s2)
    ev_b_given_a = bayes.log_evidence(bayes.posterior(prior, sa, s2), sb, s2)
    assert abs(float(ev_ab - bayes.log_evidence(prior, sa, s2) - ev_b_given_a)) < 1e-10


def test_three_term_identity_is_exact(toy):
    prior, a, b, s2 = toy
    th = torch.randn(8, 3, dtype=f64) * 2
    t = bayes.two_task_terms(prior, a, b, s2, th)
    assert (t["log_posterior_ab"] - t["rhs"]).abs().max() < 1e-8
    # D_A and D_B are independent given θ, but not marginally: p(D_B | D_A) ≠ p(D_B)
    assert abs(float(t["log_evidence_b_given_a"] - t["log_evidence_b"])) > 1.0


def test_stats_likelihood_matches_data(toy):
    _, a, _, s2 = toy
    th = torch.randn(4, 3, dtype=f64)
    torch.testing.assert_close(bayes.log_likelihood(th, Stats.of(*a), s2), bayes.log_likelihood(th, a, s2))


def test_predictive(toy):
    prior, a, _, s2 = toy
    post = bayes.posterior(prior, a, s2)
    mean, var = bayes.predictive(post, a[0][:4], s2)
    S = post.cov
    torch.testing.assert_close(var, torch.stack([x @ S @ x for x in a[0][:4]]) + s2)
    torch.testing.assert_close(mean, a[0][:4] @ post.mean)


def test_errors(toy):
    prior, a, _, s2 = toy
    with pytest.raises(ValueError, match="noise_var"):
        bayes.posterior(prior, a, 0.0)
    with pytest.raises(ValueError, match="dimension"):
        bayes.posterior(Gaussian.isotropic(2, 1.0), a, s2)
    with pytest.raises(ValueError, match="positive definite"):
        Gaussian(torch.zeros(2), -torch.eye(2)).log_prob(torch.zeros(2))
    with pytest.raises(ValueError, match="method"):
        bayes.log_evidence(prior, a, s2, method="exact")
    with pytest.raises(ValueError, match="Stats"):
        bayes.log_evidence(prior, Stats.of(*a), s2, method="function")
    with pytest.raises(ValueError, match="precision must have shape"):
        Gaussian(torch.zeros(2), torch.eye(3))
    with pytest.raises(ValueError, match="pair or a Stats"):
        bayes.posterior(prior, a[0], s2)
    X, y = a
    for short in ((X, y[:1]), (X[:1], y)):  # N must match in full, not only in the first row
        with pytest.raises(ValueError, match="length N"):
            bayes.log_likelihood(prior.mean, short, s2)
        with pytest.raises(ValueError, match="length N"):
            bayes.log_evidence(prior, short, s2, method="function")


def test_regression_design_and_sign_accuracy():
    from cl_utils.data import Task

    x = torch.rand(6, 4)
    task = Task("t", x, torch.tensor([0, 1, 1, 0, 1, 0]), x[:2], torch.tensor([1, 0]))
    X, y = bayes.regression_design(task)
    assert X.dtype == f64 and X.shape == (6, 5) and torch.equal(X[:, :4], x.double()) and bool((X[:, 4] == 1).all())
    assert torch.equal(y, torch.tensor([-1.0, 1, 1, -1, 1, -1], dtype=f64))
    Xt, yt = bayes.regression_design(task, "test")
    assert Xt.shape == (2, 5) and torch.equal(yt, torch.tensor([1.0, -1.0], dtype=f64))
    theta = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0], dtype=f64)  # always +1
    assert bayes.sign_accuracy(theta, (X, y)) == 50.0
    assert bayes.sign_accuracy(-theta, (X, y)) == 50.0
    assert bayes.sign_accuracy(theta, (X, torch.ones(6, dtype=f64))) == 100.0
    with pytest.raises(ValueError, match="split"):
        bayes.regression_design(task, "val")
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        bayes.regression_design(Task("t", x, torch.tensor([0, 1, 2, 0, 1, 0]), x[:2], torch.tensor([1, 0])))
    with pytest.raises(ValueError, match="train_x"):
        bayes.regression_design(object())
    with pytest.raises(ValueError, match="−1 or \\+1"):
        bayes.sign_accuracy(theta, (X, torch.zeros(6, dtype=f64)))
    with pytest.raises(ValueError, match="shape"):
        bayes.sign_accuracy(theta[:3], (X, y))


def test_two_mnist_tasks(mnist):
    """Digits 0/1 then 2/3 as ±1 regression targets, 784 pixels + a bias: the identity holds at full scale."""
    from cl_utils.data import split_mnist

    tasks = split_mnist(pairs=((0, 1), (2, 3)), scenario="domain", data=mnist, device="cpu")
    stats = [Stats.of(*bayes.regression_design(t.subset(1500, 10))) for t in tasks]
    prior = Gaussian.isotropic(785, 1.0)
    post_a = bayes.posterior(prior, stats[0], 0.1)
    th = torch.stack([post_a.mean, bayes.posterior(prior, stats[1], 0.1).mean, 0.01 * torch.randn(785, dtype=f64)])
    t = bayes.two_task_terms(prior, stats[0], stats[1], 0.1, th)
    assert (t["log_posterior_ab"] - t["rhs"]).abs().max() < 1e-8
    seq = bayes.posterior(post_a, stats[1], 0.1)
    joint = bayes.posterior(prior, stats[0] + stats[1], 0.1)
    assert (seq.mean - joint.mean).abs().max() < 1e-10
    # the posterior of A classifies A's test digits by the sign of xᵀm
    assert bayes.sign_accuracy(post_a.mean, bayes.regression_design(tasks[0], "test")) > 95
