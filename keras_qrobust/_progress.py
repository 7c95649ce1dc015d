"""The one progress bar: tqdm on stderr, or nothing when the caller is quiet."""

from __future__ import annotations

from typing import Iterable, Optional

__all__ = ["progress_bar"]


def progress_bar(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: str = "",
                 unit: str = "it", leave: bool = False, verbose: int = 1):
    """A tqdm bar over ``iterable`` (or one ticked by ``update`` when it is None); with
    ``verbose=0``, ``iterable`` itself (``None`` for a manual bar: callers skip the updates)."""
    if not verbose:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave)
