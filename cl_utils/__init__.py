"""cl_utils: the small library behind the book *Continual learning and Bayesian deep learning*.

Modules, in the order of their imports (each uses only those above it):

- ``config``       experiment sizes for the full book and fast mode (``CL_FAST=1``)
- ``data``         MNIST files → tensors; :class:`Task`; ``permuted_mnist``, ``split_mnist``
- ``models``       the MLP (single- or multi-head)
- ``training``     ``set_seed``, ``default_device``, ``train``, ``evaluate``, ``run_sequence``
- ``experiments``  the named experiments behind ``python -m cl_utils reproduce NAME``

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
