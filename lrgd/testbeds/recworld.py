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

Ranks, HR@K, NDCG@K and bootstrap CIs come from :mod:`lrgd.metrics` (the library's one tie convention;
the scores here are continuous, so ties are practically absent); :func:`ranking_metrics` only adapts
the world's score arrays [n, C], whose column 0 is the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lrgd.config import N_WORLD_SPECIALS, WorldConfig
from lrgd.errors import ConfigError
from lrgd.metrics import bootstrap_ci, per_user_metrics, ranks_of_targets

KINDS = ("same", "other", "corrupted")
SAME, OTHER, CORRUPTED = 0, 1, 2

# token ids of the tiny decoder's vocabulary: specials first, then items
BOS, SEP, ARROW, QUERY = 0, 1, 2, 3
SPECIALS = ("<bos>", "<sep>", "->", "<query>")
N_SPECIAL = len(SPECIALS)
assert N_SPECIAL == N_WORLD_SPECIALS  # WorldConfig.vocab_size counts them


# ----------------------------------------------------------------------------- containers


@dataclass
class Queries:
    """``n`` query users: group, true preference, history, target and candidates (target in column 0)."""

    group: np.ndarray  # [n]
    pref: np.ndarray  # [n, r] the user's own preference u (before drift)
    history: np.ndarray  # [n, Lh] item ids
    target: np.ndarray  # [n]
    candidates: np.ndarray  # [n, C]; candidates[:, 0] == target
    t0: int = 0  # time step of history[:, 0]; the target sits at t0 + Lh

    def __len__(self) -> int:
        return len(self.group)


@dataclass
class Demos:
    """``k`` demonstrations for each of ``n`` prompts. ``group`` is −1 for corrupted ones."""

    kind: np.ndarray  # [n, k] in {SAME, OTHER, CORRUPTED}
    group: np.ndarray  # [n, k]
    history: np.ndarray  # [n, k, Ld]
    next_item: np.ndarray  # [n, k]
    t0: int = 0

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
        self, pref: np.ndarray, group: np.ndarray, t0: int, length: int, rng: np.random.Generator
    ) -> np.ndarray:
        """``length − 1`` history items then one next item for users ``pref`` [m, r] → [m, length]."""
        t = t0 + np.arange(length)
        is_next = np.arange(length) == length - 1
        logits = self.logits(pref[:, None, :], group[:, None], t[None, :], is_next[None, :])
        cdf = np.cumsum(np.exp(_log_softmax(logits)), axis=-1)  # [m, L, n_items]
        u = rng.random((*cdf.shape[:-1], 1)) * cdf[..., -1:]
        return np.minimum((cdf < u).sum(-1), self.config.n_items - 1)

    def sample_queries(self, n: int, rng: np.random.Generator, group: np.ndarray | None = None) -> Queries:
        """``n`` query users (uniform groups unless given) with history, target and candidates."""
        cfg = self.config
        g = rng.integers(cfg.n_groups, size=n) if group is None else np.asarray(group)
        pref = self._users(g, rng)
        seq = self._sample_items(pref, g, 0, cfg.history_len + 1, rng)
        target = seq[:, -1]
        # negatives: uniform without replacement among the items ≠ target
        noise = rng.random((n, cfg.n_items))
        noise[np.arange(n), target] = np.inf
        neg = np.argsort(noise, axis=1)[:, : cfg.n_candidates - 1]
        cands = np.concatenate([target[:, None], neg], axis=1)
        return Queries(g, pref, seq[:, :-1], target, cands)

    def sample_demos(
        self, query_group: np.ndarray, kinds: np.ndarray | str, k: int, rng: np.random.Generator
    ) -> Demos:
        """``k`` demonstrations per query. ``kinds``: a name in :data:`KINDS`, ``"mixed"`` (training prior)
        or an int array [n, k]."""
        cfg = self.config
        n = len(query_group)
        if isinstance(kinds, str):
            if kinds == "mixed":
                kind = rng.choice(3, size=(n, k), p=np.asarray(cfg.kind_probs))
            elif kinds in KINDS:
                kind = np.full((n, k), KINDS.index(kinds))
            else:
                raise ConfigError(f"unknown demonstration kind {kinds!r}; choose from {(*KINDS, 'mixed')}")
        else:
            kind = np.asarray(kinds, dtype=np.int64).reshape(n, k)
        shift = rng.integers(1, cfg.n_groups, size=(n, k))
        group = np.where(kind == SAME, query_group[:, None], (query_group[:, None] + shift) % cfg.n_groups)
        group = np.where(kind == CORRUPTED, -1, group)
        length = cfg.demo_history_len + 1
        flat_g = group.reshape(-1)
        real = flat_g >= 0
        seq = rng.integers(cfg.n_items, size=(n * k, length))  # corrupted: uniform items
        if real.any():
            pref = self._users(flat_g[real], rng)
            seq[real] = self._sample_items(pref, flat_g[real], 0, length, rng)
        seq = seq.reshape(n, k, length)
        return Demos(kind, group, seq[..., :-1], seq[..., -1])

    def sample_prompts(
        self, n: int, k: int, rng: np.random.Generator, kinds: np.ndarray | str = "mixed"
    ) -> PromptBatch:
        """``n`` prompts with ``k`` demonstrations each, of the given kind(s)."""
        q = self.sample_queries(n, rng)
        return PromptBatch(q, self.sample_demos(q.group, kinds, k, rng))

    def with_demos(
        self, queries: Queries, k: int, kinds: np.ndarray | str, rng: np.random.Generator
    ) -> PromptBatch:
        """The same queries with fresh demonstrations (paired comparisons across k and kinds)."""
        return PromptBatch(queries, self.sample_demos(queries.group, kinds, k, rng))

    # ------------------------------------------------------------------ Bayes
    def _loglik_groups(self, items: np.ndarray, t0: int, ends_with_next: bool) -> np.ndarray:
        """Σ_t log p(items[..., t] | g, t0 + t) for every group: [..., G]."""
        table = self._sequence_table(t0, items.shape[-1], ends_with_next).transpose(0, 2, 1)  # [L, n, G]
        return table[np.arange(items.shape[-1]), items].sum(-2)

    def demo_log_evidence(self, batch: PromptBatch, kind_probs=None) -> np.ndarray:
        """log p(d_j | query group g) under the kind prior, the bracket of Eq. (B2): [n, k, G]."""
        cfg = self.config
        ps, po, pc = np.asarray(cfg.kind_probs if kind_probs is None else kind_probs, dtype=float)
        items = batch.demos.items()
        ll = self._loglik_groups(items, batch.demos.t0, True)  # [n, k, G]
        G = cfg.n_groups
        eye = np.eye(G, dtype=bool)
        others = np.where(eye, -np.inf, ll[..., None, :])  # [n, k, G(query), G(demo)]
        ll_other = _logsumexp(others, -1) - math.log(G - 1)
        ll_unif = -items.shape[-1] * math.log(cfg.n_items)

        def log(p: float) -> float:
            return math.log(p) if p > 0 else -math.inf

        terms = np.stack([log(ps) + ll, log(po) + ll_other, np.full_like(ll, log(pc) + ll_unif)], axis=-1)
        return _logsumexp(terms, -1)

    def group_log_posterior(self, batch: PromptBatch, use_demos: bool = True, kind_probs=None) -> np.ndarray:
        """log p(g | observed tokens), Eq. (B2), uniform prior over groups: [n, G]."""
        q = batch.queries
        lp = self._loglik_groups(q.history, q.t0, False)
        if use_demos and batch.k:
            lp = lp + self.demo_log_evidence(batch, kind_probs).sum(1)
        return _log_softmax(lp)

    def bayes_scores(self, batch: PromptBatch, use_demos: bool = True, kind_probs=None) -> np.ndarray:
        """log p(candidate | tokens), the observed-token Bayes ranking: [n, C]."""
        q = batch.queries
        post = np.exp(self.group_log_posterior(batch, use_demos, kind_probs))  # [n, G]
        pred = post @ np.exp(self.group_log_probs(q.t0 + q.history.shape[1], True))  # [n, n_items]
        return np.log(np.take_along_axis(pred, q.candidates, 1))

    def oracle_scores(self, batch: PromptBatch) -> np.ndarray:
        """log p(candidate | the query user's true preference): [n, C]."""
        q = batch.queries
        t = q.t0 + q.history.shape[1]
        lp = _log_softmax(self.logits(q.pref, q.group, t, True))
        return np.take_along_axis(lp, q.candidates, 1)

    def popularity_scores(self, batch: PromptBatch) -> np.ndarray:
        """log of the group-averaged item distribution (what a model knows without any context)."""
        q = batch.queries
        pred = np.exp(self.group_log_probs(q.t0 + q.history.shape[1], True)).mean(0)
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
        demos = world.sample_demos(queries.group, kind, k_max, np.random.default_rng([seed, ki, 99]))
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
    indexed by :data:`KINDS`."""
    import pandas as pd

    cis = {name: bootstrap_ci(usefulness[kind == k], n_boot, seed) for k, name in enumerate(KINDS)}
    tab = pd.DataFrame({name: dict(zip(["mean", "CI low", "CI high"], ci)) for name, ci in cis.items()}).T
    tab["share > 0"] = [float((usefulness[kind == k] > 0).mean()) for k in range(len(KINDS))]
    return tab
