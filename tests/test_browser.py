"""The rendered book in a real browser, offline: figures drew, sliders respond, math typeset, no JS errors.

Builds the book in fast mode (``bash .ci/build-book --fast``; jupyter-cache makes a rebuild cheap), serves it on
localhost and opens every page of the table of contents in headless Chromium (Debian's ``/usr/bin/chromium``,
driven by Playwright; no browser is downloaded) with every non-local request aborted. Screenshots go to
``_build/screenshots/``.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
# CL_BOOK_HTML / CL_TOC: test a book built elsewhere (e.g. one chapter with its own toc); then set CL_SKIP_BOOK_BUILD=1
HTML = Path(os.environ.get("CL_BOOK_HTML", ROOT / "_build" / "fast" / "_build" / "html"))
TOC = Path(os.environ.get("CL_TOC", ROOT / "_toc.yml"))
SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = os.environ.get("CL_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
         "--no-first-run", "--disable-component-update", "--disable-sync"]


def _toc_pages() -> list[str]:
    import yaml

    toc = yaml.safe_load(TOC.read_text())
    files = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("sections"))
            for part in e.get("parts", []) if isinstance(e, dict) else []:
                walk(part.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return files


PAGES = _toc_pages()
NOTEBOOK_PAGES = [p for p in PAGES if (ROOT / f"{p}.ipynb").is_file()]


@pytest.fixture(scope="session")
def site():
    if os.environ.get("CL_SKIP_BOOK_BUILD") != "1":
        subprocess.run(["bash", str(ROOT / ".ci" / "build-book"), "--fast"], check=True, cwd=ROOT)
    assert (HTML / "index.html").is_file(), f"no built book at {HTML}"
    handler = functools.partial(QuietHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).is_file() and not shutil.which("chromium"):
        pytest.fail("Chromium not found: install Debian's packages (apt-get update && apt-get install -y chromium "
                    "chromium-driver; `bash .ci/test` does this) or set CL_CHROMIUM=/path/to/chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium"),
                              args=FLAGS)
        yield b
        b.close()


def open_page(browser, site: str, page_path: str):
    """Open one page offline; return the page and the list of console errors / blocked requests."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []

    def route(r):
        if r.request.url.startswith(site):
            r.continue_()
        else:
            problems.append(f"non-local request blocked: {r.request.url}")
            r.abort()

    page.route("**/*", route)
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.goto(f"{site}/{page_path}.html", wait_until="load")
    page.wait_for_function("() => !window.MathJax || (MathJax.startup && MathJax.startup.promise)", timeout=30_000)
    page.evaluate("() => window.MathJax && MathJax.startup.promise")
    page.wait_for_timeout(300)
    return page, problems


@pytest.mark.parametrize("page_path", PAGES)
def test_page_renders_offline(browser, site, page_path):
    page, problems = open_page(browser, site, page_path)
    try:
        # math: every math element typeset by MathJax, no raw TeX delimiters left in the text
        n_math = page.locator(".math").count()
        if n_math:
            assert page.locator("mjx-container").count() >= n_math, "MathJax did not typeset every formula"
        text = page.inner_text("article")
        assert "$$" not in text and "\\begin{" not in text, "raw TeX left on the page"
        # figures: every plotly figure drew its SVG
        plots = page.locator(".js-plotly-plot")
        for i in range(plots.count()):
            assert plots.nth(i).locator("svg.main-svg").count() > 0, f"plotly figure {i} did not draw"
        # no dead widgets, no stray progress-bar text
        assert page.locator(".jupyter-widgets, .widget-area").count() == 0
        assert "it/s]" not in text and "%|" not in text
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{page_path.replace('/', '_')}.png"), full_page=True)
        assert not problems, "\n".join(problems)
    finally:
        page.close()


@pytest.mark.parametrize("page_path", NOTEBOOK_PAGES)
def test_notebook_page_has_figures_sliders_and_colab(browser, site, page_path):
    page, problems = open_page(browser, site, page_path)
    try:
        assert page.locator(".js-plotly-plot").count() >= 1, "a chapter page without a single figure"
        nb = page_path.split("/")[-1]
        colab = page.locator(f"a[href^='https://colab.research.google.com/github/'][href$='{nb}.ipynb']")
        assert colab.count() >= 1, "no Open-in-Colab link to this notebook"
        sliders = page.evaluate(
            "() => [...document.querySelectorAll('.js-plotly-plot')].map((gd, i) => "
            "(gd.layout.sliders || []).length ? i : -1).filter(i => i >= 0)")
        for i in sliders:
            gd = page.locator(".js-plotly-plot").nth(i)
            gd.scroll_into_view_if_needed()
            before = page.evaluate(f"() => JSON.stringify(document.querySelectorAll('.js-plotly-plot')[{i}]"
                                   ".data.map(t => t.visible))")
            active = page.evaluate(f"() => document.querySelectorAll('.js-plotly-plot')[{i}]._fullLayout.sliders[0].active")
            n_steps = page.evaluate(f"() => document.querySelectorAll('.js-plotly-plot')[{i}]._fullLayout.sliders[0].steps.length")
            rail = gd.locator(".slider-rail-touch-rect").first
            box = rail.bounding_box()
            assert box is not None, f"slider of figure {i} not drawn"
            # a user's click on the rail, at the far end from the active step
            x = box["x"] + (box["width"] - 2 if active < n_steps / 2 else 2)
            page.mouse.click(x, box["y"] + box["height"] / 2)
            page.wait_for_timeout(300)
            after = page.evaluate(f"() => JSON.stringify(document.querySelectorAll('.js-plotly-plot')[{i}]"
                                  ".data.map(t => t.visible))")
            assert after != before, f"moving the slider of figure {i} changed nothing"
        assert not problems, "\n".join(problems)
    finally:
        page.close()
