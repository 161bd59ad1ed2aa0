"""Testbed B: an in-context recommendation world whose preferences are known (chapter 1b).

Generative model (our design, written for this book):

* ``n_items`` items with latent vectors ``v_i`` ∈ R^r and a popularity bias ``b_i``;
* taste *groups* ``g`` with preference vectors ``u_g``. Groups come in *clusters* whose members share
  a centre: ``u_g = c_{cluster(g)} + spread · δ_g``. A short history tells the cluster, not the group;
* a user of group ``g`` has ``u = u_g + user_noise · ε`` and, with drift, ``u(t) = u + drift · t · a_g``;
* the items of a sequence are drawn independently given the time step ``t``. A *next* item (a
  demonstration's answer, the query's target) follows the user's own taste, a *history* item a taste
  pulled towards the cluster centre ``c``, ``u_hist = c + s (u − c)`` with s = ``history_specificity``:

  p(i | u, t) = softmax_i( v_iᵀ u(t) / τ + b_i ).                                   (B1)

  So a short history tells the cluster and only a little about the group; demonstrations from the same
  group show the group's next items — they are worth reading.

A *prompt* is ``k`` demonstrations (another user's history → next item), then the query user's
history; the model must rank a candidate set (the target plus uniform negatives) for the query's next
item. Each demonstration is of one *kind*: ``same`` (a user of the query's group), ``other`` (a user of a
uniformly drawn other group) or ``corrupted`` (uniformly random items). In training the kinds are drawn
i.i.d. with probabilities ``kind_probs``; the Bayes observer knows that prior.

Bayes ceilings (exact when ``user_noise == 0``; otherwise group-level approximations):

* *oracle*: rank by p(i | true u, t) — the best any method can do;
* *observed-token Bayes*: p(i | tokens) = Σ_g p(g | tokens) p(i | g, t) with

  p(g | tokens) ∝ p(history | g)
                  · Π_j [p_s p(d_j | g) + p_o mean_{g'≠g} p(d_j | g') + p_c n_items^{-|d_j|}].     (B2)

  Ranking candidates by it maximises expected HR@K and NDCG@K given the tokens, because negatives are
  uniform (so p(target = c | candidate set) ∝ p(c | tokens)) and the NDCG gain falls with rank.

A demonstration's *true usefulness* is its pointwise information about the query's group,
``log p(g* | history, d_j) − log p(g* | history)`` under (B2), in nats.

Options for demonstration selection (chapter 4; our design, every one off by default, so that the
defaults draw exactly what chapter 1b drew):

* *Calendar time.* A sequence starts at a global time ``t0`` (an argument of :meth:`RecWorld.sample_queries`,
  :meth:`RecWorld.sample_demos`, :meth:`RecWorld.sample_prompts`; default 0) and its item at position s
  sits at t = t0 + s, so drift acts across users: ``u(t) = u + drift · t · a_g`` with the calendar time t.
  Demonstrations from era A (``t0 = T_A``) and queries from era B (``t0 = T_B``) are possible. The
  observer reads ``Demos.t0`` and ``Queries.t0``, which the samplers set.
* *Validation next items.* With ``n_valid_next`` = V > 0 a query user's sequence is

  h_1 … h_Lh (history, taste pulled to the cluster) · v_1 … v_V (own taste) · target (own taste),

  at times t0 … t0 + Lh − 1, t0 + Lh … t0 + Lh + V − 1 and t0 + Lh + V:

  v_j ~ p(i | u, t0 + Lh + j − 1) = softmax_i( v_iᵀ u(t) / τ + b_i ),                 (B3)

  the target's law at an earlier time step. ``Queries.valid`` [n, V] holds them; they are not in the
  prompt. A method that selects demonstrations may read ``valid`` (e.g. through
  :meth:`RecWorld.validation_queries`), never ``target``. :meth:`RecWorld.validation_usefulness` and
  :meth:`RecWorld.item_group_information` measure what one such item tells about the group.
* *Noise kinds the observer knows* (:data:`NOISE_KINDS`), with their likelihood given the query group g:

  - ``flipped``: a real demonstration of a user of g whose next item is replaced by a uniform item,
    p(d | g) = p_hist(h | g) · n_items^{-1};
  - ``popular``: every item from the popularity-only law π = softmax(b),  p(d | g) = Π_t π(d_t);
  - ``cluster``: a user of a uniformly drawn *other group of g's cluster* C(g),
    p(d | g) = mean_{g' ∈ C(g), g' ≠ g} p(d | g').

  With a kind prior p_κ over :data:`ALL_KINDS` = :data:`KINDS` + :data:`NOISE_KINDS` (codes 0 … 5;
  :data:`KINDS` stays the training prior's three) the bracket of (B2) becomes

  p(d_j | g) = Σ_κ p_κ p(d_j | g, κ)                                                      (B4)

  (exact when ``user_noise == 0``, a group-level approximation otherwise, like (B2)).

* *The observer for the condition tested.* The *training-prior* observer (``kind_probs=None``) uses the
  world's ``kind_probs`` over same/other/corrupted, the prior the decoder was trained under. The
  *condition-aware* observer uses the kind distribution of the condition being tested:
  ``bayes_scores(batch, kind_probs="condition")`` (or ``kind_probs=condition_prior(batch.demos)``,
  the empirical kind shares of the batch's demonstrations, treated as an i.i.d. prior per
  demonstration), or any prior as a dict ``{kind: probability}`` or a vector over :data:`ALL_KINDS`.
  Only the condition-aware observer is the Bayes ceiling of a condition off the training prior.

Ranks, HR@K, NDCG@K and bootstrap CIs come from :mod:`lrgd.metrics` (the library's one tie convention;
the scores here are continuous, so ties are practically absent); :func:`ranking_metrics` only adapts
the world's score arrays [n, C], whose column 0 is the target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from lrgd.config import N_WORLD_SPECIALS, WorldConfig
from lrgd.errors import ConfigError
from lrgd.metrics import bootstrap_ci, per_user_metrics, ranks_of_targets

#: the kinds of the training prior ``WorldConfig.kind_probs`` (chapters 1b and 3)
KINDS = ("same", "other", "corrupted")
#: demonstration noise the observer also knows (chapter 4), Eq. (B4)
NOISE_KINDS = ("flipped", "popular", "cluster")
ALL_KINDS = KINDS + NOISE_KINDS
SAME, OTHER, CORRUPTED = 0, 1, 2
FLIPPED, POPULAR, CLUSTER = 3, 4, 5

# token ids of the tiny decoder's vocabulary: specials first, then items
BOS, SEP, ARROW, QUERY = 0, 1, 2, 3
SPECIALS = ("<bos>", "<sep>", "->", "<query>")
N_SPECIAL = len(SPECIALS)
assert N_SPECIAL == N_WORLD_SPECIALS  # WorldConfig.vocab_size counts them


# ----------------------------------------------------------------------------- containers


@dataclass
class Queries:
    """``n`` query users: group, true preference, history, validation next items, target and candidates
    (target in column 0). Time steps: history t0 … t0 + Lh − 1, ``valid`` t0 + Lh …, target ``target_t``."""

    group: np.ndarray  # [n]
    pref: np.ndarray  # [n, r] the user's own preference u (before drift)
    history: np.ndarray  # [n, Lh] item ids
    target: np.ndarray  # [n]
    candidates: np.ndarray  # [n, C]; candidates[:, 0] == target
    t0: int = 0  # calendar time of history[:, 0]
    valid: np.ndarray | None = None  # [n, V] validation next items (own taste); None → [n, 0]

    def __post_init__(self):
        if self.valid is None:
            self.valid = np.zeros((len(self.group), 0), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.group)

    @property
    def target_t(self) -> int:
        """Calendar time of the target: t0 + Lh + V."""
        return self.t0 + self.history.shape[1] + self.valid.shape[1]


@dataclass
class Demos:
    """``k`` demonstrations for each of ``n`` prompts. ``group`` is −1 for corrupted and popular ones."""

    kind: np.ndarray  # [n, k] codes into ALL_KINDS (SAME, OTHER, CORRUPTED, FLIPPED, POPULAR, CLUSTER)
    group: np.ndarray  # [n, k]
    history: np.ndarray  # [n, k, Ld]
    next_item: np.ndarray  # [n, k]
    t0: int = 0  # calendar time of history[..., 0]; the next item sits at t0 + Ld

    @property
    def k(self) -> int:
        return self.kind.shape[1]

    def first(self, k: int) -> Demos:
        """The first ``k`` demonstrations of every prompt (nested prompts for sweeps over k)."""
        return Demos(self.kind[:, :k], self.group[:, :k], self.history[:, :k], self.next_item[:, :k], self.t0)

    def items(self) -> np.ndarray:
        """History and next item together: [n, k, Ld + 1]."""
        return np.concatenate([self.history, self.next_item[..., None]], axis=-1)


@dataclass
class PromptBatch:
    """``n`` prompts with the same number ``k`` of demonstrations (so the same token length)."""

    queries: Queries
    demos: Demos

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def k(self) -> int:
        return self.demos.k

    def tokens(self) -> np.ndarray:
        """Token ids [n, T]: BOS (h… → next SEP)×k QUERY h… →  (items shifted by ``N_SPECIAL``)."""
        n, k = len(self), self.k
        parts = [np.full((n, 1), BOS)]
        if k:
            d = np.concatenate(
                [
                    self.demos.history + N_SPECIAL,
                    np.full((n, k, 1), ARROW),
                    self.demos.next_item[..., None] + N_SPECIAL,
                    np.full((n, k, 1), SEP),
                ],
                axis=-1,
            )
            parts.append(d.reshape(n, -1))
        parts += [np.full((n, 1), QUERY), self.queries.history + N_SPECIAL, np.full((n, 1), ARROW)]
        return np.concatenate(parts, axis=1).astype(np.int64)

    def spans(self) -> dict[str, tuple[int, int]]:
        """Token span of every part, as :class:`lrgd.rec.prompts.Prompt` names them."""
        spans = {"instruction": (0, 1)}
        width = self.demos.history.shape[-1] + 3
        for j in range(self.k):
            spans[f"demo{j}"] = (1 + j * width, 1 + (j + 1) * width)
        start = 1 + self.k * width
        lh = self.queries.history.shape[1]
        spans["history"] = (start, start + 1 + lh)
        spans["answer"] = (start + 1 + lh, start + 2 + lh)
        return spans

    def prompt(self, i: int):
        """Prompt ``i`` as a :class:`lrgd.rec.prompts.Prompt` (for :mod:`lrgd.dual.equivalence`)."""
        from lrgd.rec.prompts import Prompt

        ids = self.tokens()[i]
        text = " ".join(SPECIALS[t] if t < N_SPECIAL else f"i{t - N_SPECIAL}" for t in ids)
        return Prompt(text, torch.as_tensor(ids), self.spans())


# ----------------------------------------------------------------------------- the world


def _logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    return x - _logsumexp(x)[..., None]


# ----------------------------------------------------------------------------- kinds and calendar time


def _check_time(t0, name: str = "t0") -> None:
    number = isinstance(t0, int | float | np.integer | np.floating) and not isinstance(t0, bool)
    if not number or not math.isfinite(t0):
        raise ConfigError(f"{name}={t0!r} must be a finite number (the calendar time of a sequence's start)")


def kind_prior(kind_probs, config: WorldConfig) -> np.ndarray:
    """A demonstration-kind prior as a vector over :data:`ALL_KINDS`: [len(ALL_KINDS)].

    ``kind_probs``: ``None`` (the training prior ``config.kind_probs``), a dict ``{kind name: p}``
    (missing kinds get 0) or a vector of 3 … len(ALL_KINDS) numbers in the order of :data:`ALL_KINDS`
    (missing trailing kinds get 0). It must be non-negative and sum to 1.
    """
    if kind_probs is None:
        kind_probs = config.kind_probs
    if isinstance(kind_probs, Mapping):
        bad = sorted(set(kind_probs) - set(ALL_KINDS))
        if bad:
            raise ConfigError(f"kind_probs names unknown kind(s) {bad}; choose from {ALL_KINDS}")
        kind_probs = [kind_probs.get(name, 0.0) for name in ALL_KINDS]
    try:
        p = np.asarray(kind_probs, dtype=float)
    except (TypeError, ValueError):
        p = np.full(0, np.nan)
    if p.ndim != 1 or not len(KINDS) <= len(p) <= len(ALL_KINDS):
        raise ConfigError(
            f"kind_probs={kind_probs!r} must be a dict over {ALL_KINDS} or a vector of "
            f"{len(KINDS)}..{len(ALL_KINDS)} probabilities in that order"
        )
    p = np.concatenate([p, np.zeros(len(ALL_KINDS) - len(p))])
    if not np.isfinite(p).all() or (p < 0).any() or not math.isclose(p.sum(), 1.0, abs_tol=1e-6):
        raise ConfigError(f"kind_probs={kind_probs!r} must be non-negative and sum to 1 (sum: {p.sum():.6g})")
    if p[CLUSTER] > 0 and config.groups_per_cluster < 2:
        raise ConfigError("kind 'cluster' needs groups_per_cluster ≥ 2 (a group with a cluster-mate)")
    return p


def condition_prior(demos: Demos | np.ndarray) -> np.ndarray:
    """The empirical kind distribution of the tested condition: [len(ALL_KINDS)].

    ``demos``: a :class:`Demos` or its kind codes [n, k]. The share of each kind among all its
    demonstrations — the prior of a condition whose demonstrations are drawn i.i.d. (for a design with a
    fixed number of each kind per prompt it is the matching i.i.d. approximation).
    """
    kind = np.asarray(demos.kind if isinstance(demos, Demos) else demos).reshape(-1)
    if kind.size == 0:
        raise ConfigError("condition_prior needs at least one demonstration (k ≥ 1)")
    _check_codes(kind)
    return np.bincount(kind, minlength=len(ALL_KINDS)) / kind.size


def _check_codes(kind: np.ndarray) -> None:
    if not kind.size:
        return
    if not np.issubdtype(kind.dtype, np.integer) or kind.min() < 0 or kind.max() >= len(ALL_KINDS):
        raise ConfigError(f"demonstration kind codes must be integers 0..{len(ALL_KINDS) - 1} ({ALL_KINDS})")


@dataclass
class RecWorld:
    """A sampled world: items, groups and the rules (B1)–(B2). Build it with :meth:`generate`."""

    config: WorldConfig
    seed: int
    item_vecs: np.ndarray  # [n_items, r]
    item_bias: np.ndarray  # [n_items]
    centres: np.ndarray  # [n_clusters, r]
    group_prefs: np.ndarray  # [G, r]
    drift_dirs: np.ndarray  # [G, r]
    cluster_of: np.ndarray  # [G]

    @classmethod
    def generate(cls, config: WorldConfig, seed: int = 0) -> RecWorld:
        """Draw items and groups from ``seed`` (same seed → identical world)."""
        cfg = config.validate()
        rng = np.random.default_rng([seed, 1729])
        r = cfg.latent_dim
        items = rng.standard_normal((cfg.n_items, r)) / math.sqrt(r)
        bias = cfg.popularity * rng.standard_normal(cfg.n_items)
        centres = cfg.cluster_scale * rng.standard_normal((cfg.n_clusters, r))
        cluster_of = np.repeat(np.arange(cfg.n_clusters), cfg.groups_per_cluster)
        prefs = centres[cluster_of] + cfg.group_spread * rng.standard_normal((cfg.n_groups, r))
        drift = rng.standard_normal((cfg.n_groups, r)) / math.sqrt(r)
        return cls(cfg, seed, items, bias, centres, prefs, drift, cluster_of)

    # ------------------------------------------------------------------ probabilities
    def logits(
        self, pref: np.ndarray, group: np.ndarray, t: np.ndarray | int, is_next: np.ndarray | bool
    ) -> np.ndarray:
        """Eq. (B1) logits → [..., n_items], broadcasting ``pref`` [..., r], ``group``, ``t`` and ``is_next``.

        A history item (``is_next`` False) sees the preference pulled towards the cluster centre,
        ``c + s (u − c)`` with s = ``history_specificity``; a next item sees ``u`` itself; drift adds
        ``drift · t · a_g``.
        """
        cfg = self.config
        group = np.asarray(group)
        t = np.asarray(t, dtype=float)
        is_next = np.asarray(is_next, dtype=bool)
        c = self.centres[self.cluster_of[group]]
        shape = np.broadcast_shapes(pref.shape[:-1], c.shape[:-1], t.shape, is_next.shape)
        s = np.where(is_next, 1.0, cfg.history_specificity)[..., None]
        u = c + s * (pref - c)
        if cfg.drift:
            u = u + cfg.drift * t[..., None] * self.drift_dirs[group]
        u = np.broadcast_to(u, (*shape, pref.shape[-1]))
        return u @ self.item_vecs.T / cfg.temperature + self.item_bias

    def group_log_probs(self, t: int = 0, is_next: bool = True) -> np.ndarray:
        """log p(i | g, t) for every group: [G, n_items] (``is_next=False``: a history position)."""
        g = np.arange(self.config.n_groups)
        return _log_softmax(self.logits(self.group_prefs, g, t, is_next))

    def _sequence_table(self, t0: int, length: int, ends_with_next: bool) -> np.ndarray:
        """log p(i | g) at each position of a sequence: [length, G, n_items]."""
        return np.stack(
            [self.group_log_probs(t0 + s, ends_with_next and s == length - 1) for s in range(length)]
        )

    # ------------------------------------------------------------------ sampling
    def _users(self, group: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pref = self.group_prefs[group]
        if self.config.user_noise:
            pref = pref + self.config.user_noise * rng.standard_normal(pref.shape)
        return pref

    def _sample_items(
        self,
        pref: np.ndarray,
        group: np.ndarray,
        t0: int,
        length: int,
        rng: np.random.Generator,
        n_next: int = 1,
    ) -> np.ndarray:
        """``length − n_next`` history items then ``n_next`` next items (own taste) for users ``pref``
        [m, r], the first at calendar time ``t0`` → [m, length]."""
        t = t0 + np.arange(length)
        is_next = np.arange(length) >= length - n_next
        logits = self.logits(pref[:, None, :], group[:, None], t[None, :], is_next[None, :])
        cdf = np.cumsum(np.exp(_log_softmax(logits)), axis=-1)  # [m, L, n_items]
        u = rng.random((*cdf.shape[:-1], 1)) * cdf[..., -1:]
        return np.minimum((cdf < u).sum(-1), self.config.n_items - 1)

    def _negatives(self, target: np.ndarray, n_neg: int, rng: np.random.Generator) -> np.ndarray:
        """``n_neg`` uniform negatives per row, without replacement, among the items ≠ target: [n, n_neg]."""
        n = len(target)
        noise = rng.random((n, self.config.n_items))
        noise[np.arange(n), target] = np.inf
        return np.argsort(noise, axis=1)[:, :n_neg]

    def sample_queries(
        self, n: int, rng: np.random.Generator, group: np.ndarray | None = None, t0: int = 0
    ) -> Queries:
        """``n`` query users (uniform groups unless given) with history, ``n_valid_next`` validation next
        items, target and candidates; the history starts at calendar time ``t0``."""
        cfg = self.config
        _check_time(t0)
        g = rng.integers(cfg.n_groups, size=n) if group is None else np.asarray(group)
        pref = self._users(g, rng)
        lh, v = cfg.history_len, cfg.n_valid_next
        seq = self._sample_items(pref, g, t0, lh + v + 1, rng, n_next=v + 1)
        target = seq[:, -1]
        cands = np.concatenate([target[:, None], self._negatives(target, cfg.n_candidates - 1, rng)], axis=1)
        return Queries(g, pref, seq[:, :lh], target, cands, t0, seq[:, lh : lh + v])

    def validation_queries(self, queries: Queries, j: int, rng: np.random.Generator) -> Queries:
        """The same users with their validation item ``j`` as the target (fresh uniform negatives) and the
        validation items before it as ``valid``; the held-out target is not used. So Bayes scores and
        prompts built from the result treat ``valid[:, j]`` (at time t0 + Lh + j) as the next item."""
        v = queries.valid.shape[1]
        if not 0 <= j < v:
            raise ConfigError(f"validation item j={j} does not exist; the queries hold {v} (n_valid_next)")
        target = queries.valid[:, j]
        neg = self._negatives(target, queries.candidates.shape[1] - 1, rng)
        cands = np.concatenate([target[:, None], neg], axis=1)
        return Queries(
            queries.group, queries.pref, queries.history, target, cands, queries.t0, queries.valid[:, :j]
        )

    def _kind_codes(self, kinds, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
        """``kinds`` of :meth:`sample_demos` → codes [n, k]."""
        if isinstance(kinds, str):
            if kinds == "mixed":
                return rng.choice(3, size=(n, k), p=np.asarray(self.config.kind_probs))
            if kinds in ALL_KINDS:
                return np.full((n, k), ALL_KINDS.index(kinds))
            raise ConfigError(f"unknown demonstration kind {kinds!r}; choose from {(*ALL_KINDS, 'mixed')}")
        if isinstance(kinds, Mapping):
            return rng.choice(len(ALL_KINDS), size=(n, k), p=kind_prior(kinds, self.config))
        kind = np.asarray(kinds)
        _check_codes(kind)
        return kind.astype(np.int64).reshape(n, k)

    def _cluster_mates(self, group: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A uniformly drawn other group of the same cluster for each entry of ``group``."""
        G = self.config.n_groups
        same = self.cluster_of[:, None] == self.cluster_of[None, :]
        mates = [np.flatnonzero(same[g] & (np.arange(G) != g)) for g in range(G)]
        count = np.array([len(m) for m in mates])
        if (count[group] == 0).any():
            raise ConfigError("kind 'cluster' needs groups_per_cluster ≥ 2 (a group with a cluster-mate)")
        table = np.zeros((G, max(count.max(), 1)), dtype=np.int64)
        for g, m in enumerate(mates):
            table[g, : len(m)] = m
        pick = np.floor(rng.random(group.shape) * count[group]).astype(np.int64)
        return table[group, pick]

    def sample_demos(
        self,
        query_group: np.ndarray,
        kinds: np.ndarray | str | Mapping,
        k: int,
        rng: np.random.Generator,
        t0: int = 0,
    ) -> Demos:
        """``k`` demonstrations per query, starting at calendar time ``t0``. ``kinds``: a name in
        :data:`ALL_KINDS`, ``"mixed"`` (the training prior), a dict ``{kind: probability}`` (i.i.d. kinds
        from that prior) or an int array [n, k] of codes."""
        cfg = self.config
        _check_time(t0)
        n = len(query_group)
        kind = self._kind_codes(kinds, n, k, rng)
        shift = rng.integers(1, cfg.n_groups, size=(n, k))
        group = np.where(kind == SAME, query_group[:, None], (query_group[:, None] + shift) % cfg.n_groups)
        group = np.where(kind == CORRUPTED, -1, group)
        # chapter-4 kinds: their draws come only when they occur, so older kinds draw as before
        group = np.where(kind == FLIPPED, query_group[:, None], group)
        group = np.where(kind == POPULAR, -1, group)
        if (kind == CLUSTER).any():
            mates = self._cluster_mates(np.broadcast_to(query_group[:, None], (n, k)), rng)
            group = np.where(kind == CLUSTER, mates, group)
        length = cfg.demo_history_len + 1
        flat_g, flat_kind = group.reshape(-1), kind.reshape(-1)
        real = flat_g >= 0
        seq = rng.integers(cfg.n_items, size=(n * k, length))  # corrupted: uniform items
        if real.any():
            pref = self._users(flat_g[real], rng)
            seq[real] = self._sample_items(pref, flat_g[real], t0, length, rng)
        flipped, popular = flat_kind == FLIPPED, flat_kind == POPULAR
        if flipped.any():
            seq[flipped, -1] = rng.integers(cfg.n_items, size=int(flipped.sum()))
        if popular.any():
            pi = np.exp(_log_softmax(self.item_bias))
            seq[popular] = rng.choice(cfg.n_items, size=(int(popular.sum()), length), p=pi / pi.sum())
        seq = seq.reshape(n, k, length)
        return Demos(kind, group, seq[..., :-1], seq[..., -1], t0)

    def sample_prompts(
        self,
        n: int,
        k: int,
        rng: np.random.Generator,
        kinds: np.ndarray | str | Mapping = "mixed",
        t0: int = 0,
        demo_t0: int | None = None,
    ) -> PromptBatch:
        """``n`` prompts with ``k`` demonstrations each, of the given kind(s); queries from calendar time
        ``t0``, demonstrations from ``demo_t0`` (default: the same era)."""
        q = self.sample_queries(n, rng, t0=t0)
        return PromptBatch(q, self.sample_demos(q.group, kinds, k, rng, t0 if demo_t0 is None else demo_t0))

    def with_demos(
        self,
        queries: Queries,
        k: int,
        kinds: np.ndarray | str | Mapping,
        rng: np.random.Generator,
        t0: int | None = None,
    ) -> PromptBatch:
        """The same queries with fresh demonstrations (paired comparisons across k and kinds), from
        calendar time ``t0`` (default: the queries' ``t0``)."""
        t0 = queries.t0 if t0 is None else t0
        return PromptBatch(queries, self.sample_demos(queries.group, kinds, k, rng, t0))

    # ------------------------------------------------------------------ Bayes
    def _loglik_groups(self, items: np.ndarray, t0: int, ends_with_next: bool) -> np.ndarray:
        """Σ_t log p(items[..., t] | g, t0 + t) for every group: [..., G]."""
        table = self._sequence_table(t0, items.shape[-1], ends_with_next).transpose(0, 2, 1)  # [L, n, G]
        return table[np.arange(items.shape[-1]), items].sum(-2)

    def kind_log_likelihoods(self, demos: Demos, kinds: tuple[str, ...] = ALL_KINDS) -> np.ndarray:
        """log p(d_j | query group g, kind κ) for each kind in ``kinds``, Eqs. (B2) and (B4):
        [n, k, G, len(kinds)]. −inf where a kind cannot produce d_j for g (``cluster`` without a mate)."""
        bad = sorted(set(kinds) - set(ALL_KINDS))
        if bad:
            raise ConfigError(f"unknown demonstration kind(s) {bad}; choose from {ALL_KINDS}")
        return np.stack([self._kind_loglik(demos, name, {}) for name in kinds], axis=-1)

    def _kind_loglik(self, demos: Demos, name: str, memo: dict) -> np.ndarray:
        """log p(d_j | g, kind ``name``): [n, k, G]; ``memo`` shares the per-group likelihood."""
        cfg = self.config
        items = demos.items()
        G = cfg.n_groups
        if "ll" not in memo and name in ("same", "other", "cluster"):
            memo["ll"] = self._loglik_groups(items, demos.t0, True)  # [n, k, G]
        if name == "same":
            return memo["ll"]
        if name == "other":  # mean over the G − 1 other groups
            others = np.where(np.eye(G, dtype=bool), -np.inf, memo["ll"][..., None, :])  # [n, k, G, G']
            return _logsumexp(others, -1) - math.log(G - 1)
        if name == "cluster":  # mean over the other groups of g's cluster (−inf without one)
            mate = (self.cluster_of[:, None] == self.cluster_of[None, :]) & ~np.eye(G, dtype=bool)
            others = np.where(mate, memo["ll"][..., None, :], -np.inf)
            with np.errstate(divide="ignore"):
                return _logsumexp(others, -1) - np.log(mate.sum(1))
        if name == "corrupted":
            return np.full((*items.shape[:-1], G), -items.shape[-1] * math.log(cfg.n_items))
        if name == "flipped":
            return self._loglik_groups(demos.history, demos.t0, False) - math.log(cfg.n_items)
        if name == "popular":
            lpi = _log_softmax(self.item_bias)
            return np.broadcast_to(lpi[items].sum(-1)[..., None], (*items.shape[:-1], G)).copy()
        raise ConfigError(f"unknown demonstration kind {name!r}; choose from {ALL_KINDS}")

    def _kind_probs(self, batch: PromptBatch, kind_probs) -> np.ndarray:
        if isinstance(kind_probs, str):
            if kind_probs != "condition":
                raise ConfigError(f"kind_probs={kind_probs!r}: the one name accepted is 'condition'")
            return kind_prior(condition_prior(batch.demos), self.config)
        return kind_prior(kind_probs, self.config)

    def demo_log_evidence(self, batch: PromptBatch, kind_probs=None) -> np.ndarray:
        """log p(d_j | query group g) under the kind prior, the bracket of Eqs. (B2)/(B4): [n, k, G].

        ``kind_probs``: ``None`` (the training prior), ``"condition"`` (:func:`condition_prior` of the
        batch) or a prior accepted by :func:`kind_prior`.
        """
        p = self._kind_probs(batch, kind_probs)
        memo: dict = {}

        def log(x: float) -> float:
            return math.log(x) if x > 0 else -math.inf

        # the training kinds always enter (as in chapter 1b); the chapter-4 kinds only when p_κ > 0
        names = [name for i, name in enumerate(ALL_KINDS) if i < len(KINDS) or p[i] > 0]
        terms = np.stack([log(p[ALL_KINDS.index(name)]) + self._kind_loglik(batch.demos, name, memo)
                          for name in names], axis=-1)  # fmt: skip
        return _logsumexp(terms, -1)

    def group_log_posterior(self, batch: PromptBatch, use_demos: bool = True, kind_probs=None) -> np.ndarray:
        """log p(g | observed tokens), Eq. (B2), uniform prior over groups: [n, G]."""
        q = batch.queries
        lp = self._loglik_groups(q.history, q.t0, False)
        if use_demos and batch.k:
            lp = lp + self.demo_log_evidence(batch, kind_probs).sum(1)
        return _log_softmax(lp)

    def bayes_scores(self, batch: PromptBatch, use_demos: bool = True, kind_probs=None) -> np.ndarray:
        """log p(candidate | tokens), the observed-token Bayes ranking: [n, C].

        ``kind_probs=None``: the *training-prior* observer; ``"condition"`` (or the tested condition's
        prior): the *condition-aware* observer, the Bayes ceiling of that condition.
        """
        q = batch.queries
        post = np.exp(self.group_log_posterior(batch, use_demos, kind_probs))  # [n, G]
        pred = post @ np.exp(self.group_log_probs(q.target_t, True))  # [n, n_items]
        return np.log(np.take_along_axis(pred, q.candidates, 1))

    def oracle_scores(self, batch: PromptBatch) -> np.ndarray:
        """log p(candidate | the query user's true preference): [n, C]."""
        q = batch.queries
        lp = _log_softmax(self.logits(q.pref, q.group, q.target_t, True))
        return np.take_along_axis(lp, q.candidates, 1)

    def popularity_scores(self, batch: PromptBatch) -> np.ndarray:
        """log of the group-averaged item distribution (what a model knows without any context)."""
        q = batch.queries
        pred = np.exp(self.group_log_probs(q.target_t, True)).mean(0)
        return np.log(pred[q.candidates])

    def demo_usefulness(self, batch: PromptBatch, kind_probs=None) -> np.ndarray:
        """Each demonstration's information about the query's true group, in nats: [n, k].

        ``log p(g* | history, d_j) − log p(g* | history)`` under Eq. (B2) (the other demonstrations
        are left out). Positive: the demonstration points to the right group.
        """
        q = batch.queries
        base = self._loglik_groups(q.history, q.t0, False)  # [n, G]
        ev = self.demo_log_evidence(batch, kind_probs)  # [n, k, G]
        idx = np.arange(len(q))
        before = _log_softmax(base)[idx, q.group]  # [n]
        after = _log_softmax(base[:, None, :] + ev)[idx, :, q.group]  # [n, k]
        return after - before[:, None]

    # ------------------------------------------------------------------ information (chapter 4)
    def item_group_information(self, t: int = 0, is_next: bool = True) -> float:
        """Mutual information I(g; i) in nats between a uniform group and one item at time ``t`` (a next
        item, or a history item with ``is_next=False``): H(mean_g p(·|g)) − mean_g H(p(·|g))."""
        lp = self.group_log_probs(t, is_next)  # [G, n_items]
        p = np.exp(lp)
        mix = p.mean(0)
        return float(-(mix * np.log(mix)).sum() + (p * lp).sum(1).mean())

    def validation_usefulness(self, queries: Queries) -> np.ndarray:
        """Each validation item's information about the user's true group, in nats: [n, V].

        ``log p(g* | history, v_j) − log p(g* | history)`` under the observer, column j (from 0) read as
        a next item at time t0 + Lh + j, Eq. (B3).
        """
        base = self._loglik_groups(queries.history, queries.t0, False)  # [n, G]
        lh, idx = queries.history.shape[1], np.arange(len(queries))
        before = _log_softmax(base)[idx, queries.group]
        out = np.zeros(queries.valid.shape)
        for j in range(queries.valid.shape[1]):
            lv = self.group_log_probs(queries.t0 + lh + j, True).T[queries.valid[:, j]]  # [n, G]
            out[:, j] = _log_softmax(base + lv)[idx, queries.group] - before
        return out


# ----------------------------------------------------------------------------- ranking and its summaries

#: bootstrap resamples of chapter 1b's confidence intervals
N_BOOT = 1000


def ranking_metrics(scores: np.ndarray, k: int = 10) -> dict[str, np.ndarray]:
    """Per-prompt HR@k and NDCG@k of the target, column 0 of ``scores`` [n, C]: arrays [n].

    With the 1-based rank r of :func:`lrgd.metrics.ranks_of_targets`: HR@k = [r ≤ k],
    NDCG@k = [r ≤ k] / log2(r + 1).
    """
    return per_user_metrics(ranks_of_targets(scores), (f"HR@{k}", f"NDCG@{k}"))


def icl_sweep(
    world: RecWorld,
    queries: Queries,
    scorers: dict,
    ks: tuple[int, ...],
    kinds: tuple[str, ...] = KINDS,
    seed: int = 0,
    top_k: int = 10,
) -> list[dict]:
    """Score the same queries with nested demonstrations (the first k of k_max) of each kind.

    ``scorers`` maps a name to ``f(PromptBatch) → scores [n, C]``. Returns one row per
    (scorer, kind, k) with per-prompt ``HR@top_k`` and ``NDCG@top_k`` arrays (paired across rows).
    """
    rows = []
    k_max = max(ks)
    for ki, kind in enumerate(kinds):
        rng = np.random.default_rng([seed, ki, 99])
        demos = world.sample_demos(queries.group, kind, k_max, rng, t0=queries.t0)  # the queries' era
        for k in ks:
            batch = PromptBatch(queries, demos.first(k))
            for name, fn in scorers.items():
                rows.append({"scorer": name, "kind": kind, "k": k, **ranking_metrics(fn(batch), top_k)})
    return rows


def sweep_summary(
    rows: list[dict], metrics: tuple[str, ...] = ("NDCG@10", "HR@10"), seed: int = 0, n_boot: int = N_BOOT
):
    """Rows of :func:`icl_sweep` → a DataFrame with, per (scorer, kind, k, metric), the mean over users
    with its bootstrap CI (``mean``, ``lo``, ``hi``) and the paired gain over the same users' k = 0
    ranking (``gain``, ``gain lo``, ``gain hi``)."""
    import pandas as pd

    per = {(r["scorer"], r["kind"], r["k"]): r for r in rows}
    out = []
    for r in rows:
        base = per[(r["scorer"], r["kind"], 0)]
        for m in metrics:
            mean, lo, hi = bootstrap_ci(r[m], n_boot=n_boot, seed=seed)
            g, glo, ghi = bootstrap_ci(r[m] - base[m], n_boot=n_boot, seed=seed)
            out.append(
                {"scorer": r["scorer"], "kind": r["kind"], "k": r["k"], "metric": m, "mean": mean, "lo": lo,
                 "hi": hi, "gain": g, "gain lo": glo, "gain hi": ghi}
            )  # fmt: skip
    return pd.DataFrame(out)


def sweep_row(sweep, scorer: str, kind: str, k: int, metric: str = "NDCG@10"):
    """The row of :func:`sweep_summary`'s table for (scorer, kind, k, metric) as a pandas Series."""
    sel = sweep[(sweep.scorer == scorer) & (sweep.kind == kind) & (sweep.k == k) & (sweep.metric == metric)]
    if len(sel) != 1:
        raise ConfigError(f"no single sweep row for {(scorer, kind, k, metric)}; the sweep has {len(sel)}")
    return sel.iloc[0]


def sweep_table(sweep, scorers: tuple[str, ...], metric: str = "NDCG@10"):
    """``metric``'s mean and gain over k = 0, each as "x [lo, hi]", per (kind, k) × scorer (a DataFrame)."""
    show = sweep[(sweep.metric == metric) & sweep.scorer.isin(scorers)].copy()

    def fmt(row, a: str, lo: str, hi: str) -> str:
        return f"{row[a]:.3f} [{row[lo]:.3f}, {row[hi]:.3f}]"

    show["mean [95% CI]"] = show.apply(fmt, axis=1, a="mean", lo="lo", hi="hi")
    show["gain vs k=0 [95% CI]"] = show.apply(fmt, axis=1, a="gain", lo="gain lo", hi="gain hi")
    values = ["mean [95% CI]", "gain vs k=0 [95% CI]"]
    return show.pivot_table(index=["kind", "k"], columns="scorer", values=values, aggfunc="first")


def usefulness_table(usefulness: np.ndarray, kind: np.ndarray, seed: int = 0, n_boot: int = N_BOOT):
    """Mean true usefulness (nats) of single demonstrations by kind, with its bootstrap CI and the share
    of demonstrations with positive usefulness. ``usefulness``, ``kind`` [n]. Returns a DataFrame
    indexed by :data:`KINDS` and the chapter-4 kinds that occur in ``kind``."""
    import pandas as pd

    codes = [k for k in range(len(ALL_KINDS)) if k < len(KINDS) or (kind == k).any()]
    cis = {ALL_KINDS[k]: bootstrap_ci(usefulness[kind == k], n_boot, seed) for k in codes}
    tab = pd.DataFrame({name: dict(zip(["mean", "CI low", "CI high"], ci)) for name, ci in cis.items()}).T
    tab["share > 0"] = [float((usefulness[kind == k] > 0).mean()) if (kind == k).any() else math.nan
                        for k in codes]  # fmt: skip
    return tab
