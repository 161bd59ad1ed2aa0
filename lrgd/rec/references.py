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

Each ranker is one class registered by name (:func:`register_reference`), with its parameters as
dataclass fields (they enter the cache key); :class:`References` holds the training statistics they share.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import field
from functools import cached_property
from itertools import pairwise

import numpy as np

from lrgd.errors import ConfigError
from lrgd.rec.registry import Registry

#: reference rankers by name
REFERENCES = Registry("reference ranker")
register_reference = REFERENCES.register
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words of a title."""
    return _WORD.findall(text.lower())


class References:
    """Training statistics of one dataset split, fitted lazily and shared by every reference ranker."""

    def __init__(self, ds, split, seed: int = 0) -> None:
        self.ds, self.split, self.seed = ds, split, seed

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
    def idf(self) -> tuple[dict[str, float], float]:
        """(word → IDF over all titled items, mean title length in words)."""
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


# ----------------------------------------------------------------------------- the rankers
# Each: ``score(stats, user, history, candidates) -> [N]`` (higher = better); ``history`` is item ids,
# oldest first. Parameters are dataclass fields (they enter the cache key). A ranker that needs the
# runner (a selector's demonstrations, a trained model) defines ``score_with(runner, cfg, user, history,
# candidates)`` instead; the runner calls that when it exists.


@register_reference("ref-random")
class RandomReference:
    """A seeded random score per (user, item)."""

    def score(self, stats: References, user: str, history: Sequence[str], candidates: Sequence[str]):
        return np.array([zlib.crc32(f"{stats.seed}|rand|{user}|{c}".encode()) / 2**32 for c in candidates])


@register_reference("ref-popularity")
class PopularityReference:
    """Training interactions of the item."""

    def score(self, stats: References, user: str, history: Sequence[str], candidates: Sequence[str]):
        return np.array([float(stats.popularity[c]) for c in candidates])


@register_reference("ref-bm25")
class BM25Reference:
    """BM25 with the candidate title as the document and the history's words as the query."""

    bm25_k1: float = field(default=1.2, metadata={"help": "BM25 term-frequency saturation k1"})
    bm25_b: float = field(default=0.75, metadata={"help": "BM25 length normalisation b"})

    def validate(self) -> None:
        if not self.bm25_k1 >= 0:
            raise ConfigError(f"--bm25-k1 must be ≥ 0 (term-frequency saturation), got {self.bm25_k1}")
        if not 0 <= self.bm25_b <= 1:
            raise ConfigError(f"--bm25-b must lie in [0, 1] (length normalisation), got {self.bm25_b}")

    def score(self, stats: References, user: str, history: Sequence[str], candidates: Sequence[str]):
        idf, avg = stats.idf
        items = stats.ds.items
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
                    k1, b = self.bm25_k1, self.bm25_b
                    s += qf * idf.get(w, 0.0) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * n / avg))
            out[j] = s
        return out


@register_reference("ref-markov")
class MarkovReference:
    """First-order transitions from the user's last item; ties broken by popularity."""

    def score(self, stats: References, user: str, history: Sequence[str], candidates: Sequence[str]):
        row = stats.transitions.get(history[-1], Counter()) if history else Counter()
        top = max(stats.popularity.values(), default=0) + 1
        return np.array([row[c] + stats.popularity[c] / top for c in candidates], dtype=float)
