"""Choosing demonstrations by Effect_D (chapter 3) for the chapter-2 evaluator.

``python -m lrgd evaluate --method effect --k 2`` and ``--method effect-global`` rank a fixed set of
candidate demonstrations by Effect_D (Eq. ``effect`` in :mod:`lrgd.demos.effect`, our reconstruction of the
paper's metric) and put the best ``k`` into the prompt:

* **candidates**: ``M`` demonstrations per dataset, the final training transitions of a seeded sample of
  pool users (:class:`lrgd.rec.select.DemoPool`). Their keys and values at the demonstration slot are
  computed once: ``M`` forward passes.
* ``effect`` (per user): one forward and one backward pass of the evaluated user's **validation** prompt
  (training history → validation item; the test item is never used), then Effect_D of every candidate
  by tensor products, candidates ranked by it.
* ``effect-global``: Effect_D averaged over the validation items of ``effect_users`` users (the last of
  the seeded validation-user order), one ranking shared by every test user.

Only validation items enter a ranking; a user's test item is never used.

The leakage guard of :meth:`DemoPool.allowed` still applies to the ranked candidates; when it leaves
fewer than ``k``, the rest is filled at random and counted. Effect_D scores *one* demonstration in the
slot after the instruction; with ``k > 1`` the ``k`` best single demonstrations are combined, which
assumes their first-order effects add.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lrgd.demos import effect as fx
from lrgd.errors import ConfigError
from lrgd.rec.prompts import prompt_parts, titled
from lrgd.rec.select import EFFECT_SELECTORS, DemoPool

__all__ = ["EFFECT_SELECTORS", "EffectRanker", "EffectRanking"]


@dataclass(frozen=True)
class EffectRanking:
    """Candidate demonstrations, best first: ``order`` (pool user, cut) with their Effect_D ``scores``."""

    order: tuple[tuple[str, int], ...]
    scores: tuple[float, ...]


class EffectRanker:
    """Effect_D of ``n_demos`` candidate demonstrations for validation prompts of a dataset.

    ``positions`` selects the attention outputs over which ∂L_u/∂o is taken
    (:data:`lrgd.demos.effect.POSITIONS`);
    ``"target"`` (the target title's tokens) keeps the per-user cost at one forward and one backward pass
    of the validation prompt plus small tensor products.
    """

    def __init__(self, lm, pool: DemoPool, n_demos: int = 30, positions: str = "target", seed: int = 0):
        if n_demos < 1:
            raise ConfigError(f"the Effect_D candidate pool needs ≥ 1 demonstration, got {n_demos}")
        if positions not in fx.POSITIONS:
            raise ConfigError(f"unknown positions {positions!r}; choose one of {', '.join(fx.POSITIONS)}")
        self.lm, self.pool, self.positions = lm, pool, positions
        rng = np.random.default_rng([seed, 11])
        sources, demos = [], []
        for j in rng.permutation(len(pool.users)):
            src = pool.users[j]
            cut = len(pool.split.train[src]) - 1
            built = pool.make(src, cut)
            if built is not None:
                sources.append((src, cut))
                demos.append(built[0])
            if len(sources) == n_demos:
                break
        if not sources:
            raise ConfigError("no pool user yields a demonstration: the training split is too small")
        self.sources: list[tuple[str, int]] = sources
        self.demos = demos
        self.tokens = [fx.demo_tokens(lm.tokenizer, d.history, d.next_item) for d in demos]
        self.slot = max(len(t) for t in self.tokens)
        self._states: list[fx.DemoState] | None = None

    def slot_prompt(self, history: Sequence[str], target: str) -> fx.SlotPrompt | None:
        """The zero-shot slot prompt of (history ids → target id), or ``None`` when the target has no title
        or no history item has one (such a user cannot be scored)."""
        ds = self.pool.ds
        titles = titled(ds, list(history))[-self.pool.h :]
        if not titles or target not in ds.items or not ds.items[target].has_title:
            return None
        parts = prompt_parts(titles)
        return fx.slot_prompt(self.lm.tokenizer, parts, ds.title(target), self.lm.info.chat, self.slot)

    def effects(self, sp: fx.SlotPrompt) -> np.ndarray:
        """Effect_D of every candidate for one slot prompt [M] (one forward + one backward pass)."""
        if self._states is None:  # the prefix (template start + instruction) is the same for every user
            self._states = [fx.demo_state(self.lm.model, sp, t) for t in self.tokens]
        us = fx.user_state(self.lm.model, sp, self.positions)
        return fx.effect_matrix(self._states, [us])[:, 0].numpy()

    def _ranking(self, scores: np.ndarray) -> EffectRanking:
        order = sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j))
        return EffectRanking(tuple(self.sources[j] for j in order), tuple(float(scores[j]) for j in order))

    def _validation_prompt(self, user: str) -> fx.SlotPrompt | None:
        valid = self.pool.split.valid.get(user)
        return None if valid is None else self.slot_prompt(*valid)

    def for_user(self, user: str) -> EffectRanking | None:
        """Candidates ranked by Effect_D on ``user``'s validation item (``None``: no validation prompt)."""
        sp = self._validation_prompt(user)
        return None if sp is None else self._ranking(self.effects(sp))

    def global_ranking(self, users: Sequence[str]) -> EffectRanking:
        """Candidates ranked by mean Effect_D over the validation items of ``users``."""
        prompts = [sp for sp in map(self._validation_prompt, users) if sp is not None]
        rows = [self.effects(sp) for sp in prompts]
        if not rows:
            raise ConfigError("no validation user has a titled history and target; cannot rank globally")
        return self._ranking(np.mean(rows, axis=0))
