"""Perturbed demonstrations as a selector of the runner (chapters 2b and 4; our reconstruction).

``perturbed`` takes another selector's demonstrations (``base``) and applies one perturbation of
:mod:`lrgd.robust.perturb` to their item ids at ``rate``, so every model the runner knows — the LLMs
through titles, the reader and the vote through ids — meets the same noisy demonstrations:

    EvalConfig("ml-100k", "perturbed", k=16, params={"perturbation": "flip_next", "rate": 1.0})

is *corrupted* demonstrations: transitions anchored at the user's recent items whose next item is a
uniform other item. Items are the dataset's titled items (indices into a sorted catalogue); a
replacement never shows what the leakage guard refuses (it is drawn again), and the draws are seeded by
(seed, user, perturbation, demonstration): the same user meets the same draws at every rate (paired
curves over the rate).

``dropout`` removes items (a real demonstration's history may be shorter; at least its most recent
item is kept); ``off_domain`` is not offered here (the catalogues hold no off-domain items).
"""

from __future__ import annotations

import zlib
from dataclasses import field
from functools import cached_property
from typing import ClassVar

import numpy as np

from lrgd.errors import ConfigError, DataError
from lrgd.rec.prompts import Demonstration
from lrgd.rec.select import SELECTORS, DemoPool, Selection, register_selector
from lrgd.robust import perturb as pt

#: the perturbations the runner's selector offers (item-level; ``off_domain`` needs a foreign catalogue)
RUNNER_PERTURBATIONS = ("flip_next", "random", "popular", "shuffle", "dropout")
_PAD = -1
_TRIES = 20


class Catalogue:
    """The titled items of a pool's dataset as indices, and their training popularity."""

    def __init__(self, pool: DemoPool) -> None:
        items = pool.ds.items
        self.ids = sorted(i for i, it in items.items() if it.has_title)
        self.index = {i: j for j, i in enumerate(self.ids)}
        pop = pool.popularity
        self.popularity = np.array([pop[i] for i in self.ids], dtype=float) + 1.0  # never zero


@register_selector("perturbed")
class PerturbedDemos:
    """Another selector's demonstrations with one perturbation applied to their items."""

    base: str = field(default="recent", metadata={"help": "the selector whose demonstrations are perturbed"})
    perturbation: str = field(default="flip_next", metadata={"help": "lrgd.robust.perturb name"})
    rate: float = field(default=1.0, metadata={"help": "share of positions touched (answers: flip_next)"})
    code: ClassVar[tuple[str, ...]] = ("lrgd.robust.perturb",)

    def validate(self) -> None:
        if self.base in ("perturbed", "zero-shot") or self.base not in SELECTORS:
            bases = [n for n in SELECTORS.names() if n not in ("perturbed", "zero-shot")]
            raise ConfigError(
                f"--base {self.base!r} is not a demonstration selector; choose one of {', '.join(bases)}"
            )
        if self.perturbation not in RUNNER_PERTURBATIONS:
            raise ConfigError(
                f"--perturbation {self.perturbation!r} is not offered by the runner; choose one of "
                f"{', '.join(RUNNER_PERTURBATIONS)}"
            )
        if not 0.0 <= float(self.rate) <= 1.0:
            raise ConfigError(f"--rate must lie in [0, 1], got {self.rate}")

    @cached_property
    def _base(self):
        return SELECTORS.build(self.base)

    def select(self, runner, cfg, user, k, history) -> Selection:
        pool = runner.pool(cfg)
        sel = self._base.select(runner, cfg, user, k, history)
        cat = runner.memo(("catalogue", cfg.dataset, cfg.split, cfg.seed), lambda: Catalogue(pool))
        held = pool.held_out(user)
        items, demos = [], []
        for j, (src, ids) in enumerate(zip((s[0] for s in sel.sources), pool.demo_items(sel))):
            ok = lambda x, s=src: pool.allowed(user, s, x, held)  # noqa: E731
            new = self.perturb_one(cat, ids, pool.seed, user, j, ok)
            items.append(new)
            titles = [pool.ds.items[i].title for i in new]
            demos.append(Demonstration(tuple(titles[:-1]), titles[-1]))
        return Selection(tuple(demos), sel.sources, sel.guarded, sel.fallback, sel.extra, tuple(items))

    def perturb_one(self, cat: Catalogue, ids, seed: int, user: str, j: int, allowed) -> tuple[str, ...]:
        """One demonstration's ids (history…, next) perturbed; drawn again (seeded) until ``allowed``."""
        hist = np.array([[cat.index[i] for i in ids[:-1]]])
        nxt = np.array([cat.index[ids[-1]]])
        ctx = {"n_items": len(cat.ids), "popularity": cat.popularity, "pad_id": _PAD}
        for attempt in range(_TRIES):
            key = zlib.crc32(f"{self.perturbation}|{user}|{j}|{attempt}".encode())
            rng = np.random.default_rng([seed, key])
            out = pt.perturb(pt.DemoItems(hist, nxt), self.perturbation, float(self.rate), rng, **ctx)
            h, x = out.history, out.next_item
            kept = [int(i) for i in h[0] if i != _PAD] or [int(hist[0, -1])]
            new = (*(cat.ids[i] for i in kept), cat.ids[int(x[0])])
            if allowed(new):
                return new
        raise DataError(
            f"perturbation {self.perturbation!r} kept showing a held-out item of user {user!r} after "
            f"{_TRIES} draws; lower --rate or use --guard own"
        )


@register_selector("optimized")
class OptimizedDemos:
    """The same k demonstrations for every user, read from a file that ``python -m lrgd optimize`` wrote
    (:mod:`lrgd.robust.runner_objective`); a demonstration the leakage guard refuses for a user is dropped
    from that user's prompt (counted in ``guarded``)."""

    demos: str = field(
        default="", metadata={"help": "demonstration file written by `python -m lrgd optimize`"}
    )
    demos_sha256: str = field(
        default="", metadata={"help": "the content hash --demos must have (default: read from the file)"}
    )
    code: ClassVar[tuple[str, ...]] = ("lrgd.robust.runner_objective",)

    def validate(self) -> None:
        from lrgd.robust.runner_objective import read_demos

        doc = read_demos(self.demos)
        if self.demos_sha256 and self.demos_sha256 != doc["sha256"]:
            raise ConfigError(
                f"--demos {self.demos} has content hash {doc['sha256'][:12]}…, not the --demos-sha256 given; "
                "pass the file that was asked for or drop --demos-sha256"
            )
        object.__setattr__(self, "demos_sha256", doc["sha256"])  # the file's content enters the cache key

    def check_config(self, cfg, doc: dict | None = None) -> None:
        """The file (``doc``: already read) must be for ``cfg``'s dataset, k and history length, and still
        hold the content this selector was validated with (one-line ConfigError otherwise)."""
        from lrgd.robust.runner_objective import read_demos

        doc = read_demos(self.demos) if doc is None else doc
        if self.demos_sha256 and doc["sha256"] != self.demos_sha256:
            raise ConfigError(
                f"--demos {self.demos} changed after the run started (content hash {doc['sha256'][:12]}…); "
                "run the command again"
            )
        for name, want, got, flag in (
            ("dataset", doc["dataset"], cfg.dataset, "--dataset"),
            ("k", doc["k"], cfg.k, "--k"),
            ("history_len", doc["history_len"], cfg.history_len, "--history"),
        ):
            if want != got:
                raise ConfigError(
                    f"--demos {self.demos} holds a set for {name}={want}, not {got}; pass {flag} {want} "
                    f"or optimise a set for {name}={got} with `python -m lrgd optimize`"
                )

    def select(self, runner, cfg, user, k, history) -> Selection:
        from lrgd.robust.runner_objective import file_demos, read_demos, selection_for

        doc = read_demos(self.demos)  # cached per (path, size, mtime): one read per run
        self.check_config(cfg, doc)
        return selection_for(runner.pool(cfg), user, file_demos(doc))


@register_selector("two-stage")
class TwoStageDemos:
    """The two-stage optimiser's global set (chapter 4 §4.8, our reconstruction) as a selector: the same k
    demonstrations for every user, chosen on validation users by :func:`lrgd.robust.runner_objective.optimize`
    on first use and kept (resumable) under ``results/<profile>/optimized/<dataset>/``, named by everything
    the set depends on. ``python -m lrgd optimize`` with the same sizes writes the same set.

    The optimiser keeps its validation users and its pool's sources out of the first ``test_users`` test
    users, so only those may be evaluated (a larger ``--users`` is refused: it would score the users the
    set was chosen on)."""

    pool: int = field(default=40, metadata={"help": "candidate demonstrations M of stage 1"})
    valid_users: int = field(default=60, metadata={"help": "validation users (half train, half held out)"})
    test_users: int = field(default=200, metadata={"help": "first test users kept out of the optimisation"})
    max_iters: int = field(default=6, metadata={"help": "stage-2 iterations"})
    max_moves: int = field(default=48, metadata={"help": "swaps sampled per stage-2 iteration"})
    patience: int = field(default=2, metadata={"help": "early stopping on the held-out validation users"})
    collapse_guard: bool = field(default=True, metadata={"help": "early stopping and keep-best (the guard)"})
    code: ClassVar[tuple[str, ...]] = ("lrgd.robust.runner_objective", "lrgd.robust.optimise")

    def validate(self) -> None:
        for name in ("pool", "valid_users", "test_users", "max_iters", "max_moves", "patience"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < (0 if name == "max_iters" else 1):
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")

    def spec(self, cfg):
        """The optimiser's :class:`~lrgd.robust.runner_objective.OptimizeSpec` for condition ``cfg``."""
        from lrgd.robust.runner_objective import OptimizeSpec

        return OptimizeSpec(
            cfg.dataset, cfg.model, k=cfg.k, n_pool=self.pool, n_valid_users=self.valid_users,
            n_test_users=self.test_users, max_iters=self.max_iters, max_moves=self.max_moves,
            patience=self.patience, collapse_guard=self.collapse_guard, seed=cfg.seed, guard=cfg.guard,
            history_len=cfg.history_len, n_candidates=cfg.n_candidates,
        ).validate()  # fmt: skip

    def select(self, runner, cfg, user, k, history) -> Selection:
        from lrgd.robust.runner_objective import file_demos, optimised_document, selection_for

        if cfg.split != "test" or cfg.n_users is None or cfg.n_users > self.test_users:
            raise ConfigError(
                f"two-stage chose its set on validation users outside the first {self.test_users} test "
                f"users: evaluate it on --split test with --users ≤ {self.test_users} (or raise --test-users)"
            )
        spec = self.spec(cfg)
        doc = runner.memo(("two-stage", spec, runner.profile.name), lambda: optimised_document(runner, spec))
        return selection_for(runner.pool(cfg), user, file_demos(doc))
