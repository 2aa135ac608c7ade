"""Chapter 1's library: hand-written autodiff, update rules, initialisation, regularisers as priors, 2-D surfaces."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from cl_utils import autodiff as ad
from cl_utils import initialization, optimizers, regularizers, surfaces, training
from cl_utils.optimizers import SGD, Adadelta, Adam

f64 = torch.float64

# --------------------------------------------------------------------------------------------------- autodiff


@pytest.mark.parametrize("batched", [False, True])
def test_affine_backward_matches_autograd(batched):
    W = torch.randn(4, 3, dtype=f64, requires_grad=True)
    b = torch.randn(4, dtype=f64, requires_grad=True)
    x = torch.randn(*((5,) if batched else ()), 3, dtype=f64, requires_grad=True)
    fn = ad.Affine()
    k = fn(W.detach(), x.detach(), b.detach())
    torch.testing.assert_close(k, (W @ x.T).T + b if batched else W @ x + b)
    grad_k = torch.randn_like(k)
    gW, gx, gb = fn.backward(grad_k)
    tW, tx, tb = torch.autograd.grad((W @ x.T).T + b if batched else W @ x + b, (W, x, b), grad_k)
    for mine, ref in ((gW, tW), (gx, tx), (gb, tb)):
        torch.testing.assert_close(mine, ref, rtol=1e-12, atol=1e-12)
    if not batched:  # the formulas of the text, literally
        torch.testing.assert_close(gW, grad_k[:, None] * x.detach()[None, :])
        torch.testing.assert_close(gx, W.detach().T @ grad_k)
        torch.testing.assert_close(gb, grad_k)


@pytest.mark.parametrize("act", [ad.ReLU, ad.Sigmoid, ad.Tanh])
def test_activation_backward(act):
    k = torch.randn(6, 5, dtype=f64, requires_grad=True)
    ref = {ad.ReLU: torch.relu, ad.Sigmoid: torch.sigmoid, ad.Tanh: torch.tanh}[act]
    fn = act()
    out = fn(k.detach())
    torch.testing.assert_close(out, ref(k).detach())
    g = torch.randn_like(out)
    (mine,) = fn.backward(g)
    torch.testing.assert_close(mine, torch.autograd.grad(ref(k), k, g)[0])


def test_graph_two_layer_network_matches_autograd():
    x, y = torch.randn(7, 4, dtype=f64), torch.randint(0, 3, (7,))
    params = {"W1": torch.randn(5, 4, dtype=f64), "b1": torch.randn(5, dtype=f64),
              "W2": torch.randn(3, 5, dtype=f64), "b2": torch.randn(3, dtype=f64)}
    v = {k: ad.Var(t, k) for k, t in params.items()}
    xv, yv = ad.Var(x, "x"), ad.Var(y, "y")
    h = ad.apply(ad.ReLU(), ad.apply(ad.Affine(), v["W1"], xv, v["b1"], name="k1"), name="h")
    loss = ad.apply(ad.SoftmaxCrossEntropy(), ad.apply(ad.Affine(), v["W2"], h, v["b2"], name="k2"), yv, name="l")
    order = ad.backward(loss)
    assert order[-1] is loss and {n.name for n in ad.leaves(order)} == {"W1", "b1", "W2", "b2", "x", "y"}
    tp = {k: t.clone().requires_grad_(True) for k, t in params.items()}
    ref = F.cross_entropy(torch.relu(x @ tp["W1"].T + tp["b1"]) @ tp["W2"].T + tp["b2"], y)
    torch.testing.assert_close(loss.value, ref.detach())
    ref.backward()
    for k in params:
        torch.testing.assert_close(v[k].grad, tp[k].grad, rtol=1e-12, atol=1e-12)
    assert yv.grad is None


def test_graph_sums_over_paths():
    """x feeds two branches that meet again: its gradient is the sum over both paths (multivariate chain rule)."""
    x = torch.randn(3, dtype=f64, requires_grad=True)
    W1, W2 = torch.randn(2, 3, dtype=f64), torch.randn(2, 3, dtype=f64)
    b = torch.zeros(2, dtype=f64)
    xv = ad.Var(x.detach(), "x")
    a1 = ad.apply(ad.Tanh(), ad.apply(ad.Affine(), ad.Var(W1), xv, ad.Var(b)))
    a2 = ad.apply(ad.Affine(), ad.Var(W2), xv, ad.Var(b))
    out = ad.apply(ad.Add(), a1, a2)
    g = torch.randn(2, dtype=f64)
    ad.backward(out, g)
    ref = torch.autograd.grad(torch.tanh(W1 @ x) + W2 @ x, x, g)[0]
    torch.testing.assert_close(xv.grad, ref)


def test_graph_layout_columns_rows_and_edges():
    """The figure's plain data: operations one column right of their latest input, leaves left of their first use."""
    W1, b1, x = ad.Var(torch.randn(3, 4), "W1"), ad.Var(torch.randn(3), "b1"), ad.Var(torch.randn(4), "x")
    k = ad.apply(ad.Affine(), W1, x, b1, name="k")
    h = ad.apply(ad.ReLU(), k, name="h")
    out = ad.apply(ad.Add(), h, k, name="out")  # k feeds two operations
    nodes, edges = ad.graph_layout(out)
    by_name = {n["name"]: i for i, n in enumerate(nodes)}
    assert set(by_name) == {"W1", "b1", "x", "k", "h", "out"} and len(nodes) == 6
    col = {name: nodes[i]["column"] for name, i in by_name.items()}
    assert col == {"W1": 0, "x": 0, "b1": 0, "k": 1, "h": 2, "out": 3}
    assert sorted(nodes[by_name[n]]["row"] for n in ("W1", "x", "b1")) == [0, 1, 2]  # stacked in their column
    assert {n["op"] for n in nodes} == {"input", "Affine", "ReLU", "Add"}
    assert nodes[by_name["k"]]["shape"] == (3,) and nodes[by_name["W1"]]["op"] == "input"
    named = {(nodes[a]["name"], nodes[c]["name"]) for a, c in edges}
    assert named == {("W1", "k"), ("x", "k"), ("b1", "k"), ("k", "h"), ("h", "out"), ("k", "out")}
    assert len(edges) == 6
    # an unused leaf (a graph of one node) sits in column 0
    lone_nodes, lone_edges = ad.graph_layout(ad.Var(torch.zeros(2), "z"))
    assert lone_nodes == [{"name": "z", "op": "input", "shape": (2,), "column": 0, "row": 0}] and lone_edges == []


def test_autodiff_errors():
    with pytest.raises(ValueError, match="x must have shape"):
        ad.Affine()(torch.randn(2, 3), torch.randn(4), torch.randn(2))
    with pytest.raises(ValueError, match="b must have shape"):
        ad.Affine()(torch.randn(2, 3), torch.randn(3), torch.randn(3))
    with pytest.raises(ValueError, match="explicit grad"):
        ad.backward(ad.Var(torch.randn(3)))
    with pytest.raises(ValueError, match="Var inputs"):
        ad.apply(ad.ReLU(), torch.randn(3))
    with pytest.raises(ValueError, match="tensor"):
        ad.Var([1.0])


# ------------------------------------------------------------------------------------------------- optimizers


def _minibatch_problem():
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(64, 5, generator=g, dtype=f64), torch.randn(64, generator=g, dtype=f64)
    batches = torch.randint(0, 64, (40, 8), generator=g)
    return lambda th, t: ((X[batches[t]] @ th - y[batches[t]]) ** 2).mean(), torch.randn(5, generator=g, dtype=f64)


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam", "adadelta"])
def test_update_rules_equal_torch_optim(name):
    loss, th0 = _minibatch_problem()
    rule = optimizers.rules(sgd_lr=0.05, adam_lr=0.05)[name]
    mine = optimizers.trajectory(rule, loss, th0, 40)
    ref = optimizers.torch_trajectory(rule, loss, th0, 40)
    assert mine.shape == (41, 5) and torch.equal(mine[0], th0)
    assert (mine - ref).abs().max() < 1e-12
    assert not torch.equal(mine[-1], th0)


def test_rules_by_hand_first_steps():
    g = torch.tensor([2.0], dtype=f64)
    th = torch.tensor([1.0], dtype=f64)
    sgd = SGD(0.1, momentum=0.5)
    th1, st = sgd.update(th, g, sgd.init(th))
    th2, _ = sgd.update(th1, g, st)
    assert torch.allclose(th2, th - 0.1 * 2 - 0.1 * (0.5 * 2 + 2))
    adam = Adam(lr=0.1)
    th1, _ = adam.update(th, g, adam.init(th))  # first Adam step: ≈ lr · sign(g)
    assert abs(float(th1) - (1 - 0.1 * 2 / (2 + 1e-8))) < 1e-15
    ada = Adadelta()
    th1, _ = ada.update(th, g, ada.init(th))
    assert abs(float(th1) - (1 - math.sqrt(1e-6) / math.sqrt(0.1 * 4 + 1e-6) * 2)) < 1e-15


def test_rule_by_name_is_the_one_source_of_hyperparameters():
    assert optimizers.NAMES == ("sgd", "momentum", "nesterov", "adam", "adadelta")
    assert optimizers.rule("momentum", 0.1) == SGD(0.1, momentum=optimizers.MOMENTUM)
    assert optimizers.rule("nesterov", 0.1) == SGD(0.1, momentum=optimizers.MOMENTUM, nesterov=True)
    assert optimizers.rule("adam", 0.01) == Adam(0.01) and optimizers.rule("adadelta", 1.0) == Adadelta(1.0)
    assert optimizers.rules(0.1, 0.01)["momentum"] == optimizers.rule("momentum", 0.1)
    # training.OPTIMIZERS makes the same torch optimizers as the rules (μ = optimizers.MOMENTUM, set in one place)
    assert tuple(training.OPTIMIZERS) == optimizers.NAMES
    p = [torch.zeros(3, requires_grad=True)]
    for name in optimizers.NAMES:
        opt = training.OPTIMIZERS[name](p, 0.05)
        ref = optimizers.rule(name, 0.05).torch_optimizer(p)
        assert type(opt) is type(ref) and opt.defaults == ref.defaults
    assert training.OPTIMIZERS["momentum"](p, 0.05).defaults["momentum"] == optimizers.MOMENTUM == 0.9
    with pytest.raises(ValueError, match="unknown rule"):
        optimizers.rule("rmsprop", 0.1)


def test_optimizer_errors():
    with pytest.raises(ValueError, match="lr"):
        SGD(0.0)
    with pytest.raises(ValueError, match="momentum"):
        SGD(0.1, momentum=1.0)
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(0.1, nesterov=True)
    with pytest.raises(ValueError, match="beta1"):
        Adam(beta1=1.0)
    with pytest.raises(ValueError, match="rho"):
        Adadelta(rho=-0.1)
    with pytest.raises(ValueError, match="rule"):
        optimizers.trajectory("sgd", lambda t, s: t.sum(), torch.zeros(2), 3)
    with pytest.raises(ValueError, match="steps"):
        optimizers.trajectory(SGD(0.1), lambda t, s: t.sum(), torch.zeros(2), -1)
    with pytest.raises(ValueError, match="scalar"):
        optimizers.trajectory(SGD(0.1), lambda t, s: t, torch.zeros(2), 1)


# --------------------------------------------------------------------------------------------------- surfaces


def test_surfaces():
    assert float(surfaces.rosenbrock(torch.tensor([1.0, 1.0]))) == 0.0
    q = surfaces.quadratic(10.0, angle=0.3)
    assert torch.allclose(torch.linalg.eigvalsh(q.hessian), torch.tensor([1.0, 10.0], dtype=f64))
    th = torch.randn(2, dtype=f64, requires_grad=True)
    torch.testing.assert_close(torch.autograd.grad(q(th), th)[0], q.hessian @ th.detach())
    xs, ys, Z = surfaces.grid(surfaces.rosenbrock, (-2, 2), (-1, 3), n=11)
    assert Z.shape == (11, 11) and float(Z[3, 7]) == float(surfaces.rosenbrock(torch.stack([xs[7], ys[3]])))
    X, y = torch.randn(10, 2, dtype=f64), torch.randn(10, dtype=f64)
    assert torch.allclose(surfaces.least_squares(X, y)(th.detach()), 0.5 * ((y - X @ th.detach()) ** 2).sum())
    with pytest.raises(ValueError, match="last dimension 2"):
        surfaces.rosenbrock(torch.zeros(3))
    with pytest.raises(ValueError, match="condition"):
        surfaces.quadratic(0.5)


# --------------------------------------------------------------------------------------------- initialisation


def test_init_std_and_variance_rule():
    assert initialization.init_std(100, 50, "kaiming") == math.sqrt(2 / 100)
    assert initialization.init_std(100, 50, "xavier") == math.sqrt(2 / 150)
    assert initialization.init_std(100, 50, "default") == pytest.approx(1 / math.sqrt(300))
    m = initialization.deep_mlp(2, 256, "relu", "default", in_features=400, seed=3)
    w = m.layers[0].weight.detach()
    # PyTorch's default uniform(±1/√fan_in) has the same variance as the "default" scheme
    assert w.abs().max() <= 1 / math.sqrt(400) and abs(float(w.var()) - 1 / 1200) < 0.05 / 1200
    # Var(k) = fan_in · Var(w) · E[x²]
    g = torch.Generator().manual_seed(0)
    W = torch.randn(500, 400, generator=g) * initialization.init_std(400, 500, "lecun")
    x = torch.randn(4000, 400, generator=g) * 2.0
    assert abs(float((x @ W.T).var()) - 400 * W.var() * 4.0) < 0.05 * 4.0
    with pytest.raises(ValueError, match="scheme"):
        initialization.init_std(10, 10, "he")


def test_initialize_first_layer_and_biases():
    m = initialization.deep_mlp(3, 50, "relu", "kaiming", first="lecun", in_features=400, seed=0)
    weights = [layer.weight.detach() for layer in m.layers if isinstance(layer, torch.nn.Linear)]
    biases = [layer.bias.detach() for layer in m.layers if isinstance(layer, torch.nn.Linear)]
    # LeCun's 1/fan_in on the first layer, Kaiming's 2/fan_in after (Gaussian draws: within sampling error)
    assert abs(float(weights[0].var()) * 400 - 1) < 0.05
    assert all(abs(float(w.var()) * 50 - 2) < 0.2 for w in weights[1:-1])  # the hidden layers
    assert all(float(b.abs().max()) == 0 for b in biases)  # bias="zero"
    t = initialization.deep_mlp(2, 300, "relu", "default", bias="torch", in_features=400, seed=0)
    b = t.layers[0].bias.detach()
    # nn.Linear's own biases: uniform on ±1/√fan_in, variance 1/(3 fan_in)
    assert float(b.abs().max()) <= 1 / math.sqrt(400) and abs(float(b.var()) * 3 * 400 - 1) < 0.25
    with pytest.raises(ValueError, match="first"):
        initialization.deep_mlp(2, 8, "relu", "kaiming", first="he")
    with pytest.raises(ValueError, match="bias"):
        initialization.deep_mlp(2, 8, "relu", "kaiming", bias="random")
    with pytest.raises(ValueError, match="depth"):
        initialization.deep_mlp(0, 8, "relu", "kaiming")


def test_kaiming_with_a_lecun_first_layer_keeps_the_second_moment_near_one():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(512, 784, generator=g), torch.randint(0, 10, (512,), generator=g)
    m = initialization.deep_mlp(10, 256, "relu", "kaiming", first="lecun", seed=0)
    f = list(initialization.signal_stats(m, x, y)["forward"].values())[:-1]  # the hidden layers
    assert abs(f[0] - 1) < 0.1 and all(0.5 < v < 2 for v in f)
    # Kaiming on the first layer too doubles E[k²] there (its input is not a ReLU output)
    plain = initialization.deep_mlp(10, 256, "relu", "kaiming", seed=0)
    k = list(initialization.signal_stats(plain, x, y)["forward"].values())
    assert abs(k[0] - 2) < 0.2


def test_deep_mlp_is_seeded_and_signal_stats():
    a = initialization.deep_mlp(6, 64, "relu", "kaiming", seed=1)
    b = initialization.deep_mlp(6, 64, "relu", "kaiming", seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    x, y = torch.randn(256, 784), torch.randint(0, 10, (256,))
    stats = initialization.signal_stats(a, x, y)
    names = [n for n, _ in a.named_parameters() if n.endswith("weight")]
    assert list(stats["grad_norm"]) == names and list(stats["forward"]) == names
    # Kaiming keeps E[k²] of the same order through six ReLU layers; the default init shrinks it by ~1/6 per layer
    kai = list(stats["forward"].values())
    assert 0.3 < kai[-2] / kai[0] < 3
    default = initialization.deep_mlp(6, 64, "relu", "default", seed=1)
    d = list(initialization.signal_stats(default, x, y)["forward"].values())
    assert d[-2] / d[0] < 1e-3


def test_sigmoid_gradients_vanish_with_depth():
    x, y = torch.randn(256, 784), torch.randint(0, 10, (256,))
    sig = initialization.signal_stats(initialization.deep_mlp(12, 64, "sigmoid", "xavier"), x, y)["grad_norm"]
    relu = initialization.signal_stats(initialization.deep_mlp(12, 64, "relu", "kaiming"), x, y)["grad_norm"]
    s, r = list(sig.values()), list(relu.values())
    assert s[0] / s[-1] < 1e-3 and r[0] / r[-1] > 1e-1


# ----------------------------------------------------------------------------------------------- regularizers


def test_ridge_is_the_gaussian_map():
    X, y = torch.randn(30, 3, dtype=f64), torch.randn(30, dtype=f64)
    lam = regularizers.lambda_gaussian_prior(noise_var=0.5, prior_var=2.0)
    assert lam == 0.25
    th = regularizers.ridge(X, y, lam)
    torch.testing.assert_close(th, torch.linalg.solve(X.T @ X + lam * torch.eye(3, dtype=f64), X.T @ y))
    # the gradient of the negative log-posterior (Gaussian likelihood and prior, via torch.distributions) is zero
    t = th.clone().requires_grad_(True)
    nlp = -(torch.distributions.Normal(X @ t, math.sqrt(0.5)).log_prob(y).sum()
            + torch.distributions.Normal(torch.zeros(3, dtype=f64), math.sqrt(2.0)).log_prob(t).sum())
    assert torch.autograd.grad(nlp, t)[0].abs().max() < 1e-10
    torch.testing.assert_close(regularizers.ridge(X, y, 0.0), torch.linalg.lstsq(X, y).solution)


def test_lasso_soft_thresholding_and_kkt():
    torch.testing.assert_close(regularizers.soft_threshold(torch.tensor([-3.0, -0.5, 0.2, 2.0]), 1.0),
                               torch.tensor([-2.0, 0.0, 0.0, 1.0]))
    Q, _ = torch.linalg.qr(torch.randn(20, 3, dtype=f64))  # orthonormal columns: the lasso is soft-thresholding
    y = torch.randn(20, dtype=f64) * 3
    torch.testing.assert_close(regularizers.lasso(Q, y, 1.0), regularizers.soft_threshold(Q.T @ y, 1.0))
    X = torch.randn(40, 4, dtype=f64)
    y = X @ torch.tensor([2.0, 0.0, -1.0, 0.1], dtype=f64) + 0.3 * torch.randn(40, dtype=f64)
    lam = 8.0
    th = regularizers.lasso(X, y, lam)
    assert (th == 0).any()  # exact zeros
    c = X.T @ (y - X @ th)  # KKT: c_j = λ sign(θ_j) where θ_j ≠ 0, |c_j| ≤ λ where θ_j = 0
    nz = th != 0
    torch.testing.assert_close(c[nz], lam * th[nz].sign(), rtol=0, atol=1e-9)
    assert (c[~nz].abs() <= lam + 1e-9).all()
    assert regularizers.lambda_laplace_prior(0.5, 0.25) == 2.0


def test_dropout_is_an_adaptive_ridge():
    X, y, th = torch.randn(6, 2, dtype=f64), torch.randn(6, dtype=f64), torch.randn(2, dtype=f64)
    p = 0.7
    masks = torch.tensor(list(itertools.product([0.0, 1.0], repeat=2)), dtype=f64)  # every mask of two inputs
    probs = (masks * p + (1 - masks) * (1 - p)).prod(1)
    losses = 0.5 * ((y[None] - (X[None] * masks[:, None] / p) @ th) ** 2).sum(1)
    exact = (probs * losses).sum()
    torch.testing.assert_close(exact, 0.5 * ((y - X @ th) ** 2).sum() + regularizers.dropout_penalty(X, th, p))
    opt = regularizers.dropout_ridge(X, y, p)
    t = opt.clone().requires_grad_(True)
    obj = 0.5 * ((y - X @ t) ** 2).sum() + regularizers.dropout_penalty(X, t, p)
    assert torch.autograd.grad(obj, t)[0].abs().max() < 1e-10
    torch.testing.assert_close(regularizers.dropout_ridge(X, y, 1.0), regularizers.ridge(X, y, 0.0))


def test_regularizer_errors():
    with pytest.raises(ValueError, match="lam"):
        regularizers.ridge(torch.randn(3, 2), torch.randn(3), -1.0)
    with pytest.raises(ValueError, match="N×D"):
        regularizers.lasso(torch.randn(3, 2), torch.randn(4), 1.0)
    with pytest.raises(ValueError, match="keep"):
        regularizers.dropout_ridge(torch.randn(3, 2), torch.randn(3), 0.0)
    with pytest.raises(ValueError, match="kind"):
        regularizers.penalty(torch.randn(2), "l3", 1.0)
    with pytest.raises(ValueError, match="non-zero"):
        regularizers.lasso(torch.zeros(3, 2), torch.randn(3), 1.0)
    with pytest.raises(ValueError, match="theta"):
        regularizers.penalty([1.0, 2.0], "l2", 1.0)
    with pytest.raises(ValueError, match="theta"):
        regularizers.penalty(torch.tensor([1, 2]), "l1", 1.0)  # integers
    with pytest.raises(ValueError, match="X must be a matrix"):
        regularizers.dropout_penalty(torch.randn(3), torch.randn(3), 0.5)
    with pytest.raises(ValueError, match="dimension 2"):
        regularizers.dropout_penalty(torch.randn(5, 2), torch.randn(3), 0.5)
    with pytest.raises(ValueError, match="keep"):
        regularizers.dropout_penalty(torch.randn(5, 2), torch.randn(2), 1.5)
    with pytest.raises(ValueError, match="noise_var"):
        regularizers.lambda_gaussian_prior(None, 1.0)
    with pytest.raises(ValueError, match="prior_var"):
        regularizers.lambda_gaussian_prior(1.0, -2.0)
    with pytest.raises(ValueError, match="scale"):
        regularizers.lambda_laplace_prior(1.0, None)
    with pytest.raises(ValueError, match="threshold"):
        regularizers.soft_threshold(torch.randn(3), -1.0)


def test_penalties_on_a_batch_of_thetas():
    th = torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=f64)
    torch.testing.assert_close(regularizers.penalty(th, "l2", 2.0), torch.tensor([5.0, 0.25], dtype=f64))
    torch.testing.assert_close(regularizers.penalty(th, "l1", 2.0), torch.tensor([6.0, 1.0], dtype=f64))
    X = torch.randn(7, 2, dtype=f64)
    batch = regularizers.dropout_penalty(X, th, 0.5)
    torch.testing.assert_close(batch, torch.stack([regularizers.dropout_penalty(X, t, 0.5) for t in th]))
