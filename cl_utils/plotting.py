"""Plotly set-up for the book, Jupyter and Colab, and slider figures that need no kernel.

Call :func:`setup` once at the top of a chapter (``show`` does it for you). Then a figure left as the last
expression of a cell renders

- in the **book build**, as HTML whose script draws with the ``Plotly`` object that every page of the book loads
  once from its own ``_static/plotly.min.js`` (no network, no plotly.js embedded per figure);
- in **Jupyter** (Lab, Notebook 7, VS Code), with plotly's own interactive renderer (the same bundle also
  carries plotly's JSON mime type, which those front ends prefer);
- on **Colab**, with plotly's ``colab`` renderer.

:func:`slider_figure` turns results precomputed on a grid (of λ, σ², ...) into one figure with a slider that
switches between them in the browser, so the rendered book stays interactive without a kernel.

Plot labels use Unicode (λ, σ², θ*), not LaTeX: the page's MathJax is left to the text.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any, Callable, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.io.base_renderers import MimetypeRenderer

from .config import book_build

__all__ = ["setup", "show", "slider_figure", "ellipse", "BOOK_RENDERER", "TEMPLATE", "figure_html"]

BOOK_RENDERER = "cl_book"
TEMPLATE = "plotly_white"
_PLOTLY_MIME = "application/vnd.plotly.v1+json"


def figure_html(fig: go.Figure, *, plotlyjs: bool | str | None = None) -> str:
    """The figure as an HTML ``div`` and the script that draws it.

    In the book build (``plotlyjs=None`` there), the script uses the ``window.Plotly`` that every page loads once
    from the book's own static files, so nothing is fetched and nothing embedded per figure. Elsewhere this HTML is
    only the fallback for front ends that do not know plotly's JSON mime type, and it loads plotly.js from its CDN.
    """
    if plotlyjs is None:
        plotlyjs = False if book_build() else "cdn"
    return pio.to_html(fig, include_plotlyjs=plotlyjs, full_html=False, config={"responsive": True})


class _BookRenderer(MimetypeRenderer):
    """Emit HTML (drawn with the page's own plotly.js) and, outside the book build, plotly's JSON mime type."""

    def to_mimebundle(self, fig_dict: dict) -> dict:
        fig = go.Figure(fig_dict)
        bundle = {"text/html": figure_html(fig)}
        if not book_build():  # the static book skips this mime type; live front ends prefer it
            bundle[_PLOTLY_MIME] = json.loads(pio.to_json(fig, validate=False))
        return bundle


_MODE: str | None = None


def setup(mode: str | None = None) -> str:
    """Configure plotly for where the code runs and return the mode: ``"book"``, ``"colab"`` or ``"notebook"``.

    ``mode=None`` detects it: the book build (``CL_BOOK_BUILD=1``), Colab (``google.colab`` imported), else a
    Jupyter-like front end. Also sets the book's template for every figure.
    """
    global _MODE
    if mode is None:
        mode = "book" if book_build() else "colab" if "google.colab" in sys.modules else "notebook"
    if mode not in ("book", "colab", "notebook"):
        raise ValueError(f"mode must be 'book', 'colab', 'notebook' or None, got {mode!r}")
    pio.renderers[BOOK_RENDERER] = _BookRenderer()
    pio.renderers.default = "colab" if mode == "colab" else BOOK_RENDERER
    pio.templates.default = TEMPLATE
    _MODE = mode
    return mode


def show(fig: go.Figure) -> None:
    """Display ``fig`` with the renderer :func:`setup` chose (calling ``setup`` first if needed)."""
    if _MODE is None:
        setup()
    fig.show()


def slider_figure(
    values: Sequence[float],
    traces_for: Callable[[int, float], Sequence[go.BaseTraceType]],
    *,
    name: str = "λ",
    fmt: str = "{:.3g}",
    title: str | None = None,
    active: int | None = None,
    layout: dict[str, Any] | None = None,
) -> go.Figure:
    """One figure with a slider over precomputed results: step ``i`` shows the traces of ``values[i]``.

    ``traces_for(i, values[i])`` returns the traces (lines, heatmaps...) for grid point ``i``; all of them are put in
    the figure once, and each slider step makes one group visible (no kernel needed, so the slider works in the
    static book). Keep axis ranges fixed in ``layout`` so that moving the slider shows the change, not a rescale.
    """
    values = list(values)
    if not values:
        raise ValueError("slider_figure needs at least one grid value")
    active = len(values) // 2 if active is None else active
    if not 0 <= active < len(values):
        raise ValueError(f"active must index values (0..{len(values) - 1}), got {active}")
    fig = go.Figure()
    groups: list[range] = []
    for i, v in enumerate(values):
        start = len(fig.data)
        traces = list(traces_for(i, v))
        if not traces:
            raise ValueError(f"traces_for returned no traces for grid point {i} ({name} = {v})")
        for tr in traces:
            tr.visible = i == active
            fig.add_trace(tr)
        groups.append(range(start, len(fig.data)))
    n = len(fig.data)

    def heading(v: float) -> str:
        label = f"{name} = {fmt.format(v)}"
        return f"{title} — {label}" if title else label

    steps = [
        dict(
            method="update",
            label=fmt.format(v),
            args=[{"visible": [j in groups[i] for j in range(n)]}, {"title.text": heading(v)}],
        )
        for i, v in enumerate(values)
    ]
    fig.update_layout(
        title=heading(values[active]),
        sliders=[dict(active=active, steps=steps, currentvalue=dict(prefix=f"{name} = "), pad=dict(t=40))],
    )
    if layout:
        fig.update_layout(**layout)
    return fig


def ellipse(mean: Any, cov: Any, r: float = 2.0, *, points: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """The x and y coordinates of the r-σ ellipse of a 2-D Gaussian N(mean, cov): the points θ with
    (θ − mean)ᵀ cov⁻¹ (θ − mean) = r², as mean + r L (cos t, sin t) with cov = L Lᵀ (a closed curve).

    In two dimensions the r-σ ellipse holds 1 − exp(−r²/2) of the mass (39 % for r = 1, 86 % for r = 2).
    """
    import torch  # here, not at the top: the rest of the module needs plotly only

    mean = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    if mean.shape != (2,) or cov.shape != (2, 2):
        raise ValueError(f"ellipse needs a 2-D mean and a 2×2 covariance, got shapes {tuple(mean.shape)} and "
                         f"{tuple(cov.shape)}")
    if not (r > 0 and math.isfinite(r)):
        raise ValueError(f"r must be a positive number, got {r!r}")
    if not isinstance(points, int) or points < 3:
        raise ValueError(f"points must be an integer >= 3, got {points!r}")
    try:
        chol = torch.linalg.cholesky(cov)
    except RuntimeError:
        raise ValueError("cov must be symmetric positive definite") from None
    t = torch.linspace(0, 2 * math.pi, points, dtype=torch.float64)
    pts = mean[:, None] + r * chol @ torch.stack([t.cos(), t.sin()])
    return pts[0].numpy(), pts[1].numpy()
