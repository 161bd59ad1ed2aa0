"""The leakage guard: no demonstration may show the evaluated user's held-out items.

A user's *held-out* items are their validation and test targets. A demonstration (another user's history
→ next item) **leaks** when it shows one of them, compared two ways, because either lets the answer
into the prompt:

* by **id**: the demonstration's history or next item is a held-out item;
* by **title**: it shows an item whose (cleaned) title equals a held-out item's title. Catalogues hold
  title twins (MovieLens-100k lists "Chasing Amy (1997)" under two ids, Amazon Games 370 titles under two
  or more), and the model reads titles, not ids.

Every place that builds demonstrations goes through :func:`leaks` (the selectors of
:mod:`lrgd.rec.select`, :func:`lrgd.rec.prompts.random_demonstrations`, chapter 3's pools).
:func:`count_leaks` counts leaks in prompts *as built* — in the prompt text or the demonstrations that
went in — independently of the filter that chose them, so it can find a guard that let something
through.

>>> held = HeldOut(frozenset({"7"}), frozenset({"Halo 4"}))
>>> leaks(held, ids=["3", "5"], titles=["Halo 3", "Halo 4"])
True
>>> count_leaks("Example 1. Bought: Halo 3; Halo 4.\\nNext: Fable\\n\\nNow this user. Bought: Doom.", held)
1
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["HeldOut", "count_leaks", "held_out", "leaks", "shown_in_prompt"]


@dataclass(frozen=True)
class HeldOut:
    """The ids and titles a prompt for some user (or users) must not show."""

    ids: frozenset[str] = frozenset()
    titles: frozenset[str] = frozenset()

    def __or__(self, other: HeldOut) -> HeldOut:
        return HeldOut(self.ids | other.ids, self.titles | other.titles)

    def __and__(self, shown: Iterable[str]) -> set[str]:
        """The elements of ``shown`` (ids or titles) that are held out (so ``held & set(ids)`` works)."""
        return {s for s in shown if s in self.ids or s in self.titles}

    __rand__ = __and__

    def __bool__(self) -> bool:
        return bool(self.ids or self.titles)


def held_out(ds, split, users: str | Iterable[str]) -> HeldOut:
    """Validation and test targets of ``users`` (one id or several), by id and by title.

    Both targets are held out whichever split is evaluated: a demonstration must not reveal the user's
    future. Untitled targets enter by id only.
    """
    users = [users] if isinstance(users, str) else list(users)
    ids = set()
    for u in users:
        for part in (split.valid, split.test):
            if u in part:
                ids.add(part[u][1])
    titles = {ds.items[i].title for i in ids if i in ds.items and ds.items[i].has_title}
    return HeldOut(frozenset(ids), frozenset(titles))


def leaks(held: HeldOut, ids: Iterable[str] = (), titles: Iterable[str] = ()) -> bool:
    """Whether a demonstration showing ``ids`` and ``titles`` shows a held-out item (the guard)."""
    return any(i in held.ids for i in ids) or any(t in held.titles for t in titles)


_DEMO = re.compile(r"^Example \d+\. Bought: (.*)\.\nNext: (.*)$", re.MULTILINE)


def shown_in_prompt(text: str) -> list[tuple[str, str]]:
    """(history text, next title) of every demonstration block in a prompt's text.

    Reads the format of :func:`lrgd.rec.prompts.prompt_parts`; titles are cleaned (no newlines), so each
    block is two lines.
    """
    return [(m.group(1), m.group(2)) for m in _DEMO.finditer(text)]


def _shows(history_text: str, next_title: str, title: str) -> bool:
    """Whether ``title`` is one of the ``"; "``-joined history titles or the next title (whole titles only,
    so "Halo" is not found in "Halo 4")."""
    return next_title == title or f"; {title}; " in f"; {history_text}; "


def count_leaks(shown: str | object | Sequence, held: HeldOut) -> int:
    """Demonstrations that show a held-out **title**, counted in what the model was given.

    ``shown`` is a prompt's text, a :class:`lrgd.rec.prompts.Prompt` (its ``.text``), or a sequence of
    :class:`lrgd.rec.prompts.Demonstration`. Ids are not visible in a prompt; check them with :func:`leaks`.
    """
    if hasattr(shown, "text") and hasattr(shown, "spans"):
        shown = shown.text
    if isinstance(shown, str):
        blocks = shown_in_prompt(shown)
        return sum(any(_shows(h, n, t) for t in held.titles) for h, n in blocks)
    return sum(leaks(held, titles=(*d.history, d.next_item)) for d in shown)
