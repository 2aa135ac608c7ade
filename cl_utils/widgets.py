"""Live ipywidgets controls for Jupyter and Colab that fall back to a kernel-free figure in the static book.

A chapter shows a precomputed slider figure (:func:`cl_utils.plotting.slider_figure`) that works everywhere, and
offers :func:`live` controls that recompute with the same library functions when a kernel is there. In the book
build (``CL_BOOK_BUILD=1``) no widget is created at all, so the static page holds no dead widget and loads no
widget manager: ``live`` shows the ``static`` figure instead (or a one-line note).

The slider functions return plain descriptions (:class:`Control`); the ipywidgets are built only when needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from .config import book_build

__all__ = ["Control", "live", "log_slider", "float_slider", "int_slider"]


@dataclass(frozen=True)
class Control:
    """A slider to build later: ``kind`` is ``"log"`` (log₁₀ scale), ``"float"`` or ``"int"``."""

    kind: str
    description: str
    low: float
    high: float
    value: float
    step: float

    def widget(self) -> Any:
        """The ipywidgets slider (imports ipywidgets)."""
        import ipywidgets as w

        common = dict(description=self.description, continuous_update=False)
        if self.kind == "log":
            return w.FloatLogSlider(value=self.value, base=10, min=math.log10(self.low), max=math.log10(self.high),
                                    step=self.step, readout_format=".3g", **common)
        if self.kind == "float":
            return w.FloatSlider(value=self.value, min=self.low, max=self.high, step=self.step, **common)
        return w.IntSlider(value=int(self.value), min=int(self.low), max=int(self.high), step=int(self.step), **common)


def _check(low: float, high: float, value: float) -> None:
    if not low < high:
        raise ValueError(f"need low < high, got low={low}, high={high}")
    if not low <= value <= high:
        raise ValueError(f"value {value} lies outside [{low}, {high}]")


def log_slider(description: str, low: float, high: float, value: float, *, steps_per_decade: int = 4) -> Control:
    """A slider on a log₁₀ scale from ``low`` to ``high`` (both > 0), e.g. for λ or σ²."""
    if low <= 0:
        raise ValueError(f"a log slider needs low > 0, got {low}")
    _check(low, high, value)
    if steps_per_decade < 1:
        raise ValueError(f"steps_per_decade must be >= 1, got {steps_per_decade}")
    return Control("log", description, low, high, value, 1 / steps_per_decade)


def float_slider(description: str, low: float, high: float, value: float, step: float) -> Control:
    """A linear slider from ``low`` to ``high`` in steps of ``step``."""
    _check(low, high, value)
    if step <= 0:
        raise ValueError(f"step must be > 0, got {step}")
    return Control("float", description, low, high, value, step)


def int_slider(description: str, low: int, high: int, value: int) -> Control:
    """An integer slider from ``low`` to ``high``."""
    _check(low, high, value)
    return Control("int", description, low, high, value, 1)


def live(fn: Callable[..., Any], *, static: Any = None, run_button: bool = True, **controls: Control) -> Any:
    """Controls that call ``fn(**values)`` and show what it returns (a plotly figure, a table...).

    ``controls`` maps ``fn``'s keyword arguments to :class:`Control` descriptions (:func:`log_slider`...). With
    ``run_button`` (the default, for anything that trains a model) ``fn`` runs when the button is pressed, not on
    every slider move. In the book build, returns ``static`` (displayed as the cell's value) and builds no widget.
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {fn!r}")
    bad = [k for k, c in controls.items() if not isinstance(c, Control)]
    if bad:
        raise ValueError(f"controls must be made with log_slider/float_slider/int_slider; not: {bad}")
    if book_build():
        if static is not None:
            return static
        from IPython.display import Markdown

        return Markdown("*Live controls appear here when the notebook runs in Jupyter or Colab.*")
    import ipywidgets as w

    options = {"manual": True, "manual_name": "Run"} if run_button else {}
    return w.interactive(fn, options, **{k: c.widget() for k, c in controls.items()})
