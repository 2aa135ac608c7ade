"""cl_utils.ewc: the penalty against a hand computation, online accumulation, errors, state_dict round trip, that
EWC reduces forgetting on real (tiny) split MNIST, and the schema of `reproduce split-mnist --fast --json`."""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
from torch import nn

from cl_utils.data import Task, split_mnist
from cl_utils.ewc import EWC, L2Anchor
from cl_utils.fisher import fisher_diagonal
from cl_utils.models import MLP
from cl_utils.training import run_sequence, set_seed, train


def _task(seed: int, n: int = 64, d: int = 5, c: int = 3, head: int | None = None) -> Task:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    return Task(f"t{seed}", x, y, x[:8], y[:8], n_outputs=c, head=head)


def _model(heads: int = 1) -> MLP:
    torch.manual_seed(0)
    return MLP(5, (4,), 3, heads=heads).double()


def _jiggle(model: nn.Module, seed: int, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _hand(model: nn.Module, lam: float, pairs: list[tuple[dict, dict]]) -> torch.Tensor:
    """(λ/2) Σ_tasks Σ_i F_i (θ_i − θ*_i)², written out."""
    params = dict(model.named_parameters())
    total = torch.zeros((), dtype=torch.float64)
    for anchor, fisher in pairs:
        for k, p in params.items():
            total = total + (fisher[k] * (p.detach() - anchor[k]) ** 2).sum()
    return lam / 2 * total


# --------------------------------------------------------------------------------------------- the penalty


def test_penalty_equals_hand_computation_separate_mode():
    model, lam = _model(), 3.7
    ewc = EWC(lam)
    pairs = []
    for s in range(3):
        _jiggle(model, s)
        task = _task(s)
        fisher = fisher_diagonal(model, task.train_x, kind="true")
        anchor = {k: p.detach().clone() for k, p in model.named_parameters()}
        ewc.consolidate(model, task)
        pairs.append((anchor, fisher))
        for k in anchor:  # what is stored is θ* and the true Fisher of the task's training data
            assert torch.equal(ewc.terms[-1]["anchor"][k], anchor[k])
            assert torch.allclose(ewc.terms[-1]["fisher"][k], fisher[k], rtol=1e-12, atol=0)
    assert len(ewc.terms) == 3 and ewc.consolidations == 3
    _jiggle(model, 10)
    value = ewc.penalty(model)
    assert value.ndim == 0 and value.requires_grad
    assert torch.allclose(value, _hand(model, lam, pairs), rtol=1e-10)
    assert torch.equal(ewc(model), value)  # callable: usable as train(..., penalty=ewc)
    # its gradient: λ Σ_tasks F (θ − θ*)
    value.backward()
    for k, p in model.named_parameters():
        expected = lam * sum(f[k] * (p.detach() - a[k]) for a, f in pairs)
        assert torch.allclose(p.grad, expected, rtol=1e-9, atol=1e-15)


def test_penalty_is_zero_at_the_anchor_and_l2_is_half_squared_distance():
    model = _model()
    ewc = EWC(5.0)
    ewc.consolidate(model, _task(0))
    assert float(ewc(model).detach()) == 0.0
    l2 = L2Anchor(2.0)
    l2.consolidate(model, _task(0))
    delta = 0.3
    with torch.no_grad():
        for p in model.parameters():
            p.add_(delta)
    n_params = sum(p.numel() for p in model.parameters())
    assert float(l2(model).detach()) == pytest.approx(2.0 / 2 * n_params * delta**2, rel=1e-12)


def test_online_mode_accumulates_fisher_and_keeps_the_latest_anchor():
    model = _model()
    for gamma in (1.0, 0.5, 0.0):
        ewc = EWC(1.5, mode="online", gamma=gamma)
        m = copy.deepcopy(model)
        fishers = []
        for s in range(3):
            _jiggle(m, s)
            fishers.append(fisher_diagonal(m, _task(s).train_x, kind="true"))
            ewc.consolidate(m, _task(s))
        anchor = {k: p.detach().clone() for k, p in m.named_parameters()}
        assert len(ewc.terms) == 1
        for k in anchor:
            expected = gamma * (gamma * fishers[0][k] + fishers[1][k]) + fishers[2][k]
            assert torch.allclose(ewc.terms[0]["fisher"][k], expected, rtol=1e-10, atol=1e-300)
            assert torch.equal(ewc.terms[0]["anchor"][k], anchor[k])
        _jiggle(m, 7)
        total = {k: gamma**2 * fishers[0][k] + gamma * fishers[1][k] + fishers[2][k] for k in anchor}
        assert torch.allclose(ewc(m), _hand(m, 1.5, [(anchor, total)]), rtol=1e-10)


def test_l2_online_gamma_zero_keeps_one_unit_weight_anchor():
    model = _model()
    l2 = L2Anchor(1.0, mode="online", gamma=0.0)
    for s in range(3):
        _jiggle(model, s)
        l2.consolidate(model, _task(s))
    assert len(l2.terms) == 1
    assert all(torch.equal(f, torch.ones_like(f)) for f in l2.terms[0]["fisher"].values())


def test_multi_head_fisher_uses_the_tasks_head():
    model = _model(heads=2)
    ewc = EWC(1.0)
    task = _task(0, head=1)
    ewc.consolidate(model, task)
    expected = fisher_diagonal(model, task.train_x, kind="true", head=1)
    w = ewc.terms[0]["fisher"]["layers.2.weight"]
    assert torch.allclose(w, expected["layers.2.weight"])
    assert float(w[:3].abs().sum()) == 0.0 and float(w[3:].abs().sum()) > 0  # head 0's rows are free


@pytest.mark.parametrize("kind", ["sampled", "empirical", "batched"])
def test_other_fisher_kinds_and_subsets(kind):
    model = _model()
    task = _task(0, n=100)
    a, b = EWC(1.0, fisher_kind=kind, fisher_samples=40, seed=3), EWC(1.0, fisher_kind=kind, fisher_samples=40, seed=3)
    a.consolidate(model, task)
    b.consolidate(model, task)
    for k in a.terms[0]["fisher"]:  # same seed, same subset and sampled labels: the same penalty
        assert torch.equal(a.terms[0]["fisher"][k], b.terms[0]["fisher"][k])
    if kind == "empirical":  # the subset is 40 of the task's samples, drawn from the seed
        idx = torch.randperm(100, generator=torch.Generator().manual_seed(3))[:40]
        exp = fisher_diagonal(model, task.train_x[idx], task.train_y[idx], kind="empirical")
        assert all(torch.allclose(a.terms[0]["fisher"][k], exp[k]) for k in exp)
    if kind == "batched":
        full = EWC(1.0, fisher_kind="batched", fisher_batch_size=10)
        full.consolidate(model, task)
        exp = fisher_diagonal(model, task.train_x, task.train_y, kind="batched", batch_size=10)
        assert all(torch.allclose(full.terms[0]["fisher"][k], exp[k]) for k in exp)


# ------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lam=-1.0), "lam"),
        (dict(lam=float("nan")), "lam"),
        (dict(lam="big"), "lam"),
        (dict(lam=1.0, gamma=1.5), "gamma"),
        (dict(lam=1.0, gamma=-0.1), "gamma"),
        (dict(lam=1.0, mode="sometimes"), "mode"),
        (dict(lam=1.0, fisher_kind="fancy"), "fisher_kind"),
        (dict(lam=1.0, fisher_samples=0), "fisher_samples"),
        (dict(lam=1.0, fisher_batch_size=0), "fisher_batch_size"),
        (dict(lam=1.0, seed=-1), "seed"),
    ],
)
def test_bad_settings_raise(kwargs, message):
    lam = kwargs.pop("lam")
    with pytest.raises(ValueError, match=message):
        EWC(lam, **kwargs)


def test_numpy_and_tensor_scalars_are_accepted_as_lam_and_gamma():
    import numpy as np

    ewc = EWC(np.float32(10.0), mode="online", gamma=torch.tensor(0.5))
    assert (ewc.lam, ewc.gamma) == (10.0, 0.5) and type(ewc.lam) is float and type(ewc.gamma) is float
    for bad in (True, torch.ones(2), 1j):
        with pytest.raises(ValueError, match="lam"):
            EWC(bad)
    with pytest.raises(ValueError, match="Module"):
        EWC(1.0).penalty("not a model")


def test_l2_errors_and_usage_errors():
    with pytest.raises(ValueError, match="lam"):
        L2Anchor(-0.5)
    with pytest.raises(ValueError, match="gamma"):
        L2Anchor(1.0, mode="online", gamma=2.0)
    model = _model()
    for strategy in (EWC(1.0), L2Anchor(1.0)):
        with pytest.raises(ValueError, match="before any consolidate"):
            strategy.penalty(model)
        with pytest.raises(ValueError, match="Task"):
            strategy.consolidate(model, "not a task")
        with pytest.raises(ValueError, match="Module"):
            strategy.consolidate("not a model", _task(0))
    ewc = EWC(1.0)
    ewc.consolidate(model, _task(0))
    with pytest.raises(ValueError, match="shape"):
        ewc.penalty(MLP(5, (6,), 3).double())


# ------------------------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("make", [lambda: EWC(2.5, mode="separate"), lambda: EWC(0.7, mode="online", gamma=0.9,
                                                                                  fisher_kind="empirical"),
                                  lambda: L2Anchor(0.3, mode="online", gamma=0.0)])
def test_state_dict_round_trip_is_exact(make):
    model = _model()
    ewc = make()
    for s in range(3):
        _jiggle(model, s)
        ewc.consolidate(model, _task(s))
    _jiggle(model, 9)
    buffer = io.BytesIO()
    torch.save(ewc.state_dict(), buffer)
    buffer.seek(0)
    other = type(ewc)(0.0)
    other.load_state_dict(torch.load(buffer))
    assert repr(other) == repr(ewc)
    assert torch.equal(other(model), ewc(model))
    g1 = torch.autograd.grad(ewc(model), list(model.parameters()))
    g2 = torch.autograd.grad(other(model), list(model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))
    s1, s2 = ewc.state_dict(), other.state_dict()
    assert {k: v for k, v in s1.items() if k != "terms"} == {k: v for k, v in s2.items() if k != "terms"}
    for t1, t2 in zip(s1["terms"], s2["terms"]):
        for part in ("anchor", "fisher"):
            assert all(torch.equal(t1[part][k], t2[part][k]) for k in t1[part])
    # the loaded penalty keeps working: one more task
    ewc.consolidate(model, _task(5))
    other.consolidate(model, _task(5))
    assert torch.equal(other(model), ewc(model))


def test_load_state_dict_rejects_bad_states():
    with pytest.raises(ValueError, match="state_dict"):
        EWC(1.0).load_state_dict({"lam": 1.0})
    l2 = L2Anchor(1.0)
    l2.consolidate(_model(), _task(0))
    with pytest.raises(ValueError, match="L2Anchor"):
        EWC(1.0).load_state_dict(l2.state_dict())
    state = EWC(1.0).state_dict()
    state["gamma"] = 3.0
    with pytest.raises(ValueError, match="gamma"):
        EWC(1.0).load_state_dict(state)


# --------------------------------------------------------------------------------------- with real training


def test_plugs_into_train_as_a_penalty():
    model = _model()
    task = _task(0, n=256)
    ewc = EWC(1e6)
    ewc.consolidate(model, task)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    train(model, _task(1, n=256), epochs=2, batch_size=32, lr=1e-2, penalty=ewc, progress=False, seed=0)
    free = copy.deepcopy(model)
    moved_ewc = sum(float((p.detach() - before[k]).abs().sum()) for k, p in model.named_parameters())
    with torch.no_grad():
        for k, p in free.named_parameters():
            p.copy_(before[k])
    train(free, _task(1, n=256), epochs=2, batch_size=32, lr=1e-2, progress=False, seed=0)
    moved_free = sum(float((p.detach() - before[k]).abs().sum()) for k, p in free.named_parameters())
    assert moved_ewc < 0.5 * moved_free  # a strong penalty holds the parameters near θ*


def test_ewc_reduces_forgetting_on_tiny_split_mnist(mnist):
    tasks = [t.subset(1000, 500, seed=i)
             for i, t in enumerate(split_mnist(((0, 1), (2, 3), (4, 5)), scenario="domain", data=mnist, device="cpu"))]
    set_seed(0)
    model = MLP.for_tasks(tasks, (100,))
    plain = run_sequence(copy.deepcopy(model), tasks, epochs=2, seed=0, progress=False)
    ewc = run_sequence(copy.deepcopy(model), tasks, strategy=EWC(1e3), epochs=2, seed=0, progress=False)
    assert float(plain.accuracy[0, 0]) > 0.95 and float(ewc.accuracy[0, 0]) > 0.95  # both learn task 0
    assert float(ewc.accuracy[-1, 0]) > float(plain.accuracy[-1, 0]) + 0.1  # EWC forgets task 0 far less
    assert ewc.final_average > plain.final_average + 0.03


# --------------------------------------------------------------------------------------------- experiments


def test_lambda_grid_is_k_separate_runs(mnist):
    from cl_utils.experiments import ewc_lambda_grid

    tasks = [t.subset(300, 200, seed=i)
             for i, t in enumerate(split_mnist(((0, 1), (2, 3)), scenario="domain", data=mnist, device="cpu"))]
    set_seed(0)
    model = MLP.for_tasks(tasks, (32,))
    init = copy.deepcopy(model)
    grid = ewc_lambda_grid(model, tasks, [0.0, 1e4], epochs=1, seed=3, progress=False)
    assert grid["lams"] == [0.0, 1e4] and grid["names"] == [t.name for t in tasks]
    assert grid["accuracy"].shape == (2, 2, 2) and grid["accuracy"].dtype == torch.float64
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), init.parameters()))  # model untouched
    ref = run_sequence(copy.deepcopy(init), tasks, strategy=EWC(1e4), epochs=1, seed=3, progress=False)
    assert torch.equal(grid["accuracy"][1], ref.accuracy)
    ref0 = run_sequence(copy.deepcopy(init), tasks, epochs=1, seed=3, progress=False)
    assert torch.equal(grid["accuracy"][0], ref0.accuracy)  # λ = 0 is fine-tuning


def test_summarize_runs():
    from cl_utils.experiments import summarize_runs

    a = [[90.0, 0.0], [50.0, 100.0]]
    b = [[80.0, 0.0], [70.0, 90.0]]
    s = summarize_runs([a, b])
    assert s["final_average"]["per_seed"] == [75.0, 80.0]
    assert s["final_average"]["mean"] == 77.5
    assert s["accuracy"]["mean"] == [[85.0, 0.0], [60.0, 95.0]]
    assert s["average_accuracy"]["mean"] == [85.0, 77.5]
    joint = summarize_runs([[[99.0, 97.0]]])
    assert joint["average_accuracy"]["mean"] == [98.0] and joint["final_average"]["std"] == 0.0


@pytest.mark.slow
def test_cli_reproduce_split_mnist_fast_json(capsys):
    from cl_utils.__main__ import main
    from cl_utils.experiments import HSU_2018_SPLIT_MNIST, SPLIT_METHODS

    assert main(["reproduce", "split-mnist", "--fast", "--json", "--no-progress", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["experiment"] == "split-mnist" and out["fast"] is True and out["seeds"] == 1
    assert out["methods"] == list(SPLIT_METHODS) and out["scenarios"] == ["task", "domain", "class"]
    assert out["hsu_2018"] == HSU_2018_SPLIT_MNIST
    for method in SPLIT_METHODS:
        for scenario in out["scenarios"]:
            r = out["results"][method][scenario]
            fa = r["final_average"]
            assert set(fa) == {"mean", "std", "per_seed"} and len(fa["per_seed"]) == 1 and 0 <= fa["mean"] <= 100
            rows = 1 if method == "Offline" else 5
            assert len(r["accuracy"]["mean"]) == rows and all(len(row) == 5 for row in r["accuracy"]["mean"])
            assert len(r["accuracy"]["per_seed"]) == 1
            assert fa["mean"] == pytest.approx(sum(r["accuracy"]["mean"][-1]) / 5)
            assert len(r["average_accuracy"]["mean"]) == rows
            assert (r["lam"] is None) == (method not in ("L2", "EWC", "Online EWC"))
    res = out["results"]
    assert res["Offline"]["task"]["final_average"]["mean"] > 90  # joint training learns every pair
    assert res["Adam"]["class"]["final_average"]["mean"] < 40  # class-incremental fine-tuning forgets


def test_fisher_kinds_sweep_shapes_and_jensen(mnist):
    from cl_utils.experiments import fisher_kinds_sweep

    tasks = [t.subset(256, 100, seed=i)
             for i, t in enumerate(split_mnist(((0, 1), (2, 3)), scenario="task", data=mnist, device="cpu"))]
    out = fisher_kinds_sweep(tasks, [1.0, 100.0], kinds=("empirical", "batched"), hidden=(16,), epochs=1,
                             progress=False)
    assert out["kinds"] == ["empirical", "batched"] and out["lams"] == [1.0, 100.0]
    for kind in out["kinds"]:
        assert len(out["final_average"][kind]) == 2 and torch.tensor(out["accuracy"][kind]).shape == (2, 2, 2)
    # the square of a minibatch mean never exceeds the mean of the squares (Jensen), parameter by parameter
    assert 0 < out["mean_fisher"]["batched"] <= out["mean_fisher"]["empirical"]


def test_continual_strategy_and_run_method_errors():
    from cl_utils.experiments import continual_strategy, run_method

    assert continual_strategy("Adam") is None and continual_strategy("Offline") is None
    l2 = continual_strategy("L2", 0.5)
    assert isinstance(l2, L2Anchor) and l2.mode == "online" and l2.gamma == 0.0
    online = continual_strategy("Online EWC", 10.0)
    assert isinstance(online, EWC) and online.mode == "online" and online.gamma == 1.0
    with pytest.raises(ValueError, match="λ"):
        continual_strategy("EWC")
    with pytest.raises(ValueError, match="unknown method"):
        continual_strategy("Replay", 1.0)
    with pytest.raises(ValueError, match="unknown method"):
        run_method("Replay", [_task(0)], seed=0)


@pytest.mark.slow
def test_cli_reproduce_permuted_mnist_fast_json(capsys):
    from cl_utils.__main__ import main
    from cl_utils.experiments import PERMUTED_METHODS

    assert main(["reproduce", "permuted-mnist", "--fast", "--json", "--no-progress", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["experiment"] == "permuted-mnist" and out["scenarios"] == ["permuted"]
    assert out["methods"] == list(PERMUTED_METHODS) and out["settings"]["tasks"] == 3
    for method in PERMUTED_METHODS:
        r = out["results"][method]["permuted"]
        assert len(r["accuracy"]["mean"]) == (1 if method == "Offline" else 3)
        assert 0 <= r["final_average"]["mean"] <= 100


# ------------------------------------------------------------------- validation, default seeds, tiny experiments


def test_load_state_dict_rejects_terms_whose_keys_do_not_match():
    ewc = EWC(1.0)
    for s in range(2):
        _jiggle(_model(), s)
        ewc.consolidate(_model(), _task(s))
    good = ewc.state_dict()
    bad = copy.deepcopy(good)
    bad["terms"][0]["fisher"].pop(next(iter(bad["terms"][0]["fisher"])))  # Fisher without one parameter
    with pytest.raises(ValueError, match="differ"):
        EWC(1.0).load_state_dict(bad)
    bad = copy.deepcopy(good)
    k = next(iter(bad["terms"][1]["anchor"]))
    for part in ("anchor", "fisher"):
        bad["terms"][1][part]["renamed"] = bad["terms"][1][part].pop(k)  # term 1 names other parameters
    with pytest.raises(ValueError, match="other parameters than term 0"):
        EWC(1.0).load_state_dict(bad)
    bad = copy.deepcopy(good)
    bad["terms"][0]["fisher"][k] = bad["terms"][0]["fisher"][k][:1]
    with pytest.raises(ValueError, match="shapes"):
        EWC(1.0).load_state_dict(bad)
    bad = copy.deepcopy(good)
    bad["terms"][0]["extra"] = {}
    with pytest.raises(ValueError, match="exactly the keys"):
        EWC(1.0).load_state_dict(bad)
    with pytest.raises(ValueError, match="consolidations"):
        EWC(1.0).load_state_dict({**good, "consolidations": 1})  # fewer consolidations than stored terms
    target = EWC(1.0)
    with pytest.raises(ValueError):
        target.load_state_dict({**good, "terms": "nope"})
    assert target.terms == [] and target.consolidations == 0  # a rejected state leaves the object as it was
    target.load_state_dict(good)
    assert len(target.terms) == 2


def test_quadratic_is_the_merged_penalty():
    model, ewc = _model(), EWC(2.0)
    with pytest.raises(ValueError, match="before any consolidate"):
        ewc.quadratic()
    for s in range(3):
        _jiggle(model, s)
        ewc.consolidate(model, _task(s))
    _jiggle(model, 7)
    m, f, c = ewc.quadratic()
    by_merge = 1.0 * (sum((f[k] * (p.detach() - m[k]) ** 2).sum() for k, p in model.named_parameters()) + c)
    assert torch.allclose(ewc(model).detach(), by_merge, rtol=1e-10)


def test_run_sequence_skips_the_unused_last_consolidation():
    tasks = [_task(s, n=32) for s in range(3)]
    ewc = EWC(1.0)
    run_sequence(_model(), tasks, strategy=ewc, epochs=1, batch_size=16, seed=0, progress=False)
    assert ewc.consolidations == 2 and len(ewc.terms) == 2


def test_experiment_input_errors():
    from cl_utils import config
    from cl_utils.experiments import continual_table_rows, permuted_mnist_tasks, summarize_runs

    with pytest.raises(ValueError, match="non-empty"):
        summarize_runs([])
    with pytest.raises(ValueError, match="same shape"):
        summarize_runs([[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0]]])
    with pytest.raises(ValueError, match="T×T"):
        summarize_runs([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    cfg = config.get_config(fast=True)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="n_tasks"):
            permuted_mnist_tasks(cfg, bad)
    with pytest.raises(ValueError, match="non-empty dict"):
        continual_table_rows({})
    with pytest.raises(ValueError, match="final_average"):
        continual_table_rows({"EWC": {"task": {"lam": 1.0}}})
    ok = {"EWC": {"task": {"lam": 1.0, "final_average": {"mean": 90.0, "std": 1.0}}}}
    assert continual_table_rows(ok)[0]["task"] == "90.00 ± 1.00"
    with pytest.raises(ValueError, match="reference"):
        continual_table_rows(ok, reference={"EWC": 97.7})


@pytest.fixture
def tiny_config(monkeypatch):
    """Fast mode shrunk further: tables of seconds (cfg.seeds = 1, permuted_seeds = 2), a 2-value λ search."""
    import dataclasses

    from cl_utils import config, experiments

    fast = config.get_config(fast=True)
    ewc = dataclasses.replace(fast.ewc, split_hidden=(16,), split_train=120, split_test=60, split_epochs=1,
                              permuted_tasks=2, permuted_hidden=(16,), permuted_train=120, permuted_test=60,
                              permuted_seeds=2, fisher_samples=40)
    monkeypatch.setattr(config, "FAST", dataclasses.replace(fast, seeds=1, ewc=ewc))
    monkeypatch.setattr(experiments, "LAMBDA_SEARCH_GRID", {"L2": (0.01, 1.0), "EWC": (1.0, 1e4),
                                                            "Online EWC": (1.0, 1e4)})


def test_cli_split_mnist_seeds_2_gives_two_runs_per_entry(tiny_config, capsys):
    from cl_utils.__main__ import main
    from cl_utils.experiments import SPLIT_METHODS

    assert main(["reproduce", "split-mnist", "--fast", "--seeds", "2", "--json", "--no-progress", "--device",
                 "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["seeds"] == 2 and out["settings"]["train_per_task"] == [120] * 5
    for method in SPLIT_METHODS:
        for scenario in out["scenarios"]:
            r = out["results"][method][scenario]
            assert len(r["final_average"]["per_seed"]) == 2 and len(r["accuracy"]["per_seed"]) == 2
            assert r["final_average"]["mean"] == pytest.approx(sum(r["final_average"]["per_seed"]) / 2)
    assert "(λ/2)" in out["caption"] and "averaged" in out["caption"]


def test_permuted_mnist_defaults_to_the_configs_permuted_seeds(tiny_config):
    from cl_utils.experiments import reproduce

    out = reproduce("permuted-mnist", fast=True, device="cpu", progress=False)  # cfg.seeds = 1, permuted_seeds = 2
    assert out.data["seeds"] == 2
    assert len(out.data["results"]["EWC"]["permuted"]["final_average"]["per_seed"]) == 2
    assert reproduce("permuted-mnist", fast=True, seeds=1, device="cpu", progress=False).data["seeds"] == 1
    assert "(λ/2)" in out.data["caption"]


def test_cli_ewc_lambda_search_tiny(tiny_config, capsys):
    from cl_utils.__main__ import main
    from cl_utils.experiments import REGULARIZED

    assert main(["reproduce", "ewc-lambda-search", "--fast", "--json", "--no-progress", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["seeds"] == 1  # the search's own default, not cfg.seeds
    scenarios = ["task", "domain", "class", "permuted"]
    assert len(out["rows"]) == len(scenarios) * len(REGULARIZED) * 2
    for method in REGULARIZED:
        for sc in scenarios:
            scores = out["scores"][sc][method]
            assert len(scores) == 2 and all(0 <= v <= 100 for v in scores)
            assert out["best"][method][sc] == out["grid"][method][max(range(2), key=scores.__getitem__)]
            assert out["at_edge"][method][sc] is True  # with two grid values the best is always at an edge


def test_lambda_search_arguments(tiny_config):
    from cl_utils import config
    from cl_utils.experiments import lambda_search

    cfg = config.get_config(fast=True)
    out = lambda_search(cfg, scenarios=["domain"], methods=["EWC"], grid={"EWC": [1.0, 10.0, 1e4]}, device="cpu",
                        progress=False)
    assert list(out["scores"]) == ["domain"] and len(out["scores"]["domain"]["EWC"]) == 3
    assert out["at_edge"]["EWC"]["domain"] == (out["best"]["EWC"]["domain"] in (1.0, 1e4))
    with pytest.raises(ValueError, match="methods"):
        lambda_search(cfg, methods=["Adam"])
    with pytest.raises(ValueError, match="scenarios"):
        lambda_search(cfg, scenarios=["rotated"])
    with pytest.raises(ValueError, match="seeds"):
        lambda_search(cfg, seeds=0)


def test_table_lambdas_are_the_recorded_search_optimum_inside_the_grid():
    from cl_utils.experiments import (LAMBDA_SEARCH_GRID, LAMBDA_SEARCH_SCORES, PERMUTED_MNIST_LAMBDA, REGULARIZED,
                                      SPLIT_MNIST_LAMBDA)

    chosen = {m: {**SPLIT_MNIST_LAMBDA[m], "permuted": PERMUTED_MNIST_LAMBDA[m]} for m in REGULARIZED}
    for m in REGULARIZED:
        grid = LAMBDA_SEARCH_GRID[m]
        for scenario, lam in chosen[m].items():
            scores = LAMBDA_SEARCH_SCORES[scenario][m]
            assert len(scores) == len(grid)
            k = grid.index(lam)
            assert scores[k] == max(scores), (m, scenario)
            assert 0 < k < len(grid) - 1, (m, scenario)  # bracketed: not at an edge of the grid
