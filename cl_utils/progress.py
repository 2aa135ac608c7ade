"""Progress bars that show in Jupyter, Colab and terminals, and stay out of the static book."""

from __future__ import annotations

from typing import Any

from .config import book_build

__all__ = ["progress_bar"]


def progress_bar(total: int, desc: str = "", enabled: bool = True, **kwargs: Any) -> Any:
    """A ``tqdm.auto`` bar over ``total`` steps (a widget in notebooks, text in a terminal).

    Disabled while the book is built (``CL_BOOK_BUILD=1``): a static page has no kernel, so a widget would be
    dead and a text bar would be stray output. A disabled bar still accepts ``update``/``set_postfix``/``close``.
    """
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled or book_build(), leave=False, **kwargs)
