"""Non-LLM reference rankers, scored on exactly the candidates the LLM sees.

All statistics come from the leave-one-out ``train`` sequences (no valid or test item of any user):

==================  ===============================================================================
``ref-random``      a seeded random score per (user, item)
``ref-popularity``  training interactions of the item
``ref-bm25``        BM25 of the candidate's title against the words of the user's history titles
                    (IDF over all titled items; k1 = 1.2, b = 0.75)
``ref-markov``      first-order Markov: how often the user's last item was followed by the candidate
                    in training sequences; ties (often all zeros) broken by popularity
==================  ===============================================================================
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from functools import cached_property
from itertools import pairwise

import numpy as np

from lrgd.errors import ConfigError

REFERENCES = ("ref-random", "ref-popularity", "ref-bm25", "ref-markov")
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words of a title."""
    return _WORD.findall(text.lower())


class References:
    """Fitted once per dataset split; :meth:`score` gives one score per candidate (higher = better)."""

    def __init__(self, ds, split, seed: int = 0, k1: float = 1.2, b: float = 0.75) -> None:
        self.ds, self.split, self.seed, self.k1, self.b = ds, split, seed, k1, b

    @cached_property
    def popularity(self) -> Counter:
        return Counter(i for s in self.split.train.values() for i in s)

    @cached_property
    def transitions(self) -> dict[str, Counter]:
        out: dict[str, Counter] = {}
        for s in self.split.train.values():
            for a, b in pairwise(s):
                out.setdefault(a, Counter())[b] += 1
        return out

    @cached_property
    def _idf(self) -> tuple[dict[str, float], float]:
        df: Counter = Counter()
        lengths = []
        for it in self.ds.items.values():
            if it.has_title:
                w = words(it.title)
                df.update(set(w))
                lengths.append(len(w))
        n = len(lengths)
        idf = {w: math.log(1 + (n - f + 0.5) / (f + 0.5)) for w, f in df.items()}
        return idf, float(np.mean(lengths)) if lengths else 1.0

    def bm25(self, history: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        """BM25 with the candidate title as the document and the history's words as the query."""
        idf, avg = self._idf
        items = self.ds.items
        query = Counter(
            w for i in history if i in items and items[i].has_title for w in words(items[i].title)
        )
        out = np.zeros(len(candidates))
        for j, c in enumerate(candidates):
            doc = Counter(words(items[c].title))
            n = sum(doc.values())
            s = 0.0
            for w, qf in query.items():
                tf = doc.get(w, 0)
                if tf:
                    s += (
                        qf
                        * idf.get(w, 0.0)
                        * tf
                        * (self.k1 + 1)
                        / (tf + self.k1 * (1 - self.b + self.b * n / avg))
                    )
            out[j] = s
        return out

    def score(self, method: str, user: str, history: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        """Scores of ``candidates`` for ``user`` with ``history`` (ids, oldest first)."""
        if method == "ref-random":
            return np.array([zlib.crc32(f"{self.seed}|rand|{user}|{c}".encode()) / 2**32 for c in candidates])
        if method == "ref-popularity":
            return np.array([float(self.popularity[c]) for c in candidates])
        if method == "ref-bm25":
            return self.bm25(history, candidates)
        if method == "ref-markov":
            row = self.transitions.get(history[-1], Counter()) if history else Counter()
            top = max(self.popularity.values(), default=0) + 1
            return np.array([row[c] + self.popularity[c] / top for c in candidates], dtype=float)
        raise ConfigError(f"unknown reference method {method!r}; choose one of {', '.join(REFERENCES)}")
