"""Plotly set-up for book/Jupyter/Colab, the kernel-free slider figure, and live controls."""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio
import pytest

from cl_utils import plotting, widgets


@pytest.fixture
def book(monkeypatch):
    monkeypatch.setenv("CL_BOOK_BUILD", "1")


def _fig():
    return go.Figure(go.Scatter(x=[0, 1], y=[1, 0]))


def test_book_mode_emits_html_only_without_plotlyjs(book):
    assert plotting.setup() == "book"
    bundle = pio.renderers[plotting.BOOK_RENDERER].to_mimebundle(_fig().to_dict())
    assert set(bundle) == {"text/html"}  # the book skips plotly's JSON mime type, so none is emitted
    html = bundle["text/html"]
    assert "Plotly.newPlot" in html and "<script src" not in html and "cdn.plot.ly" not in html
    assert len(html) < 20_000  # plotly.js (4 MB) is loaded once per page by the book, never per figure


def test_notebook_mode_carries_the_plotly_mime_type(monkeypatch):
    monkeypatch.delenv("CL_BOOK_BUILD", raising=False)
    assert plotting.setup() == "notebook"
    bundle = pio.renderers[plotting.BOOK_RENDERER].to_mimebundle(_fig().to_dict())
    assert "application/vnd.plotly.v1+json" in bundle and "text/html" in bundle
    assert plotting.setup("colab") == "colab" and pio.renderers.default == "colab"
    with pytest.raises(ValueError, match="mode"):
        plotting.setup("pdf")
    plotting.setup()


def test_slider_figure_switches_groups_of_traces():
    values = [0.1, 1.0, 10.0]
    fig = plotting.slider_figure(
        values, lambda i, v: [go.Scatter(y=[v, v]), go.Scatter(y=[0, v])], name="λ", title="demo", active=0)
    assert len(fig.data) == 6
    assert [t.visible for t in fig.data] == [True, True, False, False, False, False]
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == ["0.1", "1", "10"]
    assert steps[2].args[0]["visible"] == [False, False, False, False, True, True]
    assert steps[1].args[1]["title.text"] == "demo — λ = 1"


def test_slider_figure_errors():
    with pytest.raises(ValueError, match="at least one"):
        plotting.slider_figure([], lambda i, v: [])
    with pytest.raises(ValueError, match="no traces"):
        plotting.slider_figure([1.0], lambda i, v: [])
    with pytest.raises(ValueError, match="active"):
        plotting.slider_figure([1.0], lambda i, v: [go.Scatter()], active=3)


def test_live_in_the_book_returns_the_static_figure_and_builds_no_widget(book):
    static = _fig()
    assert widgets.live(lambda lam: None, static=static, lam=widgets.log_slider("λ", 0.1, 10, 1)) is static
    assert "Live controls" in widgets.live(lambda: None).data


def test_live_in_jupyter_builds_controls(monkeypatch):
    monkeypatch.delenv("CL_BOOK_BUILD", raising=False)
    ui = widgets.live(lambda lam, n: lam * n, lam=widgets.log_slider("λ", 0.01, 100, 1),
                      n=widgets.int_slider("n", 1, 5, 2), run_button=False)
    import ipywidgets

    assert isinstance(ui, ipywidgets.interactive)
    assert ui.result == 2.0  # without a run button the function runs once at once


def test_control_validation():
    with pytest.raises(ValueError, match="low > 0"):
        widgets.log_slider("λ", 0, 1, 0.5)
    with pytest.raises(ValueError, match="outside"):
        widgets.float_slider("x", 0, 1, 2, 0.1)
    with pytest.raises(ValueError, match="step"):
        widgets.float_slider("x", 0, 1, 0.5, 0)
    with pytest.raises(ValueError, match="log_slider"):
        widgets.live(lambda x: x, x=3)


def test_ellipse_is_the_r_sigma_contour():
    import pytest
    import torch

    from cl_utils.plotting import ellipse

    mean, cov = torch.tensor([1.0, -2.0]), torch.tensor([[2.0, 0.6], [0.6, 0.5]])
    x, y = ellipse(mean, cov, 1.5, points=50)
    d = torch.stack([torch.as_tensor(x), torch.as_tensor(y)], 1) - mean.double()
    maha = ((d @ torch.linalg.inv(cov.double())) * d).sum(1)
    assert torch.allclose(maha, torch.full_like(maha, 1.5**2), atol=1e-10)
    assert (x[0], y[0]) == pytest.approx((x[-1], y[-1]))  # a closed curve
    with pytest.raises(ValueError, match="2×2"):
        ellipse(torch.zeros(3), torch.eye(3))
    with pytest.raises(ValueError, match="positive definite"):
        ellipse(torch.zeros(2), -torch.eye(2))
    with pytest.raises(ValueError, match="r must"):
        ellipse(torch.zeros(2), torch.eye(2), 0.0)
