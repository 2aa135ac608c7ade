"""Experiment sizes for the full book and for fast mode, read in one place.

Fast mode (``CL_FAST=1`` in the environment, or ``reproduce --fast`` on the command line) runs the same code
paths as the full book with smaller sizes, so that every notebook and the test suite finish in minutes on two CPU
cores. Chapters read their sizes with :func:`get_config`; nothing else in the package looks at ``CL_FAST``.

Each chapter owns one section (a frozen dataclass) and sets its full and fast values side by side below.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = [
    "Config", "MNISTSizes", "FoundationsSizes", "MLEBayesSizes", "WeightNoiseSizes", "LaplaceSizes", "FisherSizes",
    "EWCSizes",
    "get_config", "fast_mode", "book_build", "FULL", "FAST",
]

_FALSE = ("", "0", "false", "no", "off")


def fast_mode() -> bool:
    """True when ``CL_FAST`` is set to anything but ``0``/``false``/``no``/``off``."""
    return os.environ.get("CL_FAST", "0").strip().lower() not in _FALSE


def book_build() -> bool:
    """True while the book is being built (``CL_BOOK_BUILD=1``, set by ``.ci/build-book``).

    The static pages have no kernel: progress bars are switched off and figures are emitted as HTML.
    """
    return os.environ.get("CL_BOOK_BUILD", "0").strip().lower() not in _FALSE


@dataclass(frozen=True)
class MNISTSizes:
    """The plain MNIST classifier of the foundations (and the learning check in the tests)."""

    epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3


@dataclass(frozen=True)
class FoundationsSizes:
    """Chapter 1: the depth experiment, the optimizer paths on a 2-D surface, the optimizers on MNIST."""

    depth: int = 20  # hidden layers of the vanishing-gradient networks
    width: int = 256
    signal_batch: int = 512  # MNIST images the per-layer gradients are measured on
    rosenbrock_steps: int = 2000  # optimizer steps on Rosenbrock's function
    opt_hidden: tuple[int, ...] = (100,)  # the MLP the optimizers train on MNIST
    opt_train: int | None = None  # training images (None: all 60,000)
    opt_epochs: int = 1
    opt_batch_size: int = 128


@dataclass(frozen=True)
class MLEBayesSizes:
    """Chapter 2: the small network whose logits check NLL = cross-entropy; the conjugate model's constants."""

    nll_train: int | None = None  # training images (None: all 60,000)
    nll_epochs: int = 1
    nll_hidden: tuple[int, ...] = (100,)
    noise_var: float = 0.1  # σ² of the Bayesian linear regression on the digits (targets ±1)
    prior_var: float = 1.0  # its prior N(0, σ₀² I)


@dataclass(frozen=True)
class WeightNoiseSizes:
    """Chapter 6 (Graves 2011 on MNIST): the MLP, the data subsets, the training budget, the σ² grid."""

    hidden: tuple[int, ...] = (100,)  # the MLP 784-100-10
    n_train: int = 20_000  # training digits (from MNIST's training set)
    n_val: int = 5_000  # validation digits for early stopping (disjoint from the training digits)
    n_test: int = 10_000  # test digits (MNIST's test set)
    batch_size: int = 100
    max_epochs: int = 20  # epoch cap of every row of the table
    patience: int = 5  # early stopping: epochs without a lower validation error
    samples: int = 1  # Monte Carlo weight samples per training step
    dl_samples: int = 4  # samples for L^E in the description length
    init_var: float = 0.075**2  # start of the learned σᵢ² of adaptive weight noise (fixed rows: Graves' 0.075²)
    grid: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)  # fixed weight-noise σ² of the slider
    grid_epochs: int = 8
    fisher_hidden: int = 20  # the small MLP on which Graves' shortcut meets the exact gradient
    fisher_n: int = 500  # its digits
    fisher_samples: int = 2000  # weight samples for both estimates


@dataclass(frozen=True)
class LaplaceSizes:
    """Chapter 3: the 1-D Beta example, the 2-D Bayesian logistic regression on a grid."""

    beta_n: tuple[int, ...] = (2, 5, 10, 20, 50, 100, 300)  # data sizes of the Beta slider
    logistic_n: tuple[int, ...] = (5, 10, 20, 50, 200)  # data sizes of the 2-D posterior slider
    grid: int = 361  # points per axis of the exact 2-D posterior, on [−6, 6] (spacing 1/30)
    plot_grid: int = 101  # points per axis drawn in the contour figure
    mc_samples: int = 20_000  # Monte Carlo draws for the predictive


@dataclass(frozen=True)
class FisherSizes:
    """Chapter 4: the MLP whose Fisher estimates are compared, the small MLP whose full Fisher is drawn."""

    train: int | None = 20_000  # training images for the 784-400-400-10 MLP (None: all 60,000)
    epochs: int = 1
    samples: int = 2000  # digits the four estimates average over
    small_hidden: int = 6  # hidden units of the small MLP on 7×7 digits (full Fisher, heatmap)
    small_epochs: int = 3
    full_samples: int = 1000  # digits its full Fisher and Hessian average over
    cost_hidden: tuple[int, ...] = (1, 2, 4, 8)  # widths of the cost table (MLP 784-h-10)
    cost_samples: int = 200
    loop_samples: int = 100  # samples of the timed naive loop, empirical Fisher (one backward per sample)
    loop_true_samples: int = 20  # ... and true Fisher (one backward per sample and class)


@dataclass(frozen=True)
class EWCSizes:
    """Chapter 5: split MNIST as Hsu et al. (2018), permuted MNIST, the forgetting curves, the λ grids."""

    # split MNIST (the table beside Hsu et al.'s): MLP 784-400-400, Adam lr 1e-3, batch 128, 4 epochs per task
    split_hidden: tuple[int, ...] = (400, 400)
    split_epochs: int = 4
    split_train: int | None = None  # training digits per task (None: all, about 12,000)
    split_test: int | None = None  # test digits per task (None: all, about 2,000)
    batch_size: int = 128
    lr: float = 1e-3
    fisher_samples: int | None = 2_000  # training digits each EWC Fisher averages over (None: all of the task's)
    # permuted MNIST
    permuted_tasks: int = 5
    permuted_hidden: tuple[int, ...] = (100, 100)
    permuted_epochs: int = 1
    permuted_train: int | None = None  # training digits per task (None: all 60,000)
    permuted_test: int | None = None
    permuted_seeds: int = 3
    # forgetting curves over training steps (permuted MNIST, fine-tuning vs EWC)
    curve_tasks: int = 3
    curve_train: int | None = 20_000
    curve_eval_every: int = 20
    # the λ slider: two permuted tasks, A then B
    grid_lams: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6)
    grid_train: int | None = 10_000
    grid_epochs: int = 1
    # which Fisher inside EWC (split MNIST, task-incremental)
    kinds_lams: tuple[float, ...] = (1.0, 10.0, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7)
    kinds_train: int | None = 4_000
    kinds_epochs: int = 2


@dataclass(frozen=True)
class Config:
    """All experiment sizes. ``fast`` says which of the two settings this is."""

    fast: bool = False
    seeds: int = 5
    mnist: MNISTSizes = field(default_factory=MNISTSizes)
    foundations: FoundationsSizes = field(default_factory=FoundationsSizes)
    mle_bayes: MLEBayesSizes = field(default_factory=MLEBayesSizes)
    weight_noise: WeightNoiseSizes = field(default_factory=WeightNoiseSizes)
    laplace: LaplaceSizes = field(default_factory=LaplaceSizes)
    fisher: FisherSizes = field(default_factory=FisherSizes)
    ewc: EWCSizes = field(default_factory=EWCSizes)


FULL = Config(
    fast=False,
    seeds=5,
    mnist=MNISTSizes(epochs=3),
)

FAST = Config(
    fast=True,
    seeds=1,
    mnist=MNISTSizes(epochs=2),
    foundations=FoundationsSizes(rosenbrock_steps=1000, opt_train=10_000),
    mle_bayes=MLEBayesSizes(nll_train=10_000),
    weight_noise=WeightNoiseSizes(hidden=(50,), n_train=2_000, n_val=1_000, n_test=2_000, max_epochs=6, patience=2,
                                  dl_samples=1, grid=(1e-4, 1e-3, 1e-2, 1e-1), grid_epochs=3, fisher_n=200,
                                  fisher_samples=200),
    laplace=LaplaceSizes(grid=241, plot_grid=81, mc_samples=5000),
    fisher=FisherSizes(train=10_000, samples=1000, small_epochs=2, full_samples=500, cost_hidden=(1, 2, 4),
                       cost_samples=100, loop_samples=50, loop_true_samples=10),
    ewc=EWCSizes(split_hidden=(100, 100), split_train=1_000, split_test=500, split_epochs=2, permuted_tasks=3,
                 permuted_train=2_000, permuted_test=1_000, permuted_seeds=1, curve_train=5_000, curve_eval_every=5,
                 grid_lams=(1.0, 100.0, 1e4, 1e6), grid_train=1_000, kinds_lams=(1.0, 1e2, 1e4, 1e6), kinds_train=500,
                 kinds_epochs=1, fisher_samples=500),
)


def get_config(fast: bool | None = None) -> Config:
    """The sizes to use: ``fast=None`` follows ``CL_FAST``; ``True``/``False`` force one setting."""
    if fast is None:
        fast = fast_mode()
    if not isinstance(fast, bool):
        raise ValueError(f"fast must be True, False or None, got {fast!r}")
    return FAST if fast else FULL
