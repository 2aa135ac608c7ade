"""cl_utils: the small library behind the book *Continual learning and Bayesian deep learning*.

Modules, in the order of their imports (each uses only those above it):

- ``checks``          argument checks shared by the modules (``positive_int``, ``nonnegative_int``)
- ``config``          experiment sizes for the full book and fast mode (``CL_FAST=1``), read in one place
- ``progress``        progress bars that stay out of the static book
- ``devices``         ``default_device``: CUDA, then MPS, then the CPU (``$CL_DEVICE`` overrides); ``as_device``
- ``data``            MNIST files → tensors; :class:`~cl_utils.data.Task`; ``permuted_mnist``, ``split_mnist``
- ``models``          the MLP (single- or multi-head)
- ``autodiff``        chapter 1: forward/backward by hand, the computation graph
- ``initialization``  chapter 1: weight initialisations and the signal through deep networks
- ``optimizers``      chapter 1: SGD, momentum, Nesterov, Adam and Adadelta written out
- ``regularizers``    chapter 1: L2, L1 and dropout as penalties and as priors
- ``surfaces``        chapter 1: 2-D loss surfaces for optimizer paths
- ``training``        ``set_seed``, ``default_device``, ``train``, ``evaluate``, ``run_sequence``
- ``bayes``           chapter 2: Bayesian linear regression in closed form, the two-task decomposition
- ``laplace``         chapter 3: the Laplace approximation, grid posteriors, Bayesian logistic regression
- ``fisher``          chapter 4: ``fisher_diagonal`` (fast for Linear/Conv2d), ``fisher_matrix``
- ``ewc``             chapter 5: ``EWC`` and ``L2Anchor`` (``consolidate`` / ``penalty``), uses ``fisher``
- ``variational``     chapter 6: ``VariationalLinear``, priors, ``complexity_loss``, ``error_loss``, ``snr``
- ``sweeps``          K models trained at once over a λ or σ² grid, or over seeds and methods
- ``plotting``        plotly for the book, Jupyter and Colab; slider figures that need no kernel
- ``widgets``         live ipywidgets controls that fall back to the slider figures in the book
- ``experiments``     the named experiments behind ``python -m cl_utils reproduce NAME``

Submodules are imported on first use, so ``import cl_utils`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name.startswith("_"):
        raise AttributeError(name)
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{name}":
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        raise
