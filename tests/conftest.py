"""Shared fixtures. Tests run on the CPU with the real MNIST files (``../shared/data/mnist`` or ``$CL_DATA_DIR``)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("CL_DEVICE", "cpu")  # identical numbers on every machine; GPU runs live in benchmarks/


@pytest.fixture(scope="session")
def mnist():
    from cl_utils.data import load_mnist

    return load_mnist(download=False)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
