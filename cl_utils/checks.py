"""Argument checks shared by the modules: every public function turns bad input into a ``ValueError`` that names
the argument (see DESIGN: clear errors), and these are the checks that many of them need alike."""

from __future__ import annotations

from typing import Any

__all__ = ["nonnegative_int", "positive_int"]


def positive_int(name: str, value: Any) -> None:
    """``value`` must be an ``int`` (not a ``bool``) ≥ 1, else ``ValueError``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def nonnegative_int(name: str, value: Any) -> None:
    """``value`` must be an ``int`` (not a ``bool``) ≥ 0, such as a seed, else ``ValueError``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
