"""Demonstration selectors: which other users' (history → next item) pairs go into the prompt.

A demonstration is built from another user's **training** sequence (leave-one-out ``train``, i.e. without
their valid and test items) and cut at some position: the titled items before the cut (the last ``h``)
are its history, the item at the cut is its next item. :class:`DemoPool` holds these and the one
leakage guard (:mod:`lrgd.rec.leakage`): a demonstration is refused when it comes from the evaluated
user or (``guard="held-out"``, chapter 2's default) shows one of their held-out items (valid or test
target) by id **or by title**; ``guard="own"`` refuses only the user's own sequence (:data:`GUARDS`).
Refusals are counted.

A selector is one class registered by name (:func:`register_selector`); its parameters are its
dataclass fields, which enter the cache key of every result it produces. The runner calls
``selector.select(runner, cfg, user, k, history)`` and nothing else (the :class:`Selector` protocol).

==============  =====================================================================================
``zero-shot``   no demonstrations (k = 0)
``random``      seeded random pool users, each cut before their last training item
``recent``      anchored at the evaluated user's *most recent* items: other users who also had that
                item, cut right after it (their next item follows the same item). The Amazon files
                carry order but no timestamps, so "most recent" is read on the evaluated user's history.
                Falls back to random when fewer than k anchored demonstrations exist (counted).
``similarity``  the pool users whose history is most similar to the evaluated user's (cosine of
                all-MiniLM-L6-v2 embeddings, :mod:`lrgd.rec.embed`); the pool is a seeded sample of
                ``similarity_pool`` users (default: the profile's ``eval.similarity_pool``)
``popular``     demonstrations whose next item is among the most popular training items (distinct)
``effect``      ranked by Effect_D on the user's validation item (chapter 3), :mod:`lrgd.demos.effect_select`
``effect-global``  ranked by Effect_D averaged over validation users, shared by every user (same module)
``perturbed``   another selector's demonstrations with a perturbation applied (:mod:`lrgd.robust.selectors`)
``optimized``   one global set read from a file that ``python -m lrgd optimize`` writes (same module)
==============  =====================================================================================
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from lrgd.errors import ConfigError, DataError
from lrgd.rec.leakage import HeldOut, held_out, leaks
from lrgd.rec.prompts import Demonstration
from lrgd.rec.registry import Registry

#: what a demonstration may not show. ``held-out`` (chapter 2): the evaluated user's own sequence and any
#: demonstration showing their valid or test item (id or title) — which also refuses every other user's
#: transition *into* the target, so demonstrations can never point at it. ``own``: only the user's own
#: sequence; other users' training transitions are collaborative evidence, as in ``ref-markov``.
GUARDS = ("held-out", "own")

#: demonstration selectors by name; the Effect_D ones register from :mod:`lrgd.demos.effect_select`
SELECTORS = Registry(
    "demonstration selector",
    plugins=("lrgd.demos.effect_select", "lrgd.models.reader_dual", "lrgd.robust.selectors"),
)
register_selector = SELECTORS.register


@dataclass(frozen=True)
class Selection:
    """Chosen demonstrations and how they were found.

    ``extra`` holds fields the selector adds to the per-user record (e.g. the Effect_D of each chosen
    demonstration).
    """

    demos: tuple[Demonstration, ...]
    sources: tuple[tuple[str, int], ...]  # (pool user, cut index in their training sequence)
    guarded: int = 0  # candidates refused by the leakage guard
    fallback: int = 0  # demonstrations filled in at random because the selector ran out
    extra: Mapping[str, object] = field(default_factory=dict)
    #: each demonstration's item ids (history…, next) when they differ from what its source shows (a
    #: perturbed demonstration, :mod:`lrgd.robust.selectors`); empty: read them from ``sources``
    items: tuple[tuple[str, ...], ...] = ()


@runtime_checkable
class Selector(Protocol):
    """What the runner needs from a selector.

    ``runner`` gives shared state: ``runner.pool(cfg)`` (the :class:`DemoPool` of the condition),
    ``runner.lm(cfg.model)``, ``runner.embedder()``, ``runner.eligible_users(dataset, split, seed)`` and
    ``runner.memo(key, make)`` (a per-process cache; the key must name everything the value depends on).
    ``history`` is the evaluated user's history (item ids, oldest first).

    Optional class attributes: ``demonstrations = False`` for a selector that takes ``k = 0`` only;
    ``code``, modules beyond the class's own whose source enters the cache key; ``profile_defaults``,
    field → ``"section.attribute"`` of the profile. An optional ``validate()`` raises
    :class:`ConfigError` for bad parameter values.
    """

    name: ClassVar[str]

    def select(self, runner, cfg, user: str, k: int, history: Sequence[str]) -> Selection: ...


def _key(seed: int, *parts: str) -> int:
    return zlib.crc32("\x1f".join([str(seed), *parts]).encode())


class DemoPool:
    """Other users' training transitions, the leakage guard, and the candidate streams selectors use.

    A *stream* yields (pool user, cut) in preference order; :meth:`take` builds demonstrations from it,
    skipping what the guard refuses, until it has ``k``.
    """

    def __init__(self, ds, split, history_len: int = 10, seed: int = 0, guard: str = "held-out") -> None:
        if guard not in GUARDS:
            raise ConfigError(f"unknown guard {guard!r}; choose one of {', '.join(GUARDS)}")
        self.ds, self.split, self.h, self.seed, self.guard = ds, split, history_len, seed, guard
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

    def demo_items(self, sel: Selection) -> list[tuple[str, ...]]:
        """Each chosen demonstration's item ids (history…, next): ``sel.items`` when the selector set
        them (perturbed demonstrations), else what its source shows."""
        return [tuple(x) for x in sel.items] if sel.items else [self.make(*src)[1] for src in sel.sources]

    def held_out(self, user: str) -> HeldOut:
        """What the guard refuses to show besides the user's own sequence: with ``guard="held-out"`` the
        user's valid and test targets (both, whichever split is evaluated), with ``guard="own"`` nothing."""
        return held_out(self.ds, self.split, user) if self.guard == "held-out" else HeldOut()

    def allowed(self, user: str, src: str, shown: Sequence[str], held: HeldOut) -> bool:
        """The leakage guard: not the user's own sequence, and no held-out item shown (id or title)."""
        items = self.ds.items
        titles = [items[i].title for i in shown if i in items and items[i].has_title]
        return src != user and not leaks(held, shown, titles)

    def take(
        self, user: str, k: int, stream: Iterable[tuple[str, int]], fill_random: bool = False
    ) -> Selection:
        """The first ``k`` demonstrations of ``stream`` that the guard allows.

        With ``fill_random`` a short stream is topped up from :meth:`random_stream` (counted in
        ``fallback``); without it a short stream is a :class:`DataError`.
        """
        return self._take(user, k, self.held_out(user), stream, fill_random)

    def _take(self, user, k, held, stream, fill_random=False) -> Selection:
        demos, sources, guarded, seen = [], [], 0, set()
        if k == 0:
            return Selection((), ())
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
            rest = self._take(user, need, held, (s for s in self.random_stream(user) if s not in seen))
            return Selection(
                tuple(demos) + rest.demos, tuple(sources) + rest.sources, guarded + rest.guarded, need
            )
        raise DataError(f"could not find {k} leakage-free demonstrations for user {user!r}")

    # --------------------------------------------------------------------------- streams

    def final(self, src: str) -> tuple[str, int]:
        """``src``'s final training transition as (user, cut)."""
        return src, len(self.split.train[src]) - 1

    def random_stream(self, user: str):
        """Every pool user's final transition, in a random order seeded by (seed, user)."""
        rng = np.random.default_rng([self.seed, zlib.crc32(user.encode("utf-8"))])
        for j in rng.permutation(len(self.users)):
            yield self.final(self.users[j])

    @cached_property
    def popularity(self) -> Counter:
        """Training interactions per item."""
        return Counter(i for s in self.split.train.values() for i in s)

    @cached_property
    def popular_order(self) -> list[tuple[str, int]]:
        """Final training transitions by popularity of their next item, one per next item first."""
        pop = self.popularity
        ranked = sorted(
            self.users,
            key=lambda u: (-pop[self.split.train[u][-1]], _key(self.seed, "popular", u)),
        )
        firsts, dups, seen = [], [], set()
        for u in ranked:
            nxt = self.split.train[u][-1]
            (dups if nxt in seen else firsts).append(self.final(u))
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

    def recent_stream(self, user: str, query: Sequence[str]):
        """Transitions right after one of ``query``'s items, most recent item first."""
        items = self.ds.items
        anchors = [i for i in reversed(query) if i in items and items[i].has_title]
        for a in dict.fromkeys(anchors):
            occ = self._occurrences.get(a, [])
            yield from sorted(occ, key=lambda uc: _key(self.seed, user, uc[0], str(uc[1])))

    def history_text(self, titles: Sequence[str]) -> str:
        """What the similarity selector embeds: the last ``h`` titles, most recent first."""
        return "; ".join(reversed(list(titles)[-self.h :]))


# ----------------------------------------------------------------------------- the selectors


@register_selector("zero-shot")
class ZeroShot:
    """No demonstrations."""

    demonstrations: ClassVar[bool] = False

    def select(self, runner, cfg, user, k, history) -> Selection:
        return Selection((), ())


@register_selector("random")
class RandomDemos:
    """Seeded random pool users, each cut before their last training item."""

    def select(self, runner, cfg, user, k, history) -> Selection:
        pool = runner.pool(cfg)
        return pool.take(user, k, pool.random_stream(user))


@register_selector("recent")
class RecentDemos:
    """Anchored at the user's most recent items; random fills in (counted) when too few exist."""

    def select(self, runner, cfg, user, k, history) -> Selection:
        pool = runner.pool(cfg)
        return pool.take(user, k, pool.recent_stream(user, history), fill_random=True)


@register_selector("popular")
class PopularDemos:
    """Demonstrations whose next item is among the most popular training items (distinct first)."""

    def select(self, runner, cfg, user, k, history) -> Selection:
        pool = runner.pool(cfg)
        return pool.take(user, k, iter(pool.popular_order))


@register_selector("similarity")
class SimilarDemos:
    """The pool users whose history is most similar to the user's (cosine of MiniLM embeddings)."""

    similarity_pool: int = field(default=2000, metadata={"help": "pool users embedded and searched"})
    profile_defaults: ClassVar[dict[str, str]] = {"similarity_pool": "eval.similarity_pool"}
    code: ClassVar[tuple[str, ...]] = ("lrgd.rec.embed",)

    def validate(self) -> None:
        if self.similarity_pool < 1:
            raise ConfigError(f"--similarity-pool must be ≥ 1, got {self.similarity_pool}")

    def sample(self, pool: DemoPool) -> list[str]:
        """The seeded sample of pool users that are embedded."""
        rng = np.random.default_rng([pool.seed, 7])
        n = min(self.similarity_pool, len(pool.users))
        return [pool.users[j] for j in sorted(rng.choice(len(pool.users), size=n, replace=False))]

    def index(self, pool: DemoPool, embedder) -> tuple[list[str], np.ndarray]:
        """(sampled users, their unit embeddings [n, d])."""
        users = self.sample(pool)
        texts = [pool.history_text(pool.make(*pool.final(u))[0].history) for u in users]
        return users, embedder.encode(texts)

    def stream(self, pool: DemoPool, index, embedder, query: Sequence[str]):
        """Sampled users' final transitions, most similar history first."""
        users, matrix = index
        items = pool.ds.items
        titles = [items[i].title for i in query if i in items and items[i].has_title]
        if not titles:
            raise DataError("empty history: the similarity selector needs at least one titled item")
        sims = matrix @ embedder.encode([pool.history_text(titles)], cache=False)[0]
        for j in sorted(range(len(sims)), key=lambda j: (-float(sims[j]), users[j])):
            yield pool.final(users[j])

    def select(self, runner, cfg, user, k, history) -> Selection:
        pool, embedder = runner.pool(cfg), runner.embedder()
        key = ("similarity", cfg.dataset, cfg.history_len, cfg.seed, self.similarity_pool)
        index = runner.memo(key, lambda: self.index(pool, embedder))
        return pool.take(user, k, self.stream(pool, index, embedder, history))
