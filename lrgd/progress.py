"""Progress bars for long loops: plain-text tqdm on stderr (no widgets, so notebooks stay text-comparable)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.std import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Wrap ``items`` in a text progress bar labelled ``desc``."""
    return iter(tqdm(items, desc=desc, total=total, file=sys.stderr, ascii=True, mininterval=2.0, ncols=80))
