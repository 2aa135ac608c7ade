"""Experiment sizes for the full book and for fast mode, read in one place.

Fast mode (``CL_FAST=1`` in the environment, or ``reproduce --fast`` on the command line) runs the same code
paths as the full book with smaller sizes, so that every notebook and the test suite finish in minutes on two CPU
cores. Chapters read their sizes with :func:`get_config`; nothing else in the package looks at ``CL_FAST``.

Each chapter owns one section (a frozen dataclass) and sets its full and fast values side by side below.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["Config", "MNISTSizes", "get_config", "fast_mode", "book_build", "FULL", "FAST"]

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
class Config:
    """All experiment sizes. ``fast`` says which of the two settings this is."""

    fast: bool = False
    seeds: int = 5
    mnist: MNISTSizes = field(default_factory=MNISTSizes)


FULL = Config(
    fast=False,
    seeds=5,
    mnist=MNISTSizes(epochs=3),
)

FAST = Config(
    fast=True,
    seeds=1,
    mnist=MNISTSizes(epochs=2),
)


def get_config(fast: bool | None = None) -> Config:
    """The sizes to use: ``fast=None`` follows ``CL_FAST``; ``True``/``False`` force one setting."""
    if fast is None:
        fast = fast_mode()
    if not isinstance(fast, bool):
        raise ValueError(f"fast must be True, False or None, got {fast!r}")
    return FAST if fast else FULL
