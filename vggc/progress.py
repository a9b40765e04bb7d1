"""Progress reporting without printing from the library.

Library functions take ``progress: Progress`` — a callable ``(iterable, total=, desc=)`` that
returns an iterable. The default passes items through; the CLI passes :func:`tqdm_progress`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

Progress = Callable[..., Iterable[Any]]


def no_progress(iterable: Iterable[Any], total: int | None = None, desc: str = "", **_: Any) -> Iterable[Any]:
    """Return ``iterable`` unchanged."""
    return iterable


def tqdm_progress(iterable: Iterable[Any], total: int | None = None, desc: str = "", **kw: Any) -> Iterable[Any]:
    """Wrap ``iterable`` in a tqdm bar on stderr (hidden when stderr is not a terminal and CI is set)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, **kw)
