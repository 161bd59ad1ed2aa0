"""Configuration: one :class:`Profile` per size, devices, and the *only* reader of environment variables.

A profile (``ci`` | ``full`` | ``gpu``) holds one frozen section per concern, each a dataclass with
commented defaults:

==================  ==========================================================================
``.equivalence``    chapter 1: random-weight checks, random features, real-LLM prompts
``.regression``     testbed A (in-context regression): task sizes and the LSA training schedule
``.world``          testbed B (the recommendation world): its generative knobs and prompt shape
``.decoder``        the tiny RoPE decoder trained on testbed B: width, depth, schedule
``.eval``           chapter 2's recommender evaluation: users, datasets, conditions
``.effect``         chapter 3's Effect_D experiments: demonstrations, users, candidate pools
``.ceiling``        chapter 2b: what k demonstrations can tell at all (a vote over their next items)
``.reader``         chapter 2b: the transformer trained to read demonstrations (anonymised items)
``.itemid``         chapter 2b: the item-id sequential recommender (SASRec-style, k = 0)
``.robust``         chapter 4: perturbations, the robust score and the two-stage optimiser
``.grid``           chapter 6: the main results tables (dataset × model × method), :mod:`lrgd.grid`
==================  ==========================================================================

Modules take their section as an argument; no module or notebook holds a size table. A parameter
travels one way: notebook ``parameters`` cell → :func:`get_profile` (and :meth:`Profile.section` for
explicit overrides) → library → model/data.

Environment variables (all optional; read here and nowhere else):

``LRGD_DATA_DIR``
    Folder holding one sub-folder per dataset (``amazon-games/`` ...). When set it is the only place
    searched (a dataset missing there is an error naming the variable), else ``data/`` then
    ``../shared/data``.
``LRGD_CACHE``
    Where converted models and trained weights are cached
    (default ``~/.cache/lrgd``, or ``$XDG_CACHE_HOME/lrgd``).
``LRGD_PROFILE``
    Default profile when a caller passes none (``ci`` unless set).
``LRGD_SCHEDULER``
    Address of a running dask scheduler (``tcp://host:8786``) on which :func:`lrgd.grid.run_grid` and
    ``python -m lrgd grid`` compute the results grid when no ``--scheduler`` is given (unset: a local
    cluster); :func:`scheduler_address`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from lrgd.errors import ConfigError, DataError

PROFILES = ("ci", "full", "gpu")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16", "float64")

#: The repository root (the folder holding ``lrgd/``).
REPO_ROOT = Path(__file__).resolve().parent.parent

#: special tokens of testbed B's vocabulary (``<bos> <sep> -> <query>``) come before the items
N_WORLD_SPECIALS = 4


# ----------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class EquivalenceSizes:
    """Chapter 1: the dual model's checks."""

    n_random_trials: int = 20  # random-weight checks per equivalence test
    feature_counts: tuple[int, ...] = (16, 64, 256, 1024, 4096)  # random-feature sizes for the kernel plot
    n_feature_seeds: int = 8  # seeds averaged per feature count
    n_prompts: int = 4  # real-LLM prompts (users) for the Δo study
    n_candidates: int = 20  # candidates listed in a real prompt
    n_demos: int = 2  # demonstrations in a real prompt

    def validate(self) -> EquivalenceSizes:
        if min(self.n_random_trials, self.n_feature_seeds, self.n_prompts, self.n_candidates) < 1:
            raise ConfigError("equivalence sizes (trials, seeds, prompts, candidates) must be ≥ 1")
        return self


@dataclass(frozen=True)
class RegressionSizes:
    """Testbed A: task sizes and the training schedule of the LSA models."""

    dim: int = 10
    n_ctx: int = 10  # context size N used in training
    noise: float = 0.0
    key_dim: int = 12  # width of W_Q, W_K (even, ≥ dim + 1)
    wide_key_dim: int = 44  # a wider head for the RoPE variant (room for slow rotation pairs)
    depths: tuple[int, ...] = (1, 2)
    steps: int = 3000  # depth 1
    deep_steps: int = 5000  # depth ≥ 2 (deeper LSAs leave a plateau slowly)
    deep_lr: float = 2e-3
    batch: int = 128
    lr: float = 2e-3
    eval_tasks: int = 2000
    eval_ns: tuple[int, ...] = (2, 4, 6, 8, 10, 14, 20, 30, 40)
    threads: int = 1

    def validate(self) -> RegressionSizes:
        if self.key_dim % 2 or self.wide_key_dim % 2 or self.key_dim < self.dim + 1:
            raise ConfigError(
                f"key_dim={self.key_dim} must be even and ≥ dim + 1 = {self.dim + 1} (RoPE rotates pairs)"
            )
        return self


@dataclass(frozen=True)
class WorldConfig:
    """Testbed B: sizes and knobs of the world, Eq. (B1) of :mod:`lrgd.testbeds.recworld`."""

    n_items: int = 96
    n_clusters: int = 2
    groups_per_cluster: int = 6
    latent_dim: int = 8
    temperature: float = 0.7
    cluster_scale: float = 1.0
    group_spread: float = 2.0
    popularity: float = 0.5
    history_specificity: float = 0.2  # 1: history items follow the user's own taste; 0: only its cluster's
    user_noise: float = 0.0
    drift: float = 0.0
    history_len: int = 3  # query user's items
    demo_history_len: int = 4  # a demonstration's history (its next item follows)
    n_candidates: int = 20
    kind_probs: tuple[float, float, float] = (0.6, 0.2, 0.2)  # same, other, corrupted (training prior)
    k_max: int = 6
    n_valid_next: int = 0  # a query user's validation next items (own taste), between history and target

    @property
    def n_groups(self) -> int:
        return self.n_clusters * self.groups_per_cluster

    @property
    def vocab_size(self) -> int:
        return N_WORLD_SPECIALS + self.n_items

    def seq_len(self, k: int) -> int:
        """Tokens of a prompt with ``k`` demonstrations: BOS, k × (history → next SEP), QUERY history →."""
        return 1 + k * (self.demo_history_len + 3) + 1 + self.history_len + 1

    def validate(self) -> WorldConfig:
        if self.n_groups < 2:
            raise ConfigError("a world needs at least 2 groups (n_clusters × groups_per_cluster ≥ 2)")
        if self.n_candidates < 2 or self.n_candidates > self.n_items:
            raise ConfigError(f"n_candidates={self.n_candidates} must lie in 2..n_items={self.n_items}")
        if self.history_len < 1 or self.demo_history_len < 1:
            raise ConfigError("history_len and demo_history_len must be ≥ 1")
        if self.n_valid_next < 0:
            raise ConfigError(f"n_valid_next={self.n_valid_next} must be ≥ 0 (0: no validation next items)")
        p = np.asarray(self.kind_probs, dtype=float)
        if p.shape != (3,) or (p < 0).any() or not math.isclose(p.sum(), 1.0, abs_tol=1e-9):
            raise ConfigError(f"kind_probs={self.kind_probs} must be 3 non-negative numbers summing to 1")
        if self.temperature <= 0:
            raise ConfigError("temperature must be > 0")
        return self


@dataclass(frozen=True)
class DecoderSizes:
    """Width, depth and training schedule of the tiny decoder trained on testbed B."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128
    rope_theta: float = 10000.0
    steps: int = 3000
    batch: int = 64
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.01
    threads: int = 1  # torch CPU threads while training (restored afterwards); 1 is robust on busy CPUs
    eval_queries: int = 1000  # query users in the ICL sweep (not part of the weight-cache key)
    dual_prompts: int = 8  # prompts for the chapter-1 dual checks (not part of the key)

    def validate(self) -> DecoderSizes:
        if self.heads % self.kv_heads or self.hidden % self.heads or (self.hidden // self.heads) % 2:
            raise ConfigError(
                f"heads={self.heads} must be a multiple of kv_heads={self.kv_heads} and divide "
                f"hidden={self.hidden} into an even head dimension (RoPE rotates pairs)"
            )
        return self


_TABLE = ("amazon-beauty", "amazon-toys", "amazon-games", "ml-100k")
_ALL_SELECTORS = ("zero-shot", "random", "recent", "similarity", "popular")


@dataclass(frozen=True)
class EvalSizes:
    """Chapter 2: the recommender evaluation.

    ``ci`` is cut to fit the CI budget (one first execution of the chapter in about 7 minutes on 2 CPU
    cores): 10 users per dataset, demonstrations (k > 0) only on the two datasets with short titles
    (``icl_datasets``), the variant chosen on two datasets, the k curve and the position check on fewer
    users (the first users of the table's sample, so their k = 0 and k = 2 runs are read from the table's
    cache).
    """

    n_users: int | None = 10  # test users per dataset (None: all)
    n_valid_users: int | None = 10  # validation users per dataset, to choose the score variant
    valid_datasets: tuple[str, ...] = ("amazon-games", "ml-100k")  # where the variant is chosen (pooled)
    similarity_pool: int = 300  # pool users embedded for the similarity selector
    table_datasets: tuple[str, ...] = _TABLE
    table_methods: tuple[str, ...] = ("zero-shot", "random", "similarity")  # LLM selectors in the table
    icl_datasets: tuple[str, ...] = ("amazon-games", "ml-100k")  # datasets where the k > 0 selectors run
    table_k: int = 2
    curve_dataset: str = "amazon-games"
    curve_method: str = "random"
    curve_ks: tuple[int, ...] = (0, 1, 2, 4)
    curve_users: int | None = 10
    bias_dataset: str = "amazon-games"
    bias_users: int | None = 10
    generate_users: int = 3
    n_boot: int = 2000  # bootstrap resamples per confidence interval
    score_mode: str = "packed"  # how a prompt's candidates share forwards (lrgd.rec.rank.SCORING_MODES)
    score_tokens: int = 1024  # candidate-title positions per forward (a GPU takes more at once)

    def validate(self) -> EvalSizes:
        for name in ("n_users", "n_valid_users", "curve_users", "bias_users"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"eval.{name} must be ≥ 1 or None (all), got {v}")
        if self.n_boot < 100:
            raise ConfigError(f"eval.n_boot must be ≥ 100 for a 95% interval, got {self.n_boot}")
        if self.score_mode not in ("packed", "batched") or self.score_tokens < 1:
            raise ConfigError(
                f"eval.score_mode must be packed or batched and score_tokens ≥ 1, got "
                f"{self.score_mode!r}, {self.score_tokens}"
            )
        return self


@dataclass(frozen=True)
class EffectSizes:
    """Chapter 3: Effect_D on testbed B and on a real LLM."""

    n_demos: int = 8  # §3.4: candidate demonstrations on the real LLM (pairs = n_demos × n_users)
    n_users: int = 8  # §3.4: users on the real LLM
    testbed_queries: int = 200  # §3.2–3.3: query users of testbed B
    testbed_pool: int = 24  # §3.2–3.3: candidate demonstrations of testbed B
    select_pool: int = 20  # §3.5: candidate demonstrations ranked by Effect_D per dataset (M)

    def validate(self) -> EffectSizes:
        if min(self.n_demos, self.n_users, self.testbed_queries, self.testbed_pool, self.select_pool) < 1:
            raise ConfigError("effect sizes must all be ≥ 1")
        return self


_ALL_DATASETS = ("amazon-beauty", "amazon-toys", "amazon-games", "amazon-scientific", "ml-100k")


@dataclass(frozen=True)
class CeilingSizes:
    """Chapter 2b: the information ceiling — rank candidates by the votes of k demonstrations' next items
    (popularity breaks ties), per dataset and selector, on chapter 2's candidate protocol."""

    datasets: tuple[str, ...] = _ALL_DATASETS
    selectors: tuple[str, ...] = ("recent", "random", "popular")  # similarity (MiniLM per user): full only
    ks: tuple[int, ...] = (4, 16, 64)
    n_users: int | None = 200  # test users per dataset (None: all)
    n_valid_users: int | None = 100  # validation users (where a best k / selector is chosen)

    def validate(self) -> CeilingSizes:
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"ceiling.ks must be ≥ 1 (k = 0 is the popularity row), got {self.ks}")
        for name in ("n_users", "n_valid_users"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"ceiling.{name} must be ≥ 1 or None (all), got {v}")
        return self


@dataclass(frozen=True)
class ReaderSizes:
    """Chapter 2b: a small RoPE transformer trained to read demonstrations.

    Items are anonymised: a token is the item's frozen MiniLM title vector, its popularity percentile in
    its catalogue and an identity tag drawn afresh for every prompt, so what the model knows about an item
    beyond its title and popularity can only come from the prompt.
    """

    titles: bool = True  # False: items carry only popularity and their per-prompt tag (fully anonymous)
    pointer: bool = True  # a pointer read-out: demonstrations' next items vote, weighted by the model
    train_datasets: tuple[str, ...] = ("ml-100k",)  # whose training prefixes make the training prompts
    heldout_dataset: str = "amazon-games"  # a catalogue never trained on
    heldout_user_share: float = 0.2  # users of the training catalogues kept out of training queries
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int = 256
    n_tags: int = 512  # identity tags per prompt (≥ the distinct items of the longest prompt)
    demo_history: int = 3  # items before a demonstration's next item
    query_len: int = 10  # items of the query history
    train_ks: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32, 64)  # demonstrations per training prompt
    kind_probs: tuple[float, float, float] = (0.5, 0.3, 0.2)  # transition, random, corrupted demonstrations
    n_negatives: int = 19  # uniform unseen negatives per training query (as in evaluation)
    copy_share: float = 0.25  # share of training batches from a synthetic successor world (teaches reading)
    copy_warmup: int = 300  # first steps on the successor world only, k ≤ 4 (a curriculum: reading first)
    steps: int = 1500
    batch: int = 32
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    checkpoint_every: int = 250  # steps between resumable checkpoints
    threads: int = 1  # torch threads while training; one was faster than two on 2 shared cores (benchmarks)
    eval_ks: tuple[int, ...] = (4, 16, 64)  # demonstrations at evaluation (k = 0 always runs)
    eval_datasets: tuple[str, ...] = ("ml-100k", "amazon-beauty")  # a training and a held-out catalogue
    eval_selectors: tuple[str, ...] = ("recent", "random")  # similarity at full
    models: tuple[str, ...] = ("trained:reader-anon",)  # the designs trained and compared in chapter 2b
    dual_users: int = 40  # held-out users of the dual view and the Effect_D study (§2b.5)
    dual_demos: int = 30  # candidate demonstrations per user in the Effect_D study
    n_users: int | None = 400  # evaluated users per dataset (the reader scores a user in one pass)
    n_valid_users: int | None = 200  # validation users per dataset (where the selector and k are chosen)

    def validate(self) -> ReaderSizes:
        if self.hidden % self.heads or (self.hidden // self.heads) % 2:
            raise ConfigError(
                f"reader.heads={self.heads} must divide hidden={self.hidden} into an even head dimension"
            )
        p = np.asarray(self.kind_probs, dtype=float)
        if p.shape != (3,) or (p < 0).any() or not math.isclose(p.sum(), 1.0, abs_tol=1e-9):
            raise ConfigError(
                f"reader.kind_probs={self.kind_probs} must be 3 non-negative numbers summing to 1"
            )
        if not 0 <= self.copy_share < 1:
            raise ConfigError(f"reader.copy_share must lie in [0, 1), got {self.copy_share}")
        if self.copy_warmup and not self.copy_share:
            raise ConfigError("reader.copy_warmup needs copy_share > 0 (the successor world it trains on)")
        if not 0 <= self.heldout_user_share < 1:
            raise ConfigError(f"reader.heldout_user_share must lie in [0, 1), got {self.heldout_user_share}")
        longest = max(self.train_ks + self.eval_ks) * (self.demo_history + 1) + self.query_len
        if self.n_tags < longest + self.n_negatives + 1:
            raise ConfigError(
                f"reader.n_tags={self.n_tags} is fewer than the distinct items of the longest prompt "
                f"({longest + self.n_negatives + 1}); raise n_tags or lower the largest k"
            )
        return self


@dataclass(frozen=True)
class ItemIdSizes:
    """Chapter 2b: the item-id sequential recommender (SASRec-style causal transformer), k = 0."""

    datasets: tuple[str, ...] = ("ml-100k", "amazon-beauty")  # Beauty: the published SASRec comparison
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.2
    epochs: int = 6  # the epoch kept is the best on validation users
    batch: int = 128
    lr: float = 1e-3
    negatives: int = 256  # sampled-softmax negatives shared by a batch (0: full softmax)
    threads: int = 1  # one thread measured faster than two on 2 busy cores

    def validate(self) -> ItemIdSizes:
        if self.hidden % self.heads:
            raise ConfigError(f"itemid.heads={self.heads} must divide hidden={self.hidden}")
        if min(self.layers, self.max_len, self.epochs, self.batch) < 1:
            raise ConfigError("itemid layers, max_len, epochs and batch must be ≥ 1")
        return self


@dataclass(frozen=True)
class RobustSizes:
    """Chapter 4: robustness and the two-stage optimiser on testbed B (and the reader's perturbation curve).

    Testbed B is refit for selection (``n_valid_next`` validation next items per user from the user's own
    taste, ``user_noise``); the decoder of chapter 1b reads it (same items and groups).
    """

    n_valid_next: int = 4  # validation next items per user: the first half trains stage 2, the rest stop it
    user_noise: float = 0.3  # users differ within a group (chapter 1b: 0)
    n_users: int = 150  # test users (each with its own validation items)
    n_pool: int = 24  # candidate demonstrations (shared pool)
    pool_kinds: tuple[tuple[str, float], ...] = (
        ("same", 0.55),
        ("flipped", 0.15),
        ("popular", 0.15),
        ("corrupted", 0.15),
    )  # kinds of the pool (own group = same)
    k: int = 4  # demonstrations per prompt
    pair_users: int = 60  # users of the pair-interaction study
    variant_users: int = 100  # users of the Effect_D variants study (§4.2; pool: effect.testbed_pool)
    perturbations: tuple[str, ...] = ("flip_next", "random", "shuffle")  # test-time noise on demonstrations
    rates: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    robust_perturbation: str = "random"  # the perturbation the robust score averages over
    robust_rate: float = 0.5
    n_copies: int = 4  # perturbed copies R per demonstration in the robust score
    lams: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)  # λ swept for the trade-off curve (the first: plain)
    lam: float = 1.0  # λ of the robust selector in the tables
    mus: tuple[float, ...] = (0.0, 4.0, 16.0, 64.0)  # μ of Eq. (R1)'s step term swept (the first: 0)
    kl_eps: tuple[float, ...] = (0.1, 0.3)  # KL trust-region radii ε swept for stage 2 (∞ is added)
    sweep_users: int = 40  # test users of the stage-2 μ and ε sweeps (the first ones)
    max_iters: int = 6  # stage-2 iterations
    patience: int = 1  # early stopping on the held-out validation items
    max_swaps: int = 2  # trust region: members that may differ from the stage-1 set
    eras: int = 3  # calendar eras of the drift study
    era_gap: int = 6  # time steps between eras
    drift: float = 0.25  # drift of the drift study's world (chapter 1b: 0)
    reader_dataset: str = "ml-100k"  # the reader's perturbation curve (real data)
    reader_users: int = 200
    reader_k: int = 64  # the k chosen on validation users in chapter 2b (recent)
    reader_rates: tuple[float, ...] = (0.0, 0.5, 1.0)
    # §4.7 also perturbs the first LLM's demonstrations (prefix ``reader_``: §4.7's study, not the testbed's)
    reader_llm_dataset: str = "amazon-games"  # a dataset where chapter 2 ran the LLM with demonstrations
    reader_llm_base: str = "random"  # the selector whose demonstrations are perturbed (chapter 2's row)
    reader_llm_users: int | None = 10  # first test users (chapter 2's: its clean and k = 0 runs are reused)
    reader_llm_perturbations: tuple[str, ...] = ("flip_next",)  # each at rate 1 (lrgd.robust.selectors)
    # §4.6b adapting over time on real data: calendar windows of a timestamped dataset (lrgd.robust.windows)
    drift_dataset: str = "ml-100k"  # the only dataset with timestamps
    drift_windows: int = 4  # equal-count windows of the users' test-item times
    drift_k: int = 8  # demonstrations in the global set
    drift_pool: int = 12  # candidate demonstrations drawn from each window's transitions
    drift_valid_users: int = 24  # validation users per window: half train stage 2, half hold out
    drift_test_users: int = 60  # test users per window (never validation users or demonstration sources)
    drift_max_iters: int = 4  # stage-2 iterations per window
    drift_max_moves: int = 24  # swaps sampled per iteration
    drift_patience: int = 1  # early stopping on the window's held-out validation users
    # §4.8 the optimiser on real data (`python -m lrgd optimize` defaults; lrgd.robust.runner_objective)
    opt_k: int = 8  # demonstrations in the global set
    opt_pool: int = 40  # candidate demonstrations M
    opt_valid_users: int = 60  # validation users: half train stage 2, half hold out (early stopping)
    opt_test_users: int = 200  # test users scored (never validation users or demonstration sources)
    opt_max_iters: int = 6  # stage-2 iterations
    opt_max_moves: int = 48  # swaps sampled per iteration
    opt_patience: int = 2  # early stopping on the held-out validation users

    def validate(self) -> RobustSizes:
        if self.n_valid_next < 2:
            raise ConfigError(
                f"robust.n_valid_next must be ≥ 2 (train and held-out halves), got {self.n_valid_next}"
            )
        if not 1 <= self.k < self.n_pool:
            raise ConfigError(f"robust.k must lie in [1, n_pool={self.n_pool}), got {self.k}")
        if self.lam not in self.lams:
            raise ConfigError(f"robust.lam={self.lam} must be one of robust.lams={self.lams}")
        if any(not 0 <= r <= 1 for r in (*self.rates, *self.reader_rates, self.robust_rate)):
            raise ConfigError("robust rates must lie in [0, 1]")
        if not self.mus or self.mus[0] != 0.0 or any(not 0 <= m < math.inf for m in self.mus):
            raise ConfigError(f"robust.mus must start with 0.0 and hold finite values ≥ 0, got {self.mus}")
        if not self.kl_eps or any(not 0 < e < math.inf for e in self.kl_eps):
            raise ConfigError(f"robust.kl_eps must hold finite values > 0 (∞ is added), got {self.kl_eps}")
        if self.sweep_users < 1:
            raise ConfigError(f"robust.sweep_users must be ≥ 1, got {self.sweep_users}")
        if self.reader_llm_users is not None and self.reader_llm_users < 1:
            raise ConfigError(f"robust.reader_llm_users must be ≥ 1 or None, got {self.reader_llm_users}")
        if not self.reader_llm_perturbations:
            raise ConfigError("robust.reader_llm_perturbations must name at least one perturbation")
        if min(self.n_users, self.pair_users, self.n_copies, self.eras, self.max_iters) < 1:
            raise ConfigError("robust sizes (users, copies, eras, iterations) must be ≥ 1")
        return self


@dataclass(frozen=True)
class GridSizes:
    """Chapter 6: the main results tables (:mod:`lrgd.grid`) — one table per dataset, one row per
    (model, method), every row on the same first ``n_users`` test users and the same candidates.

    ``ci`` repeats the conditions chapters 2, 2b and 3 already ran at ``ci`` (their cache serves them);
    ``full`` is the published grid (committed under ``results/full/grid/``).
    """

    datasets: tuple[str, ...] = _TABLE  # one table each
    models: tuple[str, ...] = ("smollm2-135m",)  # LLMs, side by side (the first runs every method)
    llm_methods: tuple[str, ...] = ("zero-shot", "random", "similarity")  # demonstration selectors
    other_model_methods: tuple[str, ...] = ("zero-shot", "random")  # methods of the models after the first
    effect_methods: tuple[str, ...] = ("effect", "effect-global")  # Effect_D selectors (first model only)
    effect_datasets: tuple[str, ...] = ("amazon-games",)  # where the Effect_D rows run (chapter 3's dataset)
    icl_datasets: tuple[str, ...] | None = ("amazon-games", "ml-100k")  # where k > 0 rows run (None: all)
    k: int = 2  # demonstrations of the LLM rows
    n_users: int | None = 10  # test users per table (the first of the seeded order; None: all)
    references: tuple[str, ...] = ("ref-popularity", "ref-bm25", "ref-markov")
    reader: str | None = "trained:reader-anon"  # chapter 2b's model at k = 0 and its best (selector, k)
    reader_datasets: tuple[str, ...] = ("ml-100k", "amazon-beauty")
    #: rows of the reader's own Effect_D selectors, plain and robust (reader-effect, reader-robust-effect)
    reader_effect_k: int | None = None
    #: a row of the two-stage optimiser's global set for the reader (selector ``two-stage``, k and sizes
    #: from ``.robust.opt_*``); it needs ``n_users`` test users kept out of its validation users, so none
    #: runs when ``n_users`` is None (every user is a test user)
    reader_two_stage: bool = False

    def validate(self) -> GridSizes:
        if not self.datasets or not self.models:
            raise ConfigError("grid.datasets and grid.models must each name at least one")
        if self.k < 1:
            raise ConfigError(f"grid.k must be ≥ 1 (zero-shot rows use k = 0), got {self.k}")
        if self.n_users is not None and self.n_users < 1:
            raise ConfigError(f"grid.n_users must be ≥ 1 or None (all), got {self.n_users}")
        if self.reader_effect_k is not None and self.reader_effect_k < 1:
            raise ConfigError(
                f"grid.reader_effect_k must be ≥ 1 or None (no row), got {self.reader_effect_k}"
            )
        return self


SECTIONS = (
    "equivalence",
    "regression",
    "world",
    "decoder",
    "eval",
    "effect",
    "ceiling",
    "reader",
    "itemid",
    "robust",
    "grid",
)


@dataclass(frozen=True)
class Profile:
    """All sizes of one profile, one frozen section per concern (see the module docstring)."""

    name: str
    equivalence: EquivalenceSizes = EquivalenceSizes()
    regression: RegressionSizes = RegressionSizes()
    world: WorldConfig = WorldConfig()
    decoder: DecoderSizes = DecoderSizes()
    eval: EvalSizes = EvalSizes()
    effect: EffectSizes = EffectSizes()
    ceiling: CeilingSizes = CeilingSizes()
    reader: ReaderSizes = ReaderSizes()
    itemid: ItemIdSizes = ItemIdSizes()
    robust: RobustSizes = RobustSizes()
    grid: GridSizes = GridSizes()

    def section(self, name: str, **overrides):
        """Section ``name`` with ``overrides`` applied and validated (a :class:`ConfigError` names an
        unknown section or field and lists the valid ones)."""
        if name not in SECTIONS:
            raise ConfigError(f"unknown profile section {name!r}; choose one of {', '.join(SECTIONS)}")
        sec = getattr(self, name)
        valid = {f.name for f in fields(sec)}
        bad = set(overrides) - valid
        if bad:
            raise ConfigError(f"unknown {name} option(s) {sorted(bad)}; valid: {sorted(valid)}")
        return replace(sec, **overrides).validate()


_FULL_SELECTORS = ("recent", "similarity", "random", "popular")  # chapter 2b's ceiling at full and gpu
_FULL_KS = (1, 2, 4, 8, 16, 32, 64)
_FULL_FEATURES = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
#: test users of every LLM table at ``full`` (chapter 2's tables and chapter 6's grid share these runs:
#: a runner record is keyed without its user count, so the chapter reads the grid's users)
_FULL_USERS = 200
_PROFILES = {
    "ci": Profile("ci"),
    "full": Profile(
        "full",
        equivalence=EquivalenceSizes(200, _FULL_FEATURES, 32, 32, 20, 2),
        regression=RegressionSizes(depths=(1, 2, 3), steps=8000, deep_steps=20000, deep_lr=1e-3,
                                   eval_tasks=8000),
        decoder=DecoderSizes(hidden=96, layers=3, heads=6, kv_heads=2, intermediate=256, steps=12000,
                             eval_queries=4000, dual_prompts=32),
        eval=EvalSizes(n_users=_FULL_USERS, n_valid_users=50, valid_datasets=_TABLE, similarity_pool=5000,
                       table_methods=_ALL_SELECTORS, icl_datasets=_TABLE, curve_method="similarity",
                       curve_users=_FULL_USERS, bias_users=100, generate_users=50),
        effect=EffectSizes(n_demos=25, n_users=25, testbed_queries=1000, testbed_pool=48, select_pool=100),
        ceiling=CeilingSizes(selectors=_FULL_SELECTORS, ks=_FULL_KS,
                             n_users=1000, n_valid_users=500),
        reader=ReaderSizes(train_datasets=("ml-100k", "amazon-beauty", "amazon-toys", "amazon-scientific"),
                           steps=12000, batch=64, n_users=1000, n_valid_users=500, eval_ks=_FULL_KS,
                           dual_users=200, dual_demos=50,
                           eval_selectors=("recent", "similarity", "random"),
                           eval_datasets=("ml-100k", "amazon-beauty", "amazon-games"),
                           models=("trained:reader-anon", "trained:reader", "trained:reader-anon-nopointer")),
        itemid=ItemIdSizes(datasets=_ALL_DATASETS, epochs=100),
        robust=RobustSizes(n_users=1000, n_pool=48, pair_users=200, variant_users=500, n_copies=8, eras=6,
                           mus=(0.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0), kl_eps=(0.05, 0.1, 0.2, 0.3, 0.5, 1.0),
                           sweep_users=300, reader_users=1000,
                           reader_rates=(0.0, 0.25, 0.5, 0.75, 1.0),
                           reader_llm_dataset="amazon-beauty", reader_llm_users=_FULL_USERS,
                           reader_llm_perturbations=("flip_next", "random"),
                           drift_windows=8, drift_k=8, drift_pool=16, drift_valid_users=30,
                           drift_test_users=60, drift_max_iters=6, drift_max_moves=48, drift_patience=2,
                           opt_pool=80, opt_valid_users=200, opt_test_users=700, opt_max_iters=10,
                           opt_max_moves=96),
        grid=GridSizes(datasets=_ALL_DATASETS, models=("smollm2-135m", "gemma3-270m"),
                       llm_methods=_ALL_SELECTORS, other_model_methods=("zero-shot",),
                       effect_datasets=("amazon-games", "ml-100k"), icl_datasets=None,
                       n_users=_FULL_USERS, reader_datasets=_ALL_DATASETS, reader_effect_k=16,
                       reader_two_stage=True),
    ),
    "gpu": Profile(
        "gpu",
        equivalence=EquivalenceSizes(200, _FULL_FEATURES, 32, 128, 20, 2),
        regression=RegressionSizes(depths=(1, 2, 3), steps=10000, deep_steps=30000, deep_lr=1e-3, batch=512,
                                   eval_tasks=20000),
        world=WorldConfig(n_items=192, n_clusters=6, groups_per_cluster=4, latent_dim=12, k_max=8),
        decoder=DecoderSizes(hidden=256, layers=4, heads=8, kv_heads=4, intermediate=768, steps=30000,
                             batch=256, eval_queries=10000, dual_prompts=64),
        eval=EvalSizes(n_users=None, n_valid_users=1000, valid_datasets=_TABLE, similarity_pool=50000,
                       table_methods=_ALL_SELECTORS, icl_datasets=_TABLE, curve_method="similarity",
                       curve_ks=(0, 1, 2, 4, 8), curve_users=5000, bias_users=2000, generate_users=500,
                       score_mode="batched", score_tokens=8192),
        effect=EffectSizes(n_demos=50, n_users=50, testbed_queries=2000, testbed_pool=64, select_pool=300),
        ceiling=CeilingSizes(selectors=_FULL_SELECTORS, ks=_FULL_KS,
                             n_users=None, n_valid_users=1000),
        reader=ReaderSizes(train_datasets=("ml-100k", "amazon-beauty", "amazon-toys", "amazon-scientific"),
                           hidden=256, layers=4, heads=8, intermediate=768, steps=50000, batch=128,
                           n_users=None, n_valid_users=None, eval_ks=_FULL_KS,
                           eval_selectors=("recent", "similarity", "random"),
                           eval_datasets=("ml-100k", "amazon-beauty", "amazon-toys", "amazon-games"),
                           models=("trained:reader-anon", "trained:reader", "trained:reader-anon-nopointer")),
        itemid=ItemIdSizes(datasets=_ALL_DATASETS, hidden=128, epochs=200, batch=256),
        robust=RobustSizes(n_users=4000, n_pool=64, pair_users=500, variant_users=2000, n_copies=16, eras=8,
                           mus=(0.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0), kl_eps=(0.05, 0.1, 0.2, 0.3, 0.5, 1.0),
                           sweep_users=1000, reader_users=5000,
                           reader_rates=(0.0, 0.25, 0.5, 0.75, 1.0),
                           reader_llm_dataset="amazon-beauty", reader_llm_users=None,
                           reader_llm_perturbations=("flip_next", "random"),
                           drift_windows=8, drift_k=8, drift_pool=24, drift_valid_users=30,
                           drift_test_users=70, drift_max_iters=10, drift_max_moves=96, drift_patience=2,
                           opt_pool=120, opt_valid_users=300, opt_test_users=600, opt_max_iters=15,
                           opt_max_moves=192),
        grid=GridSizes(datasets=_ALL_DATASETS, models=("smollm2-135m", "gemma3-270m"),
                       llm_methods=_ALL_SELECTORS, other_model_methods=_ALL_SELECTORS,
                       effect_datasets=_ALL_DATASETS, icl_datasets=None, n_users=None,
                       reader_datasets=_ALL_DATASETS),
    ),
}  # fmt: skip


def get_profile(name: str | None = None) -> Profile:
    """Return the profile called ``name`` (``ci`` | ``full`` | ``gpu``).

    ``None`` takes ``$LRGD_PROFILE`` or ``ci``.
    """
    name = name or os.environ.get("LRGD_PROFILE", "ci")
    if name not in _PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return _PROFILES[name]


def resolve_device(device: str = "auto") -> str:
    """Map ``auto`` to ``cuda`` when a GPU is visible, else ``cpu``; validate the rest."""
    import torch

    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but torch sees no GPU; use device='cpu' or 'auto'")
    return device


def resolve_dtype(dtype: str = "auto", device: str = "cpu") -> str:
    """Map ``auto`` to ``bfloat16`` on ``cuda`` and ``float32`` elsewhere (``device`` already resolved);
    validate the rest. The dtype enters the key of every LLM result (:meth:`lrgd.rec.runner.Runner.key`)."""
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return "bfloat16" if device == "cuda" else "float32"
    return dtype


def scheduler_address() -> str | None:
    """``$LRGD_SCHEDULER``, the address of a running dask scheduler (``tcp://host:8786``), or ``None`` when
    it is unset or empty (:func:`lrgd.grid.run_grid` then starts a local cluster)."""
    return os.environ.get("LRGD_SCHEDULER", "").strip() or None


def cache_dir() -> Path:
    """Folder for converted models and trained weights (created on demand)."""
    env = os.environ.get("LRGD_CACHE")
    if env:
        path = Path(env).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        path = base / "lrgd"
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_roots() -> list[Path]:
    """Dataset roots in search order: ``$LRGD_DATA_DIR`` alone when it is set (no fallback, so a typo
    cannot silently read another copy of the data), else ``data/`` then ``../shared/data``."""
    env = os.environ.get("LRGD_DATA_DIR")
    if env:
        return [Path(env).expanduser()]
    return [REPO_ROOT / "data", REPO_ROOT.parent / "shared" / "data"]


def find_dataset_dir(name: str) -> Path:
    """Return the first ``<root>/<name>`` folder of :func:`data_roots`, or raise a one-line
    :class:`DataError` naming the folder(s) looked in and the fix."""
    env = os.environ.get("LRGD_DATA_DIR")
    tried = [root / name for root in data_roots()]
    for path in tried:
        if path.is_dir():
            return path
    if env:
        root = data_roots()[0]
        where = f"{root} does not exist" if not root.is_dir() else f"{tried[0]} is not a folder"
        raise DataError(
            f"dataset {name!r} not found: LRGD_DATA_DIR={env} but {where}; set LRGD_DATA_DIR to the "
            f"folder holding {name}/ (or unset it to search data/ and ../shared/data); "
            "data/README.md says where to obtain each dataset"
        )
    raise DataError(
        f"dataset {name!r} not found in {' or '.join(str(p) for p in tried)}; set LRGD_DATA_DIR to the "
        f"folder holding {name}/; data/README.md says where to obtain each dataset"
    )


def results_dir(profile: str) -> Path:
    """``results/<profile>/`` (created on demand)."""
    path = REPO_ROOT / "results" / get_profile(profile).name
    path.mkdir(parents=True, exist_ok=True)
    return path
