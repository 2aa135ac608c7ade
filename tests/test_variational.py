"""cl_utils.variational: the Gaussian-posterior layer, priors and their closed forms, the losses of Graves (2011),
the reparameterisation gradient, Graves' Fisher shortcut, pruning, training; and the chapter-6 experiments."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from cl_utils import variational as V
from cl_utils.models import MLP

D64 = torch.float64


def small_model(seed: int = 0, init_var: float = 0.05, sampling: str = "local") -> nn.Module:
    torch.manual_seed(seed)
    return V.make_variational(MLP(4, (3,), 3).double(), init_var=init_var, sampling=sampling)


def small_data(n: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=D64), torch.randint(0, 3, (n,), generator=g)


# ---------------------------------------------------------------------------------------------- the layer


def test_make_variational_keeps_names_and_the_mean_network():
    torch.manual_seed(0)
    mlp = MLP(4, (3,), 3).double()
    vm = V.make_variational(mlp, init_var=0.01)
    names = [n for n, _ in vm.named_parameters()]
    assert names == ["layers.0.weight_mu", "layers.0.weight_logvar", "layers.0.bias_mu", "layers.0.bias_logvar",
                     "layers.2.weight_mu", "layers.2.weight_logvar", "layers.2.bias_mu", "layers.2.bias_logvar"]
    x, _ = small_data()
    vm.eval()
    assert torch.equal(vm(x), mlp(x))  # eval mode: the mean weights, i.e. the original network
    assert torch.allclose(vm.layers[0].weight_logvar.exp(), torch.full((3, 4), 0.01, dtype=D64))
    assert vm.layers[0].weight is vm.layers[0].weight_mu
    vm.train()
    assert not torch.equal(vm(x), mlp(x))  # training mode samples


@pytest.mark.parametrize("sampling", V.SAMPLING)
def test_sampled_outputs_have_the_posterior_moments(sampling):
    """Both sampling modes give pre-activations with mean xμᵀ + b and variance x²σ²ᵀ + σ_b²."""
    torch.manual_seed(0)
    layer = V.VariationalLinear(3, 2, init_var=0.3, sampling=sampling, dtype=D64)
    layer.train()
    x = torch.tensor([[1.0, -2.0, 0.5]], dtype=D64)
    S = 20000
    layer.samples = S if sampling == "weights" else 1
    out = layer(x.repeat(S, 1))
    mean = x @ layer.weight_mu.T + layer.bias_mu
    var = (x * x) @ layer.weight_logvar.exp().T + layer.bias_logvar.exp()
    assert torch.allclose(out.mean(0), mean[0], atol=float(4 * (var[0] / S).sqrt().max().detach()))
    assert torch.allclose(out.var(0), var[0], rtol=0.05)


def test_bad_arguments_raise_value_errors():
    with pytest.raises(ValueError, match="init_var"):
        V.VariationalLinear(3, 2, init_var=0.0)
    with pytest.raises(ValueError, match="init_var"):
        V.make_variational(MLP(4, (3,), 3), init_var=-1.0)
    with pytest.raises(ValueError, match="sampling"):
        V.VariationalLinear(3, 2, sampling="bogus")
    with pytest.raises(ValueError, match="var"):
        V.set_variance(small_model(), 0.0)
    with pytest.raises(ValueError, match="var"):
        V.GaussianPrior(0.0, 0.0)
    with pytest.raises(ValueError, match="scale"):
        V.LaplacePrior(0.0, -1.0)
    x, y = small_data()
    for s in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="samples"):
            V.error_loss(small_model(), x, y, samples=s)
    with pytest.raises(ValueError, match="reduction"):
        V.error_loss(small_model(), x, y, reduction="max")
    with pytest.raises(ValueError, match="Laplace prior cannot be used with a Gaussian posterior"):
        V.complexity_loss(small_model(), V.LaplacePrior())
    with pytest.raises(ValueError, match="Gaussian posterior"):
        V.LaplacePrior(adaptive=True).fit(small_model())
    with pytest.raises(ValueError, match="variational"):
        V.snr(MLP(4, (3,), 3))
    with pytest.raises(ValueError, match="fraction"):
        V.prune(small_model(), 1.5)
    with pytest.raises(ValueError, match="snr"):
        V.prune(MLP(4, (3,), 3), 0.5, score="snr")
    with pytest.raises(ValueError, match="prior"):
        V.complexity_loss(small_model(), "gaussian")


# ----------------------------------------------------------------------------------------- KL and priors


def test_kl_matches_torch_distributions():
    p_ref = torch.distributions.Normal(torch.tensor(0.3, dtype=D64), torch.tensor(0.7, dtype=D64).sqrt())
    torch.manual_seed(0)
    mu, var = torch.randn(50, dtype=D64), torch.rand(50, dtype=D64) + 0.01
    prior = V.GaussianPrior(0.3, 0.7)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, var.sqrt()),
                                            p_ref).sum()
    assert torch.allclose(prior.kl(mu, var), ref, rtol=1e-10)
    # and through a model: complexity_loss sums the KL over every weight and bias
    model = small_model()
    mus, variances = zip(*[(m.flatten(), lv.exp().flatten()) for l in V.variational_layers(model).values()
                           for _, m, lv in l.posterior()])
    mu, var = torch.cat(mus), torch.cat(variances)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, var.sqrt()),
                                            p_ref).sum()
    assert torch.allclose(V.complexity_loss(model, prior), ref, rtol=1e-10)


def test_delta_posterior_complexity_is_the_negative_log_prior():
    torch.manual_seed(0)
    net = nn.Linear(5, 3).double()
    w = torch.cat([p.flatten() for p in net.parameters()])
    g = V.complexity_loss(net, V.GaussianPrior(0.1, 0.2))
    assert torch.allclose(g, -torch.distributions.Normal(0.1, math.sqrt(0.2)).log_prob(w).sum())
    lap = V.complexity_loss(net, V.LaplacePrior(-0.1, 0.25))
    assert torch.allclose(lap, -torch.distributions.Laplace(-0.1, 0.25).log_prob(w).sum())
    # the probability of a coding bin [w − δ/2, w + δ/2], for the two-part code
    zero = torch.zeros(1, dtype=D64)
    assert float(V.GaussianPrior(0.0, 1.0).log_bin_mass(zero, 1.0)) == pytest.approx(math.log(math.erf(0.5 / 2**0.5)))
    assert float(V.LaplacePrior(0.0, 1.0).log_bin_mass(zero, 1.0)) == pytest.approx(math.log(1 - math.exp(-0.5)))


def test_kl_gradients_have_graves_closed_forms():
    """∂L^C/∂μ_i = (μ_i − μ)/σ², ∂L^C/∂σ_i² = ½(1/σ² − 1/σ_i²)."""
    torch.manual_seed(0)
    mu = torch.randn(20, dtype=D64, requires_grad=True)
    var = (torch.rand(20, dtype=D64) + 0.1).requires_grad_()
    prior = V.GaussianPrior(0.2, 0.5)
    gm, gv = torch.autograd.grad(prior.kl(mu, var), [mu, var])
    assert torch.allclose(gm, (mu - 0.2) / 0.5)
    assert torch.allclose(gv, 0.5 * (1 / 0.5 - 1 / var))


def _alpha_grads(model, prior_cls, values):
    alpha = [torch.tensor(v, dtype=D64, requires_grad=True) for v in values]
    loss = V.complexity_loss(model, prior_cls(*alpha))
    return torch.autograd.grad(loss, alpha), loss


@pytest.mark.parametrize("posterior", ["delta", "gaussian"])
def test_adaptive_gaussian_prior_is_a_stationary_point(posterior):
    torch.manual_seed(0)
    model = nn.Linear(7, 3).double() if posterior == "delta" else small_model(init_var=0.02)
    for p in model.parameters():  # spread the variances so that σ̂² is not trivial
        if p.ndim and posterior == "gaussian":
            p.data.add_(0.3 * torch.rand_like(p))
    prior = V.GaussianPrior(adaptive=True).fit(model)
    (gm, gv), loss = _alpha_grads(model, V.GaussianPrior, [float(prior.mean), float(prior.var)])
    scale = abs(float(loss.detach()))
    assert abs(float(gm)) < 1e-8 * scale and abs(float(gv)) < 1e-8 * scale
    for dm, dv in ((1e-3, 0), (-1e-3, 0), (0, 1e-3), (0, -1e-3)):  # and a minimum, not a maximum
        moved = V.complexity_loss(model, V.GaussianPrior(prior.mean + dm, prior.var + dv))
        assert moved > V.complexity_loss(model, prior)
    # the closed form itself: mean μ_i and mean[σ_i² + (μ_i − μ̂)²]
    mu, var = V._posterior(model)
    var = torch.zeros_like(mu) if var is None else var
    assert torch.allclose(prior.mean, mu.mean()) and torch.allclose(prior.var, (var + (mu - mu.mean()) ** 2).mean())


@pytest.mark.parametrize("inputs", [4, 5])
def test_adaptive_laplace_prior_is_a_stationary_point(inputs):
    """Odd count (5 weights): μ̂ is the middle weight; even count (6): the midpoint of the two middle weights, so
    that as many weights lie above μ̂ as below and ∂L^C/∂μ = −Σ sign(w_i − μ̂)/b vanishes exactly. (For an even
    count L^C is flat in μ between the two middle weights; the midpoint is the symmetric choice.)"""
    torch.manual_seed(0)
    net = nn.Linear(inputs, 1).double()
    prior = V.LaplacePrior(adaptive=True).fit(net)
    w = torch.cat([p.detach().flatten() for p in net.parameters()])
    s, n = w.sort().values, w.numel()
    median = s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
    assert n == inputs + 1 and torch.equal(prior.mean, median)
    assert torch.allclose(prior.scale, (w - median).abs().mean())
    assert torch.equal(V.LaplacePrior.closed_form(w)[0], median)
    (gm, gb), _ = _alpha_grads(net, V.LaplacePrior, [float(prior.mean), float(prior.scale)])
    assert abs(float(gb)) < 1e-10 and float(gm) == 0.0  # odd: sign(0) = 0 for the weight on the median
    base = V.complexity_loss(net, prior)
    step = 1e-3 + (0 if n % 2 else float(s[n // 2] - s[n // 2 - 1]) / 2)  # out of the flat middle interval
    for dm, db in ((step, 0), (-step, 0), (0, 1e-3), (0, -1e-3)):
        assert V.complexity_loss(net, V.LaplacePrior(prior.mean + dm, prior.scale + db)) > base
    if n % 2 == 0:  # inside it, L^C does not change
        inside = V.complexity_loss(net, V.LaplacePrior(float(s[n // 2 - 1]) + 1e-9, prior.scale))
        assert float(inside.detach()) == pytest.approx(float(base.detach()), rel=1e-12)


def test_median_of_ties_and_even_counts():
    for values, want in (([3.0, 1.0, 2.0], 2.0), ([4.0, 1.0, 3.0, 2.0], 2.5), ([1.0, 1.0, 1.0, 5.0], 1.0),
                         ([0.0, 2.0, 2.0, 2.0], 2.0), ([7.0], 7.0), ([1.0, 2.0], 1.5)):
        assert float(V._median(torch.tensor(values, dtype=D64))) == want, values


def test_prior_parameters_are_checked():
    for bad in (float("nan"), float("inf"), torch.zeros(3)):
        with pytest.raises(ValueError, match="mean"):
            V.GaussianPrior(bad, 1.0)
        with pytest.raises(ValueError, match="mean"):
            V.LaplacePrior(bad, 1.0)
    with pytest.raises(ValueError, match="var"):
        V.GaussianPrior(0.0, torch.ones(2))
    V.GaussianPrior(torch.tensor(0.1, requires_grad=True), torch.tensor(0.2, requires_grad=True))  # 0-dim: fine


def test_fit_only_touches_the_adaptive_parts():
    net = nn.Linear(5, 5).double()
    p = V.GaussianPrior(0.0, 0.1, adapt_mean=True).fit(net)
    assert float(p.var) == pytest.approx(0.1) and float(p.mean) != 0.0
    q = V.LaplacePrior(0.0, 1 / 12, adapt_mean=True).fit(net)
    assert float(q.scale) == pytest.approx(1 / 12)
    r = V.GaussianPrior(0.5, 0.1).fit(net)
    assert float(r.mean) == 0.5 and float(r.var) == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------------ gradients


@pytest.mark.parametrize("sampling", V.SAMPLING)
def test_reparameterisation_gradient_matches_finite_differences(sampling):
    """With the noise ε held fixed (same seed), L^E is a smooth function of μ and log σ²: autograd = central FD."""
    model = small_model(sampling=sampling)
    x, y = small_data()

    def loss() -> torch.Tensor:
        torch.manual_seed(123)
        return V.error_loss(model, x, y, samples=3)

    params = dict(model.named_parameters())
    grads = torch.autograd.grad(loss(), list(params.values()))
    h = 1e-6
    for (name, p), g in zip(params.items(), grads):
        for idx in [(0,) * p.ndim, tuple(s - 1 for s in p.shape)]:
            with torch.no_grad():
                p[idx] += h
                up = loss()
                p[idx] -= 2 * h
                down = loss()
                p[idx] += h
            fd = (up - down) / (2 * h)
            assert torch.allclose(g[idx], fd, rtol=1e-5, atol=1e-8), (name, idx, float(g[idx]), float(fd))


def test_fisher_shortcut_is_the_sum_of_squared_per_example_gradients():
    """Σ_n (∂L_n/∂w)² from δ² and a² equals a per-example autograd loop (σ → 0 so the sampled w is μ)."""
    model = small_model(init_var=1e-30)
    x, y = small_data(n=12)
    got = V.sigma_gradients(model, x, y, samples=1)["fisher"]
    model.eval()
    params = {n.replace("_mu", "_logvar"): p for n, p in model.named_parameters() if n.endswith("_mu")}
    want = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in range(len(y)):
        gs = torch.autograd.grad(nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), list(params.values()))
        for k, g in zip(params, gs):
            want[k] += 0.5 * g**2
    assert got.keys() == want.keys()
    for k in want:
        assert torch.allclose(got[k], want[k], rtol=1e-10, atol=1e-14), k


def test_fisher_shortcut_agrees_with_the_exact_gradient_on_a_well_specified_model():
    """Softmax regression: ∂L^E/∂σ² = ½⟨diag H⟩ (Price's theorem), and diag H = Σ_n p_nj(1 − p_nj) x_nk².

    With labels drawn from the model itself, the empirical Fisher of Graves' shortcut estimates the same diagonal,
    and the exact (reparameterisation) gradient is an unbiased but noisy estimate of it."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 3).double()
    model = V.make_variational(nn.Sequential(lin), init_var=0.01)
    x = torch.randn(2000, 3, dtype=D64)
    with torch.no_grad():
        y = torch.distributions.Categorical(logits=lin(x)).sample()
        w = lin.weight + 0.1 * torch.randn(400, 3, 3, dtype=D64)  # draws from Q (σ = 0.1, weights and biases)
        b = lin.bias + 0.1 * torch.randn(400, 1, 3, dtype=D64)
        p = torch.softmax(torch.baddbmm(b, x.expand(400, -1, -1), w.transpose(1, 2)), -1)
        half_hessian = 0.5 * torch.einsum("snj,nk->jk", p * (1 - p), x * x) / 400
    torch.manual_seed(1)
    runs = [V.sigma_gradients(model, x, y, samples=1000) for _ in range(4)]
    exact = sum(r["exact"]["0.weight_logvar"] for r in runs) / 4
    fisher = sum(r["fisher"]["0.weight_logvar"] for r in runs) / 4
    assert torch.allclose(fisher, half_hessian, rtol=0.1), (fisher, half_hessian)
    assert float(fisher.sum() / half_hessian.sum()) == pytest.approx(1.0, abs=0.04)
    assert torch.allclose(exact, half_hessian, rtol=0.12), (exact, half_hessian)
    assert float(exact.sum() / half_hessian.sum()) == pytest.approx(1.0, abs=0.04)


def test_fisher_sigma_step_scales_the_minibatch_shortcut_to_the_training_set(tiny_task):
    """Training with ``sigma_grad="fisher"`` on minibatches of B out of N digits: the log σ² gradient is
    σ² (N/B) × the shortcut of :func:`sigma_gradients` on the batch (σ → 0, so every sample is the mean network),
    and a prior adds the exact ∂KL/∂log σ² = ½ (σ_i²/σ² − 1)."""
    from cl_utils.data import Task

    task, _ = tiny_task
    n, batch, prior_var = 96, 32, 3e-24
    small = Task("small", task.train_x[:n].double(), task.train_y[:n], task.test_x[:10].double(), task.test_y[:10])

    def last_grads(prior):
        torch.manual_seed(0)
        model = V.make_variational(MLP(784, (5,), 10).double(), init_var=1e-24)
        with torch.no_grad():  # unequal variances, so that the KL part differs between weights
            for name, p in model.named_parameters():
                if name.endswith("logvar"):
                    p.add_(torch.rand_like(p))
        # lr 0: the parameters stay put, and the gradients of the last step are left on them
        V.train_variational(model, small, prior=prior, epochs=1, batch_size=batch, optimizer="sgd", lr=0.0,
                            sigma_grad="fisher", seed=3, progress=False)
        return model, {name: p.grad.clone() for name, p in model.named_parameters() if name.endswith("logvar")}

    model, plain = last_grads(None)
    last = torch.randperm(n, generator=torch.Generator().manual_seed(3))[-batch:]  # the last minibatch
    shortcut = V.sigma_gradients(model, small.train_x[last], small.train_y[last])["fisher"]
    _, with_prior = last_grads(V.GaussianPrior(0.0, prior_var))
    params = dict(model.named_parameters())
    assert shortcut.keys() == plain.keys()
    for name in shortcut:
        var = params[name].detach().exp()
        assert torch.allclose(plain[name] / var, (n / batch) * shortcut[name], rtol=1e-6, atol=1e-12), name
        assert float(shortcut[name].abs().max()) > 1e-3  # not trivially zero
        assert torch.allclose(with_prior[name] - plain[name], 0.5 * (var / prior_var - 1), rtol=1e-9), name


def test_sigma_gradients_leave_the_model_as_it_was():
    model = small_model()
    x, y = small_data()
    model.eval()
    V.sigma_gradients(model, x, y, samples=2, labels="model")
    assert not model.training
    assert all(l.sampling == "local" and l.samples == 1 and l._record is None
               for l in V.variational_layers(model).values())
    assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------------------------------------ losses and codes


def test_error_loss_sum_mean_and_delta_posterior():
    net = MLP(4, (3,), 3).double()
    x, y = small_data()
    total = V.error_loss(net, x, y)
    assert torch.allclose(total, nn.functional.cross_entropy(net(x), y, reduction="sum"))
    assert torch.allclose(V.error_loss(net, x, y, reduction="mean"), total / len(y))
    model = V.make_variational(net, init_var=1e-30)  # no noise: L^E = L^N at μ
    assert torch.allclose(V.error_loss(model, x, y, samples=4), total)


def test_description_length_and_two_part_code():
    torch.manual_seed(0)
    net = MLP(4, (3,), 3).double()
    x, y = small_data(n=64)
    prior = V.GaussianPrior(adaptive=True).fit(net)
    tp = V.two_part_length(net, prior, x, y, precisions=[2.0**-k for k in range(1, 12)])
    rows = tp["by_precision"]
    assert tp["total_bits"] == min(r["total_bits"] for r in rows)
    # finer precision: more bits for the weights, and the data cost approaches the unrounded network's
    assert rows[-1]["complexity_bits"] > rows[0]["complexity_bits"]
    with torch.no_grad():
        unrounded = float(V.error_loss(net, x, y)) / math.log(2)
    assert rows[-1]["error_bits"] == pytest.approx(unrounded, rel=1e-3)
    vm = V.make_variational(net, init_var=0.01)
    dl = V.description_length(vm, prior, x, y, samples=8)
    assert dl["total_bits"] == pytest.approx((dl["error_nats"] + dl["complexity_nats"]) / math.log(2))
    with pytest.raises(ValueError, match="two_part_length"):
        V.description_length(net, prior, x, y)


def test_snr_and_pruning():
    model = small_model()
    s = V.snr(model)
    layer = model.layers[0]
    assert torch.allclose(s["layers.0.weight_mu"], layer.weight_mu.abs() / layer.weight_logvar.exp().sqrt())
    pruned = V.prune(model, 0.5)
    n = sum(t.numel() for t in s.values())
    zeros = sum(int((l.weight_mu == 0).sum() + (l.bias_mu == 0).sum()) for l in V.variational_layers(pruned).values())
    assert zeros == round(0.5 * n)
    # the survivors are the highest-SNR weights
    alive = [(getattr(l, p) != 0).flatten() for l in V.variational_layers(pruned).values()
             for p in ("weight_mu", "bias_mu")]
    kept = torch.cat([v.flatten() for v in s.values()])[torch.cat(alive)]
    assert float(kept.min()) >= float(torch.cat([v.flatten() for v in s.values()]).median())
    assert torch.equal(model.layers[0].weight_mu, layer.weight_mu)  # the original is untouched
    net = MLP(4, (3,), 3)
    assert sum(int((p == 0).sum()) for p in V.prune(net, 1.0, score="magnitude").parameters()) == \
        sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def tiny_task(mnist):
    from cl_utils.data import Task

    task = Task("tiny", mnist.train_x[:600], mnist.train_y[:600], mnist.test_x[:500], mnist.test_y[:500])
    return task, (mnist.train_x[600:900], mnist.train_y[600:900])


@pytest.mark.parametrize("sigma_grad", ["exact", "fisher"])
def test_adaptive_weight_noise_learns_and_repeats(tiny_task, sigma_grad):
    task, val = tiny_task

    def run():
        torch.manual_seed(0)
        model = V.make_variational(MLP(784, (16,), 10), init_var=0.075**2)
        hist = V.train_variational(model, task, prior=V.GaussianPrior(adaptive=True), epochs=4, val=val,
                                   sigma_grad=sigma_grad, seed=0, progress=False)
        return model, hist

    model, hist = run()
    assert hist["val_error"][-1] < 0.5 and V.error_rate(model, task.test_x, task.test_y) < 0.5
    assert hist["prior"]["var"] > 0 and len(hist["loss"]) == hist["steps"] == 4 * 6
    model2, hist2 = run()
    assert torch.equal(hist["loss"], hist2["loss"])  # same seed, same numbers
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))


def test_early_stopping_keeps_the_best_epoch(tiny_task):
    task, val = tiny_task
    torch.manual_seed(0)
    net = MLP(784, (16,), 10)
    hist = V.train_variational(net, task, epochs=6, val=val, patience=1, seed=0, progress=False)
    best = hist["best_epoch"]
    assert hist["val_error"][best - 1] == min(hist["val_error"])
    assert hist["epochs_run"] == len(hist["val_error"]) and hist["epochs_run"] <= 6
    assert V.error_rate(net, *val) == pytest.approx(min(hist["val_error"]))
    with pytest.raises(ValueError, match="patience"):
        V.train_variational(net, task, epochs=1, patience=2, progress=False)
    with pytest.raises(ValueError, match="Laplace"):
        V.train_variational(V.make_variational(net), task, prior=V.LaplacePrior(), progress=False)
    with pytest.raises(ValueError, match="sigma_grad"):
        V.train_variational(net, task, sigma_grad="approx", progress=False)


# ------------------------------------------------------------------------------------------- experiments


TINY = dict(hidden=(8,), n_train=300, n_val=200, n_test=300, max_epochs=2, patience=1, dl_samples=1,
            grid=(1e-3, 1e-1), grid_epochs=1)


def test_weight_noise_table_rows_and_summary():
    from cl_utils import experiments as E
    from cl_utils.config import FAST

    sizes = dataclasses.replace(FAST.weight_noise, **TINY)
    run = E.weight_noise_table(sizes, device="cpu", progress=False)
    assert [r["row"] for r in run["rows"]] == list(E.WEIGHT_NOISE_ROWS) and len(E.WEIGHT_NOISE_ROWS) == 10
    n = sizes.n_train
    for r in run["rows"]:
        assert 0 <= r["error"] <= 100 and 1 <= r["epochs"] <= 2 and r["ratio"] > 0
        noisy = "weight noise" in r["row"].lower()
        assert r["code"] == "bits-back" if noisy else r["code"].startswith("two-part, δ = 2")
        assert r["ratio"] == pytest.approx(r["bits"] / run["plain_bits"])
        assert r["uniform_ratio"] == pytest.approx(r["bits"] / (n * math.log2(10)))
        assert r["bits_per_label"] == pytest.approx(r["bits"] / n)
    by_row = {r["row"]: r for r in run["rows"]}
    assert by_row[E.PLAIN_ROW]["ratio"] == 1.0 and by_row[E.PLAIN_ROW]["bits"] == run["plain_bits"]
    # every row starts from the same random state: a subset of rows gives the same numbers as the whole table
    subset = E.weight_noise_table(sizes, device="cpu", progress=False, rows=["Adaptive weight noise", "Adaptive L2"])
    assert [r["row"] for r in subset["rows"]] == ["Adaptive weight noise", "Adaptive L2"]
    assert subset["plain_bits"] == run["plain_bits"] and "Maximum likelihood" not in subset["models"]
    for r in subset["rows"]:
        assert {k: r[k] for k in ("error", "epochs", "bits", "ratio", "val_error")} == \
            {k: by_row[r["row"]][k] for k in ("error", "epochs", "bits", "ratio", "val_error")}
    with pytest.raises(ValueError, match="rows"):
        E.weight_noise_table(sizes, device="cpu", progress=False, rows=["Bogus"])
    assert V.is_variational(run["models"]["Adaptive weight noise"])
    assert len(run["pruning"]["snr"]["error"]) == len(E.PRUNE_FRACTIONS)
    summary = E.weight_noise_summary([run, run])
    assert summary["runs"] == 2 and -1 <= summary["spearman_error"] <= 1
    assert summary["rows"][0]["error std"] == 0.0
    for r, cells in zip(run["rows"], E.weight_noise_table_rows(summary)):  # the cap came first: marked, both runs
        assert isinstance(r["capped"], bool) and r["capped"] == (r["epochs_run"] - r["epochs"] < sizes.patience)
        assert cells["epochs"].endswith(" (cap: 2/2)") == r["capped"]
    text = E.format_weight_noise_table(summary)
    assert "Adaptive weight noise" in text and "0.286" in text and "±" in text and "vs uniform" in text
    assert E._ranks([3, 1, 2, 2]) == [4.0, 1.0, 2.5, 2.5]


@pytest.mark.parametrize("row", [
    ("Adaptive L1", "LaplacePrior", True, True, None), ("Adaptive L2", "GaussianPrior", True, True, None),
    ("Adaptive mean L2 (σ² = 0.1)", "GaussianPrior", True, False, (0.0, 0.1)),
    ("L2 (μ = 0, σ² = 0.1)", "GaussianPrior", False, False, (0.0, 0.1)), ("Maximum likelihood", None, 0, 0, None),
    ("L1 (μ = 0, b = 1/12)", "LaplacePrior", False, False, (0.0, 1 / 12)),
    ("Adaptive mean L1 (b = 1/12)", "LaplacePrior", True, False, (0.0, 1 / 12)),
    ("Weight noise (σᵢ = 0.075)", None, 0, 0, None), ("Adaptive prior weight noise", "GaussianPrior", True, True, None),
    ("Adaptive weight noise", "GaussianPrior", True, True, None)], ids=lambda r: r[0])
def test_weight_noise_variant_builds_each_row(row):
    """Each of the ten rows: posterior (delta or Gaussian), σᵢ² (fixed 0.075² or learned from init_var), prior."""
    from cl_utils import experiments as E

    name, prior_type, adapt_first, adapt_second, fixed = row
    torch.manual_seed(0)
    base = MLP(6, (4,), 3).double()
    model, prior = E.weight_noise_variant(name, base, init_var=0.01)
    assert (prior is None) == (prior_type is None) and (prior is None or type(prior).__name__ == prior_type)
    if prior is not None:
        first, second = prior._params
        assert (getattr(prior, f"adapt_{first}"), getattr(prior, f"adapt_{second}")) == (adapt_first, adapt_second)
        if fixed is not None:
            assert prior.state() == pytest.approx(dict(zip(prior._params, fixed)))
    mus = [p for n, p in model.named_parameters() if not n.endswith("logvar")]
    assert all(torch.equal(m, b) for m, b in zip(mus, base.parameters()))  # every row starts from base
    assert model is not base
    noisy = "weight noise" in name.lower()
    assert V.is_variational(model) == noisy
    if noisy:
        layers = V.variational_layers(model).values()
        learned = name == "Adaptive weight noise"
        assert all(l.learn_var == learned for l in layers)
        var = torch.cat([lv.exp().flatten() for l in layers for _, _, lv in l.posterior()])
        assert torch.allclose(var, torch.full_like(var, 0.01 if learned else E.GRAVES_SIGMA**2))
    with pytest.raises(ValueError, match="row"):
        E.weight_noise_variant("L3", base)


def test_compression_of_the_empty_network_is_the_uniform_code():
    """An all-zero MLP predicts 1/10 for every digit: log₂ 10 bits per label, and its weights cost almost nothing
    at the coarsest precision, so its ratio against the uniform code is ≈ 1; ``plain_bits`` sets ``ratio``."""
    from cl_utils import experiments as E

    net = MLP(784, (8,), 10).double()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    x = torch.rand(200, 784, dtype=D64)
    y = torch.randint(0, 10, (200,))
    out = E.compression(net, V.GaussianPrior(0.0, 0.01), x, y, plain_bits=1000.0)
    assert out["uniform_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert out["bits_per_label"] == pytest.approx(math.log2(10), abs=1e-5)
    assert out["error_bits"] == pytest.approx(200 * math.log2(10)) and out["complexity_bits"] < 1e-3
    assert out["ratio"] == pytest.approx(out["bits"] / 1000.0) and out["code"] == "two-part, δ = 2²"
    assert "ratio" not in E.compression(net, V.GaussianPrior(0.0, 0.01), x, y)
    vm = V.make_variational(net, init_var=1e-2)  # bits-back: the KL of a posterior equal to the prior is 0
    dl = E.compression(vm, V.GaussianPrior(0.0, 1e-2), x, y)
    assert dl["code"] == "bits-back" and dl["complexity_bits"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="plain_bits"):
        E.compression(net, None, x, y, plain_bits=0.0)


def test_weight_noise_grid_is_plain_data(tiny_task):
    from cl_utils import experiments as E

    task, _ = tiny_task
    out = E.weight_noise_grid([1e-3, 1e-1], task, hidden=(8,), epochs=1, progress=False)
    assert out["variances"] == [1e-3, 1e-1]
    for key in ("train_error", "test_error", "noisy_train_error", "snr_median", "seconds", "snr_hist"):
        assert len(out[key]) == 2
    assert all(sum(h) == pytest.approx(1.0) for h in out["snr_hist"])
    assert len(out["snr_hist"][0]) == len(out["snr_edges"]) - 1
    assert out["snr_median"][0] > out["snr_median"][1]  # more noise, lower signal-to-noise
    again = E.weight_noise_grid([1e-1], task, hidden=(8,), epochs=1, progress=False)
    assert again["test_error"][0] == out["test_error"][1]  # each point depends only on its own σ²
    with pytest.raises(ValueError, match="variances"):
        E.weight_noise_grid([0.0], task, progress=False)


def test_reproduce_weight_noise_table_command(monkeypatch, capsys):
    """The command line runs the registered experiment (here with tiny sizes) and prints JSON."""
    import json

    from cl_utils import experiments as E
    from cl_utils.__main__ import main
    from cl_utils.config import FAST

    tiny = dataclasses.replace(FAST, weight_noise=dataclasses.replace(FAST.weight_noise, **TINY))
    monkeypatch.setattr(E, "get_config", lambda fast=None: tiny)
    assert main(["reproduce", "weight-noise-table", "--fast", "--json", "--no-progress", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["experiment"] == "weight-noise-table" and len(out["summary"]["rows"]) == 10
    assert set(out["pruning"]) == {"snr", "magnitude"} and out["mlp"] == "784-8-10"
    assert main(["reproduce", "weight-noise-table", "--fast", "--no-progress", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "Graves" in text and "Spearman" in text and "Pruning" in text


def test_models_mixing_variational_and_point_parameters_are_refused():
    """make_variational keeps no point estimate behind; complexity_loss refuses a hand-mixed model."""
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="only nn.Linear layers"):
        V.make_variational(nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)), init_var=0.01)
    mixed = nn.Sequential(V.VariationalLinear(4, 3, init_var=0.01), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="mixing variational layers and point-estimate"):
        V.complexity_loss(mixed, V.GaussianPrior(0.0, 0.1))


def test_local_noise_has_finite_gradients_where_the_output_variance_is_zero():
    """No bias and an all-zero input row: the output's variance is 0 there, and sqrt must not make the gradient NaN."""
    torch.manual_seed(0)
    layer = V.VariationalLinear(4, 3, bias=False, init_var=0.01).double().train()
    x = torch.zeros(2, 4, dtype=D64)
    x[1] = 1.0
    layer(x).square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
