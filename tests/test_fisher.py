"""cl_utils.fisher against independent oracles: BackPACK, a naive per-sample loop, and F = −E[∇² log p]."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cl_utils.fisher import KINDS, fisher_diagonal, fisher_matrix, parameter_names
from cl_utils.models import MLP, forward

backpack = pytest.importorskip("backpack")
from backpack import extend  # noqa: E402
from backpack.extensions import BatchGrad, DiagGGNExact  # noqa: E402


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _backpack_oracle(seq: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> tuple[dict, dict]:
    """True (DiagGGNExact) and empirical (from BatchGrad per-sample gradients) Fisher diagonals, averaged."""
    seq = extend(copy.deepcopy(seq))
    loss = extend(nn.CrossEntropyLoss())(seq(x), y)  # mean reduction: DiagGGN carries 1/N, grad_batch too
    with backpack.backpack(DiagGGNExact(), BatchGrad()):
        loss.backward()
    n = len(x)
    true = {k: p.diag_ggn_exact.detach() for k, p in seq.named_parameters()}
    emp = {k: (p.grad_batch * n).square().mean(0).detach() for k, p in seq.named_parameters()}
    return true, emp


def _naive(model, x, y, kind, head=None) -> dict[str, torch.Tensor]:
    """A plain loop over samples (and classes) with backward(): the definition, written out."""
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    out = {k: torch.zeros_like(p) for k, p in params.items()}
    model.eval()
    for i in range(len(x)):
        h = head[i : i + 1] if isinstance(head, torch.Tensor) else head
        logp = forward(model, x[i : i + 1], h).log_softmax(-1)[0]
        classes = range(len(logp)) if kind == "true" else [int(y[i])]
        for c in classes:
            w = logp[c].exp().detach() if kind == "true" else 1.0
            grads = torch.autograd.grad(logp[c], list(params.values()), retain_graph=True, allow_unused=True)
            for k, g in zip(params, grads):
                if g is not None:
                    out[k] += w * g.square()
    return {k: v / len(x) for k, v in out.items()}


def _close(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        assert _rel(a[k], b[k]) < tol, (k, _rel(a[k], b[k]))


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_mlp_agrees_with_backpack_float64(activation):
    model = MLP(30, (20, 16), 7, activation=activation).double()
    x, y = torch.randn(75, 30, dtype=torch.float64), torch.randint(0, 7, (75,))
    true, emp = _backpack_oracle(model.layers, x, y)
    prefix = lambda d: {f"layers.{k}": v for k, v in d.items()}  # noqa: E731
    _close(fisher_diagonal(model, x, kind="true", batch_size=32), prefix(true))  # 32 does not divide 75
    _close(fisher_diagonal(model, x, y, kind="empirical", batch_size=32), prefix(emp))


def test_conv_agrees_with_backpack_float64():
    torch.manual_seed(1)
    seq = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, stride=2), nn.Tanh(), nn.Flatten(),
        nn.Linear(3 * 3 * 3, 5),
    ).double()
    x, y = torch.randn(20, 2, 8, 8, dtype=torch.float64), torch.randint(0, 5, (20,))
    true, emp = _backpack_oracle(seq, x, y)
    _close(fisher_diagonal(seq, x, kind="true", batch_size=7), true)
    _close(fisher_diagonal(seq, x, y, kind="empirical"), emp)


class _Odd(nn.Module):
    """Parameters the fast path cannot take: a layer norm, a Linear used twice, an in-place ReLU, a raw scale."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.shared = nn.Linear(8, 8)
        self.out = nn.Linear(8, 4)
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        h = torch.relu_(self.inp(x))  # modifies the recorded output of `inp` in place
        h = self.norm(h)
        h = torch.tanh(self.shared(torch.tanh(self.shared(h))))
        return self.out(h) * self.scale


def test_fallback_for_other_parameters_matches_naive_loop():
    model = _Odd().double()
    x, y = torch.randn(23, 6, dtype=torch.float64), torch.randint(0, 4, (23,))
    for kind in ("true", "empirical"):
        got = fisher_diagonal(model, x, y, kind=kind, batch_size=10)
        assert not any(v.requires_grad for v in got.values())
        _close(got, _naive(model, x, y, kind), 1e-10)


class _Tied(nn.Module):
    """A weight shared by two layers, and a layer whose weight is also used outside its own call."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(5, 5), nn.Linear(5, 5), nn.Linear(5, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        h = torch.tanh(self.b(torch.tanh(self.a(x))))
        return self.c(h) + 0.1 * (h @ self.c.weight.t())


def test_tied_and_reused_weights_take_the_general_path():
    model = _Tied().double()
    x, y = torch.randn(19, 5, dtype=torch.float64), torch.randint(0, 3, (19,))
    for kind in ("true", "empirical"):
        got = fisher_diagonal(model, x, y, kind=kind, batch_size=7)
        assert list(got) == ["a.weight", "a.bias", "b.bias", "c.weight", "c.bias"]
        _close(got, _naive(model, x, y, kind), 1e-10)


class _RowsNotSamples(nn.Module):
    """A Linear applied to positions merged into the batch, one called by keyword, one on a shared constant."""

    def __init__(self) -> None:
        super().__init__()
        self.pos, self.kw, self.const, self.out = nn.Linear(3, 4), nn.Linear(8, 5), nn.Linear(2, 5), nn.Linear(5, 3)
        self.register_buffer("c", torch.ones(1, 2))

    def forward(self, x):  # x: N×6, read as 2 positions of 3 features
        h = torch.tanh(self.pos(x.reshape(-1, 3))).reshape(len(x), 8)  # rows of `pos` are 2N positions
        h = torch.tanh(self.kw(input=h) + self.const(self.c))  # `const` sees one row for the whole batch
        return self.out(h)


def test_layers_whose_rows_are_not_samples_take_the_general_path():
    model = _RowsNotSamples().double()
    x, y = torch.randn(17, 6, dtype=torch.float64), torch.randint(0, 3, (17,))
    for kind in ("true", "empirical"):
        _close(fisher_diagonal(model, x, y, kind=kind, batch_size=6), _naive(model, x, y, kind), 1e-10)


def test_linear_layers_never_form_per_sample_gradients(monkeypatch):
    import cl_utils.fisher as fisher

    def refuse(*args, **kwargs):
        raise AssertionError("the fast path formed per-sample gradients")

    monkeypatch.setattr(fisher, "_per_sample_grads", refuse)
    model = MLP(6, (5, 4), 3, heads=2).double()
    x, y = torch.randn(11, 6, dtype=torch.float64), torch.randint(0, 3, (11,))
    for head in (1, torch.randint(0, 2, (11,))):
        for kind in ("true", "sampled", "empirical"):
            fisher.fisher_diagonal(model, x, y, kind=kind, head=head, batch_size=4, generator=0)


class _WithNorm(nn.Module):
    """Batch norm (running statistics in eval mode) and a parameter the forward pass never uses."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.bn, self.b = nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Linear(6, 3)
        self.unused = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return self.b(torch.relu(self.bn(self.a(x))))


def test_batch_norm_in_eval_mode_and_unused_parameters():
    model = _WithNorm().double()
    model.bn.running_mean.fill_(0.3)
    x, y = torch.randn(17, 5, dtype=torch.float64), torch.randint(0, 3, (17,))
    for kind in ("true", "empirical"):
        got = fisher_diagonal(model, x, y, kind=kind, batch_size=5)  # model in train mode: evaluated in eval mode
        assert model.training and torch.equal(got["unused"], torch.zeros(2, dtype=torch.float64))
        model.eval()
        _close(got, _naive(model, x, y, kind), 1e-10)
        model.train()
        full = fisher_matrix(model, x, y, kind=kind, batch_size=5)
        assert _rel(full.diag(), torch.cat([v.reshape(-1) for v in got.values()])) < 1e-12
    assert float(model.bn.running_mean[0]) == 0.3  # running statistics untouched


def test_frozen_parameters_are_left_out():
    model = MLP(5, (4,), 3).double()
    model.layers[0].weight.requires_grad_(False)
    x = torch.randn(9, 5, dtype=torch.float64)
    fd = fisher_diagonal(model, x)
    assert list(fd) == ["layers.0.bias", "layers.2.weight", "layers.2.bias"] == parameter_names(model)
    _close(fd, _naive(model, x, None, "true"), 1e-10)


def test_multi_head_int_and_per_sample():
    model = MLP(6, (5,), 3, heads=3).double()
    x, y = torch.randn(14, 6, dtype=torch.float64), torch.randint(0, 3, (14,))
    heads = torch.randint(0, 3, (14,))
    for head in (2, heads):
        for kind in ("true", "empirical"):
            want = _naive(model, x, y, kind, head=head)
            _close(fisher_diagonal(model, x, y, kind=kind, head=head, batch_size=5), want, 1e-10)
            got = fisher_matrix(model, x, y, kind=kind, head=head, batch_size=5).diag()
            assert _rel(got, torch.cat([v.reshape(-1) for v in want.values()])) < 1e-10
    # rows of heads that are never used get no Fisher
    fd = fisher_diagonal(model, x, head=1)
    assert fd["layers.2.weight"][:3].abs().max() == 0 and fd["layers.2.weight"][3:6].abs().max() > 0


def test_fisher_equals_minus_expected_hessian():
    """F = −E_{y~p}[∇² log p(y|x,θ)] holds for any network, not only at a minimum (Σ_c ∇² p_c = 0)."""
    torch.manual_seed(3)
    model = MLP(4, (5,), 3, activation="tanh").double()
    x = torch.randn(40, 4, dtype=torch.float64)
    names = parameter_names(model)
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    p_fixed = model(x).softmax(-1).detach()

    def expected_nll(flat):
        chunks, i = {}, 0
        for n, s in zip(names, shapes):
            chunks[n] = flat[i : i + s.numel()].reshape(s)
            i += s.numel()
        logp = torch.func.functional_call(model, chunks, (x,)).log_softmax(-1)
        return -(p_fixed * logp).sum(-1).mean()

    hess = torch.func.hessian(expected_nll)(theta)
    fisher = fisher_matrix(model, x, kind="true")
    assert _rel(fisher, hess) < 1e-10
    assert torch.allclose(fisher, fisher.t())


@pytest.mark.parametrize("kind", KINDS)
def test_matrix_diagonal_equals_diagonal(kind):
    model = MLP(7, (6, 5), 4).double()
    x, y = torch.randn(33, 7, dtype=torch.float64), torch.randint(0, 4, (33,))
    fd = fisher_diagonal(model, x, y, kind=kind, batch_size=8, generator=5)
    fm = fisher_matrix(model, x, y, kind=kind, batch_size=8, generator=5)
    assert fm.shape == (sum(p.numel() for p in model.parameters()),) * 2
    assert _rel(fm.diag(), torch.cat([v.reshape(-1) for v in fd.values()])) < 1e-12


def test_sampled_is_reproducible_and_unbiased():
    model = MLP(5, (8,), 3).double()
    x = torch.randn(20, 5, dtype=torch.float64).repeat(200, 1)  # each sample 200 times: many label draws
    a = fisher_diagonal(model, x, kind="sampled", generator=1)
    b = fisher_diagonal(model, x, kind="sampled", generator=torch.Generator().manual_seed(1))
    c = fisher_diagonal(model, x, kind="sampled", generator=2)
    true = fisher_diagonal(model, x, kind="true")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    total = lambda d: sum(v.sum() for v in d.values())  # noqa: E731
    assert abs(total(a) / total(true) - 1) < 0.1


def test_batched_kind():
    model = MLP(5, (8,), 3).double()
    x, y = torch.randn(64, 5, dtype=torch.float64), torch.randint(0, 3, (64,))
    # batch size 1: the minibatch gradient is the per-sample gradient, so batched == empirical
    _close(fisher_diagonal(model, x, y, kind="batched", batch_size=1), fisher_diagonal(model, x, y, kind="empirical"))
    # batch size 16: the mean over minibatches of the squared mean gradient, written out
    want = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    for i in range(0, 64, 16):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 16]), y[i : i + 16]).backward()
        for k, p in model.named_parameters():
            want[k] += p.grad.square() / 4
    _close(fisher_diagonal(model, x, y, kind="batched", batch_size=16), want, 1e-12)


def test_float32_close_to_float64_and_targets_ignored_for_true():
    model = MLP(12, (10,), 4)
    x, y = torch.randn(50, 12), torch.randint(0, 4, (50,))
    f32 = fisher_diagonal(model, x, y, kind="true")
    f64 = fisher_diagonal(model.double(), x.double(), kind="true")
    assert all(v.dtype == torch.float32 for v in f32.values())
    for k in f32:
        assert _rel(f32[k].double(), f64[k]) < 1e-4


def test_mode_restored_no_hooks_left_and_works_under_no_grad():
    model = nn.Sequential(nn.Linear(5, 6), nn.Dropout(0.5), nn.ReLU(), nn.Linear(6, 3))
    model.train()
    x = torch.randn(10, 5)
    with torch.no_grad():
        a = fisher_diagonal(model, x)
    b = fisher_diagonal(model, x)
    assert all(torch.equal(a[k], b[k]) for k in a)  # dropout off: deterministic
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    model.eval()
    fisher_diagonal(model, x)
    assert not model.training


def test_errors():
    model = MLP(4, (3,), 2)
    x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    with pytest.raises(ValueError, match="unknown kind"):
        fisher_diagonal(model, x, kind="exact")
    for kind in ("empirical", "batched"):
        with pytest.raises(ValueError, match="targets"):
            fisher_diagonal(model, x, kind=kind)
        with pytest.raises(ValueError, match="targets"):
            fisher_matrix(model, x, kind=kind)
    with pytest.raises(ValueError, match="must match"):
        fisher_diagonal(model, x, y[:5], kind="empirical")
    with pytest.raises(ValueError, match="empty"):
        fisher_diagonal(model, x[:0])
    with pytest.raises(ValueError, match="empty"):
        fisher_matrix(model, x[:0])
    with pytest.raises(ValueError, match="batch_size"):
        fisher_diagonal(model, x, batch_size=0)
    with pytest.raises(ValueError, match="class indices"):
        fisher_diagonal(model, x, y + 5, kind="empirical")
    with pytest.raises(ValueError, match="class indices"):
        fisher_diagonal(model, x, y.float(), kind="empirical")
    with pytest.raises(ValueError, match="class indices"):
        fisher_diagonal(model, x, y.bool(), kind="empirical")
    with pytest.raises(ValueError, match="float64"):
        fisher_diagonal(model, x.double())
    with pytest.raises(ValueError, match="generator"):
        fisher_diagonal(model, x, kind="sampled", generator=-1)
    with pytest.raises(ValueError, match="head"):
        fisher_diagonal(model, x, head=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="nn.Module"):
        fisher_diagonal(lambda t: t, x)
    with pytest.raises(ValueError, match="kind"):
        fisher_matrix(model, x, kind="hessian")
    with pytest.raises(ValueError):
        fisher_matrix(model, x, y[:-1], kind="empirical")
    with pytest.raises(ValueError, match="max_params"):
        fisher_matrix(MLP(), x.new_zeros(2, 784))
    frozen = MLP(4, (3,), 2).requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        fisher_diagonal(frozen, x)
