"""Batched sweeps: K stacked copies train exactly like K separate runs (to float rounding)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from cl_utils import sweeps
from cl_utils.data import Task, permuted_mnist, split_mnist
from cl_utils.models import MLP
from cl_utils.training import evaluate, set_seed, train


@pytest.fixture(scope="module")
def split3(mnist):
    return [t.subset(320, 200) for t in split_mnist(scenario="task", data=mnist, device="cpu")[:3]]


@pytest.fixture(scope="module")
def permuted2(mnist):
    return [t.subset(384, 200) for t in permuted_mnist(2, seed=0, data=mnist, device="cpu")]


def as_double(t: Task) -> Task:
    return Task(t.name, t.train_x.double(), t.train_y, t.test_x.double(), t.test_y, t.n_outputs, t.head)


def perturbed_copies(model: nn.Module, k: int) -> list[nn.Module]:
    out = []
    for i in range(k):
        m = copy.deepcopy(model)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        out.append(m)
    return out


def max_diff(params: dict, k: int, model: nn.Module) -> float:
    return max(float((params[n][k] - p).detach().abs().max()) for n, p in model.named_parameters())


@pytest.mark.parametrize("optimizer", ["adam", "momentum", "adadelta"])
def test_stacked_copies_equal_separate_runs_float64(split3, optimizer):
    tasks = [as_double(t) for t in split3]
    set_seed(0)
    models = perturbed_copies(MLP.for_tasks(tasks, hidden=(24,)).double(), 3)
    params = sweeps.stack_copies(models)
    lr = {"adam": 1e-2, "momentum": 0.05, "adadelta": 1.0}[optimizer]
    hist = sweeps.train_stacked(models[0], params, tasks[1], epochs=2, batch_size=64, lr=lr, optimizer=optimizer,
                                seed=7, progress=False)
    assert hist["loss"].shape == (3, 10) and hist["train_accuracy"].shape == (3, 2) and hist["steps"] == 10
    for k, m in enumerate(models):
        ref = train(m, tasks[1], epochs=2, batch_size=64, lr=lr, optimizer=optimizer, seed=7, progress=False)
        assert max_diff(params, k, m) < 1e-10
        assert torch.allclose(hist["loss"][k].double(), ref["loss"].double(), atol=1e-10)
        assert torch.equal(hist["train_accuracy"][k], ref["train_accuracy"])
    acc = sweeps.evaluate_stacked(models[0], params, tasks)
    assert torch.allclose(acc, torch.tensor([evaluate(m, tasks) for m in models], dtype=torch.float64))


def test_stacked_float32_joint_heads_and_penalty(split3):
    """float32, joint training with one head per sample, and a per-copy penalty hook."""
    set_seed(1)
    model = MLP.for_tasks(split3, hidden=(32,))
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    weights = torch.tensor([0.0, 0.5, 5.0])

    def stacked_pull(params):
        return weights * sum(((p - anchor[n]) ** 2).flatten(1).sum(1) for n, p in params.items())

    params = sweeps.stack_copies(model, 3)
    sweeps.train_stacked(model, params, split3, epochs=1, batch_size=50, penalty=stacked_pull, seed=3,
                         progress=False)
    for k, w in enumerate(weights.tolist()):
        m = copy.deepcopy(model)
        pull = lambda mm, w=w: w * sum(((p - anchor[n]) ** 2).sum() for n, p in mm.named_parameters())  # noqa: E731
        train(m, split3, epochs=1, batch_size=50, penalty=pull, seed=3, progress=False)
        assert max_diff(params, k, m) < 2e-5
        assert torch.equal(sweeps.copy_at(model, params, k).layers[0].weight, params["layers.0.weight"][k])


def test_any_module_works_through_vmap(permuted2):
    class Net(nn.Module):  # not an MLP: a generic module (conv-free, but its own forward)
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(784, 20), nn.Linear(20, 10)

        def forward(self, x):
            return self.b(torch.tanh(self.a(x)))

    set_seed(0)
    net = Net()
    params = sweeps.stack_copies(net, 2)
    sweeps.train_stacked(net, params, permuted2[1], batch_size=128, optimizer="sgd", lr=0.1, seed=0, progress=False)
    ref = copy.deepcopy(net)
    train(ref, permuted2[1], batch_size=128, optimizer="sgd", lr=0.1, seed=0, progress=False)
    assert max_diff(params, 1, ref) < 1e-5


def test_frozen_parameters_stay_frozen(permuted2):
    m = MLP(hidden=(8,))
    m.layers[0].weight.requires_grad_(False)
    params = sweeps.stack_copies(m, 2)
    before = params["layers.0.weight"].clone()
    sweeps.train_stacked(m, params, permuted2[0], seed=0, progress=False)
    assert torch.equal(before, params["layers.0.weight"]) and not torch.equal(params["layers.2.bias"][0], m.layers[2].bias)


def test_weight_noise_sweep_equals_separate_runs(mnist):
    from cl_utils import experiments, variational as V

    task = Task("m", mnist.train_x[:400], mnist.train_y[:400], mnist.test_x[:200], mnist.test_y[:200])
    variances = [1e-4, 0.02]
    sw = sweeps.weight_noise_sweep(variances, task, hidden=(16,), epochs=2, progress=False)
    assert sw.values == variances and len(sw.models) == 2 and sw.history["loss"].shape == (2, 8)
    grid = experiments.weight_noise_grid(variances, task, hidden=(16,), epochs=2, progress=False)  # uses the sweep
    for k, var in enumerate(variances):
        set_seed(0)  # the separate run that the sweep replaces
        ref = V.make_variational(MLP(784, (16,), 10), init_var=var, learn_var=False)
        hist = V.train_variational(ref, task, epochs=2, batch_size=100, seed=0, progress=False)
        after = torch.get_rng_state()
        m = sw.models[k]
        assert torch.allclose(sw.history["loss"][k], hist["loss"], rtol=1e-5)
        for (n, p), q in zip(m.named_parameters(), ref.parameters()):
            assert torch.allclose(p, q, atol=1e-5), n
        assert abs(100 * V.error_rate(m, task.test_x, task.test_y) - grid["test_error"][k]) < 1e-9
        assert V.error_rate(m, task.test_x, task.test_y) == V.error_rate(ref, task.test_x, task.test_y)
        sw.restore_rng()  # the sampled error draws the noise the separate run draws
        assert torch.equal(torch.get_rng_state(), after)
        assert V.error_rate(m, task.train_x, task.train_y, sampled=True) == pytest.approx(
            grid["noisy_train_error"][k] / 100, abs=1e-12)
        torch.set_rng_state(after)
        assert V.error_rate(ref, task.train_x, task.train_y, sampled=True) == pytest.approx(
            grid["noisy_train_error"][k] / 100, abs=1e-12)

@pytest.mark.parametrize("fisher_kind, options", [("true", {}), ("empirical", {"mode": "online", "gamma": 0.5})])
def test_ewc_lambda_sweep_equals_sequential_runs(split3, fisher_kind, options):
    """Three split tasks: after task 1 each copy needs its own Fisher, and task 2 sees two terms (or an online one)."""
    from cl_utils.ewc import EWC
    from cl_utils.training import run_sequence

    set_seed(0)
    model = MLP.for_tasks(split3, hidden=(32,))
    before = copy.deepcopy(model)
    lams = [0.0, 10.0, 1000.0]
    sw = sweeps.ewc_lambda_sweep(model, split3, lams, fisher_kind=fisher_kind, ewc=options, epochs=2, batch_size=64,
                                 seed=3, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before.parameters()))  # model untouched
    assert sw.lams == lams and sw.accuracy.shape == (3, 3, 3) and sw.name == "λ" and len(sw.models) == 3
    for k, lam in enumerate(lams):
        ref = run_sequence(copy.deepcopy(model), split3, strategy=EWC(lam, fisher_kind=fisher_kind, **options),
                           seed=3, epochs=2, batch_size=64, progress=False)
        assert torch.allclose(sw.accuracy[k], ref.accuracy, atol=1e-9), (lam, sw.accuracy[k], ref.accuracy)
        run = sw.run(k)
        assert run.names == ref.names and abs(run.final_average - ref.final_average) < 1e-9
        for i in range(3):
            assert torch.allclose(run.histories[i]["loss"], ref.histories[i]["loss"], atol=1e-5)
        assert torch.allclose(sw.final_average[k], torch.tensor(ref.final_average, dtype=torch.float64))
    # λ matters: the strongest penalty keeps the first task best
    assert sw.accuracy[2, -1, 0] > sw.accuracy[0, -1, 0]


def test_lambda_sweep_with_an_l2_anchor(permuted2):
    from cl_utils.ewc import L2Anchor
    from cl_utils.training import run_sequence

    set_seed(0)
    model = MLP(hidden=(16,))
    sw = sweeps.lambda_sweep(model, permuted2, [0.1, 1.0], lambda lam: L2Anchor(lam), optimizer="sgd", lr=0.1,
                             seed=1, progress=False)
    for k, lam in enumerate([0.1, 1.0]):
        ref_model = copy.deepcopy(model)
        ref = run_sequence(ref_model, permuted2, strategy=L2Anchor(lam), optimizer="sgd", lr=0.1, seed=1,
                           progress=False)
        assert torch.allclose(sw.accuracy[k], ref.accuracy, atol=1e-9)
        for (n, p), q in zip(sw.models[k].named_parameters(), ref_model.parameters()):
            assert torch.allclose(p, q, atol=1e-5), n

def test_input_errors(permuted2):
    m = MLP(hidden=(8,))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        sweeps.stack_copies(m, 0)
    with pytest.raises(ValueError, match="same parameter names and shapes"):
        sweeps.stack_copies([m, MLP(hidden=(9,))])
    with pytest.raises(ValueError, match="k=3 but 2 models"):
        sweeps.stack_copies([m, m], 3)
    params = sweeps.stack_copies(m, 2)
    with pytest.raises(ValueError, match="do not match"):
        sweeps.train_stacked(MLP(hidden=(9,)), params, permuted2[0], progress=False)
    with pytest.raises(ValueError, match="not an instance"):
        sweeps.train_stacked(m, params, permuted2[0], optimizer=torch.optim.SGD(m.parameters(), 0.1), progress=False)
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        sweeps.train_stacked(m, params, permuted2[0], penalty=lambda p: torch.zeros(()), progress=False)
    with pytest.raises(ValueError, match="epochs"):
        sweeps.train_stacked(m, params, permuted2[0], epochs=0, progress=False)
    with pytest.raises(ValueError, match="copy index"):
        sweeps.copy_at(m, params, 2)
    with pytest.raises(ValueError, match="split"):
        sweeps.evaluate_stacked(m, params, permuted2, split="val")
    with pytest.raises(ValueError, match="variances must be > 0"):
        sweeps.weight_noise_sweep([0.0, 1.0], permuted2[0], progress=False)
    with pytest.raises(ValueError, match="at least one value"):
        sweeps.weight_noise_sweep([], permuted2[0], progress=False)
    with pytest.raises(ValueError, match="finite and >= 0"):
        sweeps.ewc_lambda_sweep(m, permuted2, [1.0, -1.0], progress=False)
    with pytest.raises(ValueError, match="seed must be"):
        sweeps.ewc_lambda_sweep(m, permuted2, [1.0], seed=None, progress=False)
    with pytest.raises(ValueError, match="not inside ewc="):
        sweeps.ewc_lambda_sweep(m, permuted2, [1.0], ewc={"lam": 2.0}, progress=False)
    with pytest.raises(ValueError, match="mode"):
        sweeps.ewc_lambda_sweep(m, permuted2, [1.0], ewc={"mode": "both"}, progress=False)
    with pytest.raises(ValueError, match="quadratic strategies"):
        sweeps.lambda_sweep(m, permuted2, [1.0], lambda lam: object(), progress=False)
    with pytest.raises(ValueError, match="non-empty sequence of Tasks"):
        sweeps.ewc_lambda_sweep(m, [], [1.0], progress=False)


def test_sequence_sweep_equals_separate_runs_with_own_seeds_and_strategies(split3):
    from cl_utils.ewc import EWC, L2Anchor
    from cl_utils.training import run_sequence

    tasks = [as_double(t) for t in split3]

    def setup():
        models, strategies = [], [None, L2Anchor(0.5), EWC(50.0, fisher_samples=100), EWC(50.0, mode="online")]
        for seed in (0, 1, 2, 3):
            set_seed(seed)
            models.append(MLP.for_tasks(tasks, hidden=(16,)).double())
        return models, strategies

    models, strategies = setup()
    seeds = [0, 1, 2, 3]
    sweep = sweeps.sequence_sweep(models, tasks, strategies, seeds=seeds, epochs=2, batch_size=64, progress=False)
    assert sweep.accuracy.shape == (4, 3, 3)
    for k, (m, s) in enumerate(zip(*setup())):
        ref = run_sequence(m, tasks, strategy=s, epochs=2, batch_size=64, seed=seeds[k], progress=False)
        assert torch.equal(sweep.accuracy[k], ref.accuracy)
        # fused and plain Adam round differently (1e-17 here); over three tasks a ReLU network amplifies that in a
        # handful of weights (13 of 12,700 here), so compare the whole parameter vector, not each entry
        a = torch.cat([p.detach().reshape(-1) for p in sweep.models[k].parameters()])
        b = torch.cat([p.detach().reshape(-1) for p in m.parameters()])
        assert float((a - b).norm() / b.norm()) < 1e-2
    with pytest.raises(ValueError, match="one strategy and one seed per model"):
        sweeps.sequence_sweep(models, tasks, strategies[:2], seeds=seeds, progress=False)
    with pytest.raises(ValueError, match="seed must be None, an int or a sequence of 4"):
        sweeps.train_stacked(models[0], sweeps.stack_copies(models), tasks[0], seed=[1, 2], progress=False)


def test_stacked_results_table_equals_separate_runs(split3):
    from cl_utils import experiments

    tasks = {"task": split3}
    lams = {"L2": {"task": 0.1}, "EWC": {"task": 100.0}, "Online EWC": {"task": 100.0}}
    sizes = dict(hidden=(16,), epochs=1, batch_size=64, fisher_samples=100, progress=False)
    stacked = experiments.continual_table(tasks, experiments.SPLIT_METHODS, lams, seeds=2, stacked=True, **sizes)
    separate = experiments.continual_table(tasks, experiments.SPLIT_METHODS, lams, seeds=2, stacked=False, **sizes)
    assert list(stacked) == list(experiments.SPLIT_METHODS)
    for method in experiments.SPLIT_METHODS:
        a, b = stacked[method]["task"], separate[method]["task"]
        assert a["lam"] == b["lam"]
        got, want = torch.tensor(a["accuracy"]["per_seed"]), torch.tensor(b["accuracy"]["per_seed"])
        assert torch.equal(got, want), method  # the same arithmetic, stacked or not
