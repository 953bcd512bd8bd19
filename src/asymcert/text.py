"""Short lists in one-line messages: the first few items, then how many more."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


def first_few(items: Sequence[Any], k: int, show: Callable[[Any], str] = str) -> str:
    """The first ``k`` of ``items``, each as ``show`` writes it, joined by ", ", and "and N more" when there are
    more: ``first_few(["a", "b", "c"], 2, repr)`` is ``"'a', 'b' and 1 more"``."""
    shown = ", ".join(show(item) for item in items[:k])
    return shown + (f" and {len(items) - k} more" if len(items) > k else "")
