"""Book hygiene: every chapter is in the table of contents, committed without outputs, opens with its Colab badge
and a Colab-only install cell hidden in the book, and no function is defined in two notebooks."""

from __future__ import annotations

import ast
import json
import re
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
REPO = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")
REPO_PATH = REPO.split("github.com/")[1]


def cells(nb: Path) -> list[dict]:
    return json.loads(nb.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_every_notebook_is_in_the_toc():
    toc = (ROOT / "_toc.yml").read_text()
    for nb in NOTEBOOKS:
        assert f"book/{nb.stem}" in toc, f"{nb.name} is not in _toc.yml"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(nb):
    for c in cells(nb):
        if c["cell_type"] == "code":
            assert not c.get("outputs") and c.get("execution_count") is None, f"{nb.name} has outputs"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_badge_and_install_cell(nb):
    cs = cells(nb)
    badge = f"https://colab.research.google.com/github/{REPO_PATH}/blob/main/book/{nb.name}"
    assert cs[0]["cell_type"] == "markdown" and badge in source(cs[0]), f"first cell of {nb.name} lacks {badge}"
    install = cs[1]
    assert install["cell_type"] == "code" and "remove-cell" in install.get("metadata", {}).get("tags", [])
    assert '"google.colab" in sys.modules' in source(install) and f"git+{REPO}" in source(install)


def _definitions() -> list[tuple[str, str, str]]:
    """(notebook, name, body) for every function and class defined in a notebook; the body without its name or
    docstring, so that a renamed copy (``ch2_f`` / ``ch3_f``) still matches."""
    out = []
    for nb in NOTEBOOKS:
        for c in cells(nb):
            if c["cell_type"] != "code":
                continue
            code = re.sub(r"^\s*[%!].*$", "", source(c), flags=re.M)  # drop magics
            for node in ast.walk(ast.parse(code)):
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    body = node.body
                    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                        body = body[1:]
                    args = ast.dump(node.args) if isinstance(node, ast.FunctionDef) else ""
                    out.append((nb.name, node.name, args + "".join(ast.dump(b) for b in body)))
    return out


def test_no_function_defined_in_two_notebooks():
    by_name, by_body = defaultdict(set), defaultdict(set)
    for nb, name, body in _definitions():
        by_name[name].add(nb)
        by_body[body].add(f"{nb}:{name}")
    twice = {name: sorted(nbs) for name, nbs in by_name.items() if len(nbs) > 1}
    assert not twice, f"defined in several notebooks (move to cl_utils): {twice}"
    copies = [sorted(where) for where in by_body.values() if len({w.split(':')[0] for w in where}) > 1]
    assert not copies, f"the same function in several notebooks under different names (move to cl_utils): {copies}"
