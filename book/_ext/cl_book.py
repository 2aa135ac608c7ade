"""Sphinx extension for the book: every page reads the same offline, with plotly and MathJax side by side.

- plotly.js: copied from the installed ``plotly`` package into ``_static/`` and loaded once per page, after a
  ``window.PlotlyConfig = {MathJaxConfig: 'local'}`` line so that plotly leaves the page's MathJax alone. The
  chapters' figures are emitted as HTML that draws with this ``window.Plotly`` (see ``cl_utils.plotting``).
- Scripts added twice are dropped: sphinx-thebe registers its inline ``const THEBE_JS_URL = ...`` script each
  time the environment is read, and a second copy on a page throws
  ``SyntaxError: Identifier 'THEBE_JS_URL' has already been declared`` in the reader's console.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

PLOTLY_CONFIG = "window.PlotlyConfig = {MathJaxConfig: 'local'};"


def _plotly_js() -> Path:
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(f"plotly.min.js not found at {path}; reinstall plotly")
    return path


def _add_scripts(app: Any) -> None:
    if app.builder.format != "html":
        return
    app.add_js_file(None, body=PLOTLY_CONFIG, priority=300)
    app.add_js_file("plotly.min.js", priority=301)


def _copy_plotly(app: Any, exc: Exception | None) -> None:
    if exc is None and app.builder.format == "html":
        static = Path(app.outdir) / "_static"
        static.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_plotly_js(), static / "plotly.min.js")


def _dedupe_scripts(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple[str, str]] = set()
    unique = []
    for js in scripts:
        # the same script may come once with filename None and once with '' (registry vs builder copy)
        key = (getattr(js, "filename", str(js)) or "", str(getattr(js, "attributes", {}).get("body", "")))
        if key in seen:
            continue
        seen.add(key)
        unique.append(js)
    scripts[:] = unique


def setup(app: Any) -> dict[str, Any]:
    # The notebooks' kernels inherit this process's environment: however the book is built (the README command or a
    # plain `jupyter-book build .`), cl_utils then emits offline HTML figures and no progress widgets.
    os.environ.setdefault("CL_BOOK_BUILD", "1")
    app.connect("builder-inited", _add_scripts)
    app.connect("build-finished", _copy_plotly)
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
