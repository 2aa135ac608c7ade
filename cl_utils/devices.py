"""Where tensors go: the one place that picks the device (CUDA, then Apple's MPS, then the CPU)."""

from __future__ import annotations

import os

import torch

__all__ = ["as_device", "default_device"]


def default_device() -> torch.device:
    """``$CL_DEVICE`` when set (e.g. ``cpu`` to compare numbers across machines), else CUDA, then MPS, then the CPU."""
    forced = os.environ.get("CL_DEVICE")
    if forced:
        try:
            return torch.device(forced)
        except RuntimeError:
            raise ValueError(f"CL_DEVICE={forced!r} is not a device torch knows (try cpu, cuda or mps)") from None
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def as_device(device: torch.device | str | None) -> torch.device:
    """``device`` as a ``torch.device`` (``None``: :func:`default_device`), with a clear error for a bad name."""
    if device is None:
        return default_device()
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{device!r} is not a device torch knows (try cpu, cuda or mps)") from None
