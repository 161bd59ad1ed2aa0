"""Demonstration selectors: which other users' (history → next item) pairs go into the prompt.

A demonstration is built from another user's **training** sequence (leave-one-out ``train``, i.e. without
their valid and test items) and cut at some position: the titled items before the cut (the last ``h``)
are its history, the item at the cut is its next item. Every selector goes through
:meth:`DemoPool.allowed`, the **leakage guard**: a demonstration is rejected when any item it shows
(history or next item) is one of the evaluated user's held-out items (valid or test target), or when it
comes from the evaluated user. Rejections are counted.

==============  =====================================================================================
``zero-shot``   no demonstrations (k = 0)
``random``      seeded random pool users, each cut before their last training item
``recent``      anchored at the evaluated user's *most recent* items: other users who also had that
                item, cut right after it (their next item follows the same item). The Amazon files
                carry order but no timestamps, so "most recent" is read on the evaluated user's history.
                Falls back to random when fewer than k anchored demonstrations exist (counted).
``similarity``  the pool users whose history is most similar to the evaluated user's (cosine of
                all-MiniLM-L6-v2 embeddings, :mod:`lrgd.rec.embed`); the pool is a seeded sample
``popular``     demonstrations whose next item is among the most popular training items (distinct)
``effect``      candidates ranked by Effect_D on the user's validation item (chapter 3); the ranking is
                computed by :class:`lrgd.demos.effect_select.EffectRanker` and passed in as ``ranking``
``effect-global``  the same ranked by Effect_D averaged over validation users, shared by every user
==============  =====================================================================================

The Effect_D selectors fall back to random demonstrations (counted) when the guard leaves fewer than k.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from lrgd.errors import ConfigError, DataError
from lrgd.rec.prompts import Demonstration

EFFECT_SELECTORS = ("effect", "effect-global")
SELECTORS = ("zero-shot", "random", "recent", "similarity", "popular", *EFFECT_SELECTORS)


@dataclass(frozen=True)
class Selection:
    """Chosen demonstrations and how they were found."""

    demos: tuple[Demonstration, ...]
    sources: tuple[tuple[str, int], ...]  # (pool user, cut index in their training sequence)
    guarded: int = 0  # candidates rejected by the leakage guard
    fallback: int = 0  # demonstrations filled in at random because the selector ran out


def _key(seed: int, *parts: str) -> int:
    return zlib.crc32("\x1f".join([str(seed), *parts]).encode())


class DemoPool:
    """Other users' training transitions, with the leakage guard and the selectors.

    ``similarity_pool`` users (a seeded sample) are embedded for the ``similarity`` selector; the other
    selectors draw from every training user.
    """

    def __init__(
        self, ds, split, history_len: int = 10, seed: int = 0, similarity_pool: int = 2000, embedder=None
    ) -> None:
        self.ds, self.split, self.h, self.seed = ds, split, history_len, seed
        self.similarity_pool = similarity_pool
        self.embedder = embedder
        # users whose final training transition makes a demonstration
        self.users = sorted(u for u in split.train if self.make(u, len(split.train[u]) - 1) is not None)

    # --------------------------------------------------------------------------- building blocks

    def make(self, src: str, cut: int) -> tuple[Demonstration, tuple[str, ...]] | None:
        """The demonstration from ``src``'s training sequence cut at ``cut``, and the ids it shows."""
        seq = self.split.train.get(src, ())
        if not 0 < cut < len(seq):
            return None
        items = self.ds.items
        nxt = seq[cut]
        if nxt not in items or not items[nxt].has_title:
            return None
        hist = [i for i in seq[:cut] if i in items and items[i].has_title][-self.h :]
        if not hist:
            return None
        demo = Demonstration(tuple(items[i].title for i in hist), items[nxt].title)
        return demo, (*hist, nxt)

    def held_out(self, user: str, split: str = "test") -> set[str]:
        """The evaluated user's future: valid and test targets (both, whichever split is evaluated)."""
        out = set()
        if user in self.split.valid:
            out.add(self.split.valid[user][1])
        if user in self.split.test:
            out.add(self.split.test[user][1])
        return out

    def allowed(self, user: str, src: str, shown: Sequence[str], held: set[str]) -> bool:
        """The leakage guard: not the user's own sequence, and no held-out item shown."""
        return src != user and not (held & set(shown))

    # --------------------------------------------------------------------------- selectors

    def select(
        self,
        method: str,
        user: str,
        k: int,
        query: Sequence[str] = (),
        ranking: Sequence[tuple[str, int]] | None = None,
    ) -> Selection:
        """``k`` demonstrations for ``user`` by ``method``; ``query`` is the user's history (ids).

        ``ranking`` (pool user, cut) best first is what the Effect_D selectors take, from
        :class:`lrgd.demos.effect_select.EffectRanker`; ``None`` there means the user has no validation prompt
        and the demonstrations are drawn at random (counted as fallbacks)."""
        if method not in SELECTORS:
            raise ConfigError(
                f"unknown demonstration selector {method!r}; choose one of {', '.join(SELECTORS)}"
            )
        if k < 0:
            raise ConfigError(f"k must be ≥ 0, got {k}")
        if method == "zero-shot" or k == 0:
            return Selection((), ())
        held = self.held_out(user)
        if method == "random":
            stream = self._random_stream(user)
        elif method == "popular":
            stream = iter(self._popular_order)
        elif method == "recent":
            stream = self._recent_stream(user, query)
        elif method in EFFECT_SELECTORS:
            stream = iter(ranking or ())
        else:
            stream = self._similar_stream(query)
        return self._take(user, k, held, stream, fill_random=method == "recent" or method in EFFECT_SELECTORS)

    def _take(self, user, k, held, stream, fill_random=False) -> Selection:
        demos, sources, guarded, seen = [], [], 0, set()
        for src, cut in stream:
            if (src, cut) in seen:
                continue
            seen.add((src, cut))
            built = self.make(src, cut)
            if built is None:
                continue
            if not self.allowed(user, src, built[1], held):
                guarded += 1
                continue
            demos.append(built[0])
            sources.append((src, cut))
            if len(demos) == k:
                return Selection(tuple(demos), tuple(sources), guarded)
        if fill_random:
            need = k - len(demos)
            rest = self._take(user, need, held, (s for s in self._random_stream(user) if s not in seen))
            return Selection(
                tuple(demos) + rest.demos, tuple(sources) + rest.sources, guarded + rest.guarded, need
            )
        raise DataError(f"could not find {k} leakage-free demonstrations for user {user!r}")

    def _random_stream(self, user: str):
        rng = np.random.default_rng([self.seed, zlib.crc32(user.encode("utf-8"))])
        for j in rng.permutation(len(self.users)):
            src = self.users[j]
            yield src, len(self.split.train[src]) - 1

    @cached_property
    def popularity(self) -> Counter:
        """Training interactions per item."""
        return Counter(i for s in self.split.train.values() for i in s)

    @cached_property
    def _popular_order(self) -> list[tuple[str, int]]:
        """Final training transitions by popularity of their next item, one per next item first."""
        pop = self.popularity
        ranked = sorted(
            self.users,
            key=lambda u: (-pop[self.split.train[u][-1]], _key(self.seed, "popular", u)),
        )
        firsts, dups, seen = [], [], set()
        for u in ranked:
            nxt = self.split.train[u][-1]
            (dups if nxt in seen else firsts).append((u, len(self.split.train[u]) - 1))
            seen.add(nxt)
        return firsts[:5000] + dups[:5000]

    @cached_property
    def _occurrences(self) -> dict[str, list[tuple[str, int]]]:
        """item → [(user, position)] over training sequences where the item is followed by another."""
        occ: dict[str, list[tuple[str, int]]] = {}
        for u, s in self.split.train.items():
            for p, i in enumerate(s[:-1]):
                occ.setdefault(i, []).append((u, p + 1))
        return occ

    def _recent_stream(self, user: str, query: Sequence[str]):
        items = self.ds.items
        anchors = [i for i in reversed(query) if i in items and items[i].has_title]
        for a in dict.fromkeys(anchors):
            occ = self._occurrences.get(a, [])
            yield from sorted(occ, key=lambda uc: _key(self.seed, user, uc[0], str(uc[1])))

    # --------------------------------------------------------------------------- similarity

    @cached_property
    def _sim_users(self) -> list[str]:
        rng = np.random.default_rng([self.seed, 7])
        n = min(self.similarity_pool, len(self.users))
        return [self.users[j] for j in sorted(rng.choice(len(self.users), size=n, replace=False))]

    def history_text(self, titles: Sequence[str]) -> str:
        """What is embedded: the last ``h`` titles, most recent first (truncation cuts the oldest)."""
        return "; ".join(reversed(list(titles)[-self.h :]))

    @cached_property
    def _sim_matrix(self) -> np.ndarray:
        if self.embedder is None:
            raise ConfigError("the similarity selector needs an embedder (lrgd.rec.embed.Embedder)")
        texts = [
            self.history_text(self.make(u, len(self.split.train[u]) - 1)[0].history) for u in self._sim_users
        ]
        return self.embedder.encode(texts)

    def _similar_stream(self, query: Sequence[str]):
        items = self.ds.items
        titles = [items[i].title for i in query if i in items and items[i].has_title]
        if not titles:
            raise DataError("empty history: the similarity selector needs at least one titled item")
        sims = self._sim_matrix @ self.embedder.encode([self.history_text(titles)], cache=False)[0]
        for j in sorted(range(len(sims)), key=lambda j: (-float(sims[j]), self._sim_users[j])):
            src = self._sim_users[j]
            yield src, len(self.split.train[src]) - 1
