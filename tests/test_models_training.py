"""The MLP, the training loop, evaluation and the accuracy matrix; plus the real learning check on MNIST."""

from __future__ import annotations

import pytest
import torch

from cl_utils import config
from cl_utils.data import Task, split_mnist
from cl_utils.models import MLP
from cl_utils.training import default_device, evaluate, run_sequence, set_seed, train


@pytest.fixture(scope="module")
def small_split(mnist):
    return [t.subset(600, 300) for t in split_mnist(scenario="task", data=mnist, device="cpu")[:3]]


def test_mlp_shapes_names_and_heads():
    m = MLP(784, (32, 16), 2, heads=3)
    assert [n for n, _ in m.named_parameters()] == [
        "layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias", "layers.4.weight", "layers.4.bias"]
    x = torch.randn(5, 784)
    full = m.layers(x).view(5, 3, 2)
    assert torch.equal(m(x, head=1), full[:, 1])
    per_sample = torch.tensor([0, 1, 2, 2, 0])
    assert torch.equal(m(x, head=per_sample), full[torch.arange(5), per_sample])
    assert MLP()(x).shape == (5, 10)


def test_mlp_errors():
    with pytest.raises(ValueError, match="hidden"):
        MLP(hidden=(0,))
    with pytest.raises(ValueError, match=r"\(400,\) for one layer"):
        MLP(hidden=400)
    with pytest.raises(ValueError, match="activation"):
        MLP(activation="gelu2")
    with pytest.raises(ValueError, match="N×784"):
        MLP()(torch.randn(3, 100))
    with pytest.raises(ValueError, match="pass head"):
        MLP(heads=2)(torch.randn(3, 784))
    with pytest.raises(ValueError, match="head must lie"):
        MLP(heads=2)(torch.randn(3, 784), head=2)
    with pytest.raises(ValueError, match="single head"):
        MLP()(torch.randn(3, 784), head=1)


def test_for_tasks_sizes_the_network(small_split, mnist):
    m = MLP.for_tasks(small_split)
    assert m.heads == 3 and m.out_features == 2
    cls = split_mnist(scenario="class", data=mnist, device="cpu")
    assert MLP.for_tasks(cls).out_features == 10 and MLP.for_tasks(cls).heads == 1


def test_default_device_honours_cl_device(monkeypatch):
    monkeypatch.setenv("CL_DEVICE", "cpu")
    assert default_device() == torch.device("cpu")
    monkeypatch.delenv("CL_DEVICE")
    assert default_device().type in ("cpu", "cuda", "mps")


def test_same_seed_same_run(small_split):
    runs = []
    for _ in range(2):
        set_seed(3)
        m = MLP.for_tasks(small_split, hidden=(32,))
        runs.append(train(m, small_split[0], epochs=2, batch_size=64, seed=3, progress=False)["loss"])
    assert torch.equal(runs[0], runs[1]) and len(runs[0]) == 2 * 10  # 600 samples / 64 → 10 steps per epoch


def test_history_and_eval_during_training(small_split):
    m = MLP.for_tasks(small_split, hidden=(32,))
    h = train(m, small_split[0], epochs=1, batch_size=100, seed=0, progress=False,
              eval_tasks=small_split, eval_every=2)
    assert h["steps"] == 6 and h["loss"].shape == (6,)
    assert h["eval_steps"] == [0, 2, 4, 6] and h["eval_accuracy"].shape == (4, 3)
    assert h["eval_accuracy"][-1, 0] > h["eval_accuracy"][0, 0] - 1e-9
    assert 0 <= float(h["train_accuracy"][0]) <= 1


def test_train_input_errors(small_split):
    m = MLP.for_tasks(small_split, hidden=(8,))
    for kwargs, msg in [({"epochs": 0}, "epochs"), ({"batch_size": -1}, "batch_size"), ({"optimizer": "lbfgs2"}, "optimizer"),
                        ({"eval_every": 5}, "eval_tasks"), ({"penalty": 3.0}, "penalty")]:
        with pytest.raises(ValueError, match=msg):
            train(m, small_split[0], progress=False, **kwargs)
    with pytest.raises(ValueError, match="evaluate needs"):
        evaluate(m, [])
    with pytest.raises(ValueError, match="outputs"):  # labels 0/1 of a task, a model with one output
        train(MLP(small_split[0].train_x.shape[1], (8,), 1), small_split[0], progress=False)
    with pytest.raises(ValueError, match="no parameters"):
        train(torch.nn.ReLU(), small_split[0], progress=False)
    with pytest.raises(ValueError, match="Module"):
        train("model", small_split[0], progress=False)


def test_penalty_is_added_to_the_loss(small_split):
    def drift(penalty_weight: float) -> float:
        set_seed(0)
        m = MLP.for_tasks(small_split, hidden=(16,))
        anchor = {n: p.detach().clone() for n, p in m.named_parameters()}

        def stay(model):  # a quadratic pull back to the start, strong but stable for SGD (lr·2·c < 1)
            return penalty_weight * sum(((p - anchor[n]) ** 2).sum() for n, p in model.named_parameters())

        train(m, small_split[0], epochs=2, lr=0.1, optimizer="sgd", penalty=stay, progress=False, seed=0)
        return max(float((p.detach() - anchor[n]).abs().max()) for n, p in m.named_parameters())

    free, held = drift(0.0), drift(4.0)
    assert held < free / 5, (held, free)


def test_joint_training_uses_each_sample_head(small_split):
    set_seed(0)
    m = MLP.for_tasks(small_split, hidden=(64,))
    train(m, small_split, epochs=3, progress=False, seed=0)
    assert min(evaluate(m, small_split)) > 0.9


def test_run_sequence_records_the_accuracy_matrix(small_split):
    set_seed(0)
    m = MLP.for_tasks(small_split, hidden=(64,))
    res = run_sequence(m, small_split, epochs=2, progress=False, seed=0)
    R = res.accuracy
    assert R.shape == (3, 3) and res.names == [t.name for t in small_split]
    assert torch.allclose(R[-1], torch.tensor(evaluate(m, small_split), dtype=torch.float64))
    assert all(R[i, i] > 0.9 for i in range(3))  # each task is learnt when it is trained
    assert torch.allclose(res.average_accuracy[0], R[0, 0]) and abs(res.final_average - float(R[-1].mean())) < 1e-12

    class Recorder:
        def __init__(self):
            self.seen = []

        def consolidate(self, model, task):
            self.seen.append(task.name)

        def penalty(self, model):
            return torch.zeros(())

    rec = Recorder()
    run_sequence(MLP.for_tasks(small_split, hidden=(8,)), small_split, strategy=rec, progress=False)
    assert rec.seen == [t.name for t in small_split[:-1]]  # after every task but the last (nothing uses it)
    with pytest.raises(ValueError, match="consolidate"):
        run_sequence(m, small_split, strategy=object())


@pytest.mark.slow
def test_mlp_learns_mnist_within_the_fast_budget(mnist):
    """The learning check: the 784-400-400-10 MLP reaches >= 97% test accuracy with the fast-mode sizes."""
    cfg = config.get_config(fast=True)
    task = Task("mnist", mnist.train_x, mnist.train_y, mnist.test_x, mnist.test_y)
    set_seed(0)
    m = MLP()
    train(m, task, epochs=cfg.mnist.epochs, batch_size=cfg.mnist.batch_size, lr=cfg.mnist.lr, seed=0, progress=False)
    acc = evaluate(m, task)[0]
    assert acc >= 0.97, acc
