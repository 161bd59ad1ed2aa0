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

Each is one selector class (:class:`EffectSelector`, :class:`EffectGlobalSelector`) registered with
:func:`lrgd.rec.select.register_selector`; their parameters (``effect_pool`` = M, ``effect_users``) are
dataclass fields, so they enter the cache key and become ``--effect-pool`` / ``--effect-users``.

The leakage guard of :meth:`DemoPool.allowed` still applies to the ranked candidates; when it leaves
fewer than ``k``, the rest is filled at random and counted (also when the user has no validation
prompt). Effect_D scores *one* demonstration in the slot after the instruction; with ``k > 1`` the ``k``
best single demonstrations are combined, which assumes their first-order effects add.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from lrgd.demos import effect as fx
from lrgd.errors import ConfigError
from lrgd.rec.prompts import prompt_parts, titled
from lrgd.rec.select import DemoPool, Selection, register_selector

__all__ = ["EffectGlobalSelector", "EffectRanker", "EffectRanking", "EffectSelector"]


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


# ----------------------------------------------------------------------------- the selectors


@register_selector("effect")
class EffectSelector:
    """Candidates ranked by Effect_D on the evaluated user's validation item; the best ``k`` allowed."""

    effect_pool: int = field(default=30, metadata={"help": "candidate demonstrations ranked by Effect_D (M)"})
    code: ClassVar[tuple[str, ...]] = ("lrgd.demos.effect",)

    def validate(self) -> None:
        if self.effect_pool < 1:
            raise ConfigError(f"--effect-pool must be ≥ 1, got {self.effect_pool}")

    def ranker(self, runner, cfg) -> EffectRanker:
        """The dataset's :class:`EffectRanker` (its M demonstration states computed once per process)."""
        key = ("effect-ranker", cfg.dataset, cfg.model, cfg.history_len, cfg.seed, self.effect_pool)
        return runner.memo(
            key, lambda: EffectRanker(runner.lm(cfg.model), runner.pool(cfg), self.effect_pool, seed=cfg.seed)
        )

    def ranking(self, runner, cfg, user: str) -> EffectRanking | None:
        """Candidates best first for ``user`` (``None``: the user has no validation prompt)."""
        return self.ranker(runner, cfg).for_user(user)

    def select(self, runner, cfg, user: str, k: int, history: Sequence[str]) -> Selection:
        ranking = self.ranking(runner, cfg, user)
        sel = runner.pool(cfg).take(user, k, iter(ranking.order if ranking else ()), fill_random=True)
        if ranking is None:
            return sel
        chosen = dict(zip(ranking.order, ranking.scores))
        effect = [round(chosen[s], 5) if s in chosen else None for s in sel.sources]
        return replace(sel, extra={"effect": effect})  # Effect_D of the chosen demonstrations, as ranked


@register_selector("effect-global")
class EffectGlobalSelector(EffectSelector):
    """Candidates ranked by mean Effect_D over the validation items of ``effect_users`` users (the last of
    the seeded validation-user order), one ranking shared by every evaluated user."""

    effect_users: int = field(default=20, metadata={"help": "validation users whose Effect_D is averaged"})

    def validate(self) -> None:
        super().validate()
        if self.effect_users < 1:
            raise ConfigError(f"--effect-users must be ≥ 1, got {self.effect_users}")

    def ranking(self, runner, cfg, user: str) -> EffectRanking:
        def make() -> EffectRanking:
            order, _ = runner.eligible_users(cfg.dataset, "valid", cfg.seed)
            return self.ranker(runner, cfg).global_ranking(order[::-1][: self.effect_users])

        key = ("effect-global", cfg.dataset, cfg.model, cfg.history_len, cfg.seed, self.effect_pool)
        return runner.memo((*key, self.effect_users), make)
