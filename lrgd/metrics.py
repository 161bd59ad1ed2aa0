"""The one metrics module: ranks → HR@K / NDCG@K / MRR, bootstrap CIs, a paired permutation test, Holm,
Spearman with a bootstrap CI, and beyond-accuracy metrics (catalogue coverage, Gini).

**Ranks.** Every user has one held-out (target) item among ``C`` candidates. Its 1-based rank is one plus
the number of candidates that score strictly higher, plus the number of *tied* candidates placed before it
by the tie rule below. NaN scores count as ``-inf`` (they rank last).

**The tie convention (one for the whole library).** Ties are broken by a seeded random order that is fixed
per (user, seed): every candidate gets a key (:func:`tie_key`, a 64-bit BLAKE2b hash of ``seed, user,
item``; or, in the vectorised :func:`ranks_of_targets`, a uniform draw from a seeded generator), and among
equal scores the smaller key ranks first. So a rank is deterministic for a fixed key, independent of the
order in which candidates are listed, and unrelated to which candidate is the target: a target tied with
``t - 1`` others lands uniformly on the ``t`` tied places over users or seeds. The rule is chapter 2's
:func:`lrgd.rec.rank.target_rank` (``sorted`` by ``(-score, key)``; a full key collision keeps list order):
:func:`rank_of_target` given that module's keys reproduces it exactly (``tests/test_metrics.py``). Its key,
CRC32, is *not* a random order: CRC is affine over GF(2), so for ids of equal length the XOR of two keys
does not depend on the user and the tie orders are correlated (three tied ids ``B00001 B00002 B00017``:
the first never lands in the middle place). :func:`tie_key` replaces it. The synthetic world (chapters 1b
and 3) used "ties count half"; its scores are continuous, so ties do not occur there.

**Metrics of one user** whose target has rank ``r`` (one relevant item, so the ideal DCG is 1)::

    HR@k   = [r ≤ k]
    NDCG@k = [r ≤ k] / log2(r + 1)
    MRR    = 1 / r

**Statistics.** Means get percentile-bootstrap CIs over users (:func:`bootstrap_ci`). Two methods on the
same users are compared by :func:`paired_bootstrap`: the CI is the bootstrap CI of the mean difference;
the p-value is a paired sign-flip permutation test (under H0 each user's difference is symmetric around 0),
never reported as 0 (:func:`format_p`). Within one table, :func:`holm` adjusts for multiple comparisons.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Hashable, Iterable, Sequence

import numpy as np

METRICS = ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR")
#: default number of sign-flip resamples of :func:`paired_bootstrap` (smallest p: 1 / 10000)
N_PERM = 9999
#: up to this many users, :func:`paired_bootstrap` enumerates all 2**n sign flips (an exact p-value)
EXACT_MAX_N = 16

_METRIC = re.compile(r"^(HR|NDCG)@([1-9][0-9]*)$|^MRR$")


# ----------------------------------------------------------------------------- ranks


def tie_key(item: str, user: str, seed: int) -> int:
    """A seeded 64-bit hash that breaks ties between equal scores: deterministic, independent of the
    order in which candidates are listed, unrelated to the target, and uniform (unlike CRC32)."""
    blob = f"{seed}\x1f{user}\x1f{item}".encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "big")


def _finite(scores) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    return np.where(np.isnan(s), -np.inf, s)


def rank_of_target(scores: Sequence[float], target_index: int, tiebreak_key: Sequence[Hashable]) -> int:
    """1-based rank of candidate ``target_index`` under the tie convention of this module.

    ``scores`` [C]: higher is better (NaN ranks last). ``tiebreak_key`` [C]: one comparable key per
    candidate (e.g. ``[tie_key(item, user, seed) for item in items]``); among equal scores the smaller
    key ranks first, and equal keys keep list order.

    >>> rank_of_target([0.5, 0.9, 0.5, 0.1], 0, [7, 0, 3, 1])  # 0.9 above; tied 0.5 has a smaller key
    3
    """
    s = _finite(scores)
    if s.ndim != 1 or len(tiebreak_key) != len(s):
        raise ValueError(
            f"need one score and one tie key per candidate; got {s.shape} and {len(tiebreak_key)}"
        )
    if not 0 <= target_index < len(s):
        raise ValueError(f"target_index {target_index} is outside the {len(s)} candidates")
    t, kt = s[target_index], tiebreak_key[target_index]
    ahead = int((s > t).sum())
    for j in np.flatnonzero(s == t):
        kj = tiebreak_key[j]
        if kj < kt or (kj == kt and j < target_index):
            ahead += 1
    return ahead + 1


def ranks_of_targets(
    scores: np.ndarray,
    target_col: int = 0,
    rng: np.random.Generator | int | None = None,
    keys: np.ndarray | None = None,
) -> np.ndarray:
    """1-based rank [n] of column ``target_col`` in each row of ``scores`` [n, C], ties broken as above.

    Tie keys are ``keys`` [n, C] if given, else uniform draws from ``rng`` (a Generator or a seed; None
    means seed 0), fixed per (row, seed). Without ties the keys play no role.

    >>> ranks_of_targets(np.array([[0.5, 0.9, 0.1], [0.9, 0.5, 0.1]])).tolist()
    [2, 1]
    """
    s = _finite(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be [n, C]; got shape {s.shape}")
    if keys is None:
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(0 if rng is None else rng)
        keys = rng.random(s.shape)
    keys = np.asarray(keys)
    if keys.shape != s.shape:
        raise ValueError(f"keys must match scores {s.shape}; got {keys.shape}")
    t = s[:, target_col : target_col + 1]
    kt = keys[:, target_col : target_col + 1]
    before = np.arange(s.shape[1])[None, :] < target_col
    tied_ahead = (s == t) & ((keys < kt) | ((keys == kt) & before))
    return 1 + (s > t).sum(1) + tied_ahead.sum(1)


# ----------------------------------------------------------------------------- metrics of ranks


def _parse(metric: str) -> tuple[str, int]:
    m = _METRIC.match(metric)
    if m is None:
        raise ValueError(f"unknown metric {metric!r}; use 'HR@k', 'NDCG@k' or 'MRR' (e.g. {METRICS})")
    return ("MRR", 0) if metric == "MRR" else (m.group(1), int(m.group(2)))


def rank_metrics(rank: int, metrics: Sequence[str] = METRICS) -> dict[str, float]:
    """Each of ``metrics`` (default :data:`METRICS`) for one user whose target has 1-based ``rank``."""
    if rank < 1 or rank != int(rank):
        raise ValueError(f"rank must be an integer ≥ 1, got {rank}")
    out = {}
    for name in metrics:
        kind, k = _parse(name)
        if kind == "HR":
            out[name] = float(rank <= k)
        elif kind == "NDCG":
            out[name] = 1.0 / np.log2(rank + 1) if rank <= k else 0.0
        else:
            out[name] = 1.0 / rank
    return out


def per_user_metrics(ranks: Sequence[int], metrics: Sequence[str] = METRICS) -> dict[str, np.ndarray]:
    """Metric name → per-user values [n] (each value exactly :func:`rank_metrics` of that user's rank)."""
    r = np.asarray(ranks).reshape(-1)
    table = {int(x): rank_metrics(int(x), metrics) for x in np.unique(r)}
    return {m: np.array([table[int(x)][m] for x in r], dtype=float) for m in metrics}


def expected_random_metrics(n_candidates: int, metrics: Sequence[str] = METRICS) -> dict[str, float]:
    """Each metric's expectation when the target's rank is uniform on 1..``n_candidates``."""
    if n_candidates < 1:
        raise ValueError(f"n_candidates must be ≥ 1, got {n_candidates}")
    rows = [rank_metrics(r, metrics) for r in range(1, n_candidates + 1)]
    return {m: float(np.mean([x[m] for x in rows])) for m in metrics}


# ----------------------------------------------------------------------------- bootstrap


def _tails(level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    a = round((1 - level) / 2, 12)  # 0.95 → exactly 0.025 and 0.975
    return a, round(1 - a, 12)


def bootstrap_ci(
    values, n_boot: int = 2000, seed: int = 0, axis: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap CI, resampling ``axis`` (users) with replacement.

    ``values`` [n] gives floats; [n, m] (axis 0) gives three arrays [m], one CI per column, all columns
    resampled with the same users. The resampling is ``default_rng(seed).integers(0, n, (n_boot, n))``,
    the stream chapters 1–3 used (``evaluate.bootstrap_ci``, ``recworld.bootstrap_ci`` and chapter 1's
    ``mean_ci`` drew the same indices). Empty input gives NaNs.

    >>> bootstrap_ci([0.5, 0.5, 0.5])
    (0.5, 0.5, 0.5)
    """
    x = np.moveaxis(np.asarray(values, dtype=float), axis, 0)
    lo_q, hi_q = _tails(level)
    if x.shape[0] == 0:
        nan = np.full(x.shape[1:], np.nan)
        return (float("nan"),) * 3 if x.ndim == 1 else (nan, nan.copy(), nan.copy())
    idx = np.random.default_rng(seed).integers(0, x.shape[0], size=(n_boot, x.shape[0]))
    boot = x[idx].mean(1)  # [n_boot, ...]
    mean, lo, hi = x.mean(0), np.quantile(boot, lo_q, axis=0), np.quantile(boot, hi_q, axis=0)
    if x.ndim == 1:
        return float(mean), float(lo), float(hi)
    return mean, lo, hi


def summarize(ranks: Sequence[int], n_boot: int = 2000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Metric → {mean, lo, hi} for each of :data:`METRICS`."""
    per = per_user_metrics(ranks)
    return {m: dict(zip(("mean", "lo", "hi"), bootstrap_ci(v, n_boot, seed))) for m, v in per.items()}


# ----------------------------------------------------------------------------- paired test


def sign_flip_p(d, n_perm: int = N_PERM, seed: int = 0) -> float:
    """Two-sided p-value of a paired sign-flip permutation test of mean(``d``) = 0.

    Under H0 each difference is symmetric around 0, so flipping its sign leaves the distribution of the
    mean unchanged. With ``n ≤ EXACT_MAX_N`` all ``2**n`` flips are enumerated and
    ``p = #{|flipped mean| ≥ |observed|} / 2**n`` (exact; the identity counts, so ``p ≥ 2 / 2**n``);
    otherwise ``p = (1 + #{...}) / (1 + n_perm)`` over random flips (never 0).
    """
    d = np.asarray(d, dtype=float).reshape(-1)
    n = len(d)
    if n == 0:
        return float("nan")
    obs = abs(d.mean())
    tol = 1e-12 * (np.abs(d).mean() + 1e-300)  # equal means up to rounding count as "at least as extreme"
    if n <= EXACT_MAX_N:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        return float((np.abs((signs * d).mean(1)) >= obs - tol).mean())
    rng = np.random.default_rng([seed, 1])  # separate from the bootstrap stream of the CI
    hits = 0
    for start in range(0, n_perm, 1000):  # chunks bound the memory at [1000, n]
        signs = rng.integers(0, 2, size=(min(1000, n_perm - start), n)) * 2.0 - 1.0
        hits += int((np.abs((signs * d).mean(1)) >= obs - tol).sum())
    return (1 + hits) / (1 + n_perm)


def paired_bootstrap(a, b, n_boot: int = 2000, seed: int = 0, n_perm: int = N_PERM) -> dict[str, float]:
    """Mean of ``a - b`` over the same users [n], its percentile-bootstrap 95% CI, and a two-sided p.

    The CI resamples users exactly as :func:`bootstrap_ci` (the numbers chapter 2 printed); ``p`` comes
    from :func:`sign_flip_p`, a paired permutation test with a real null. Print it with :func:`format_p`.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"a paired test needs the same users: {a.shape} vs {b.shape}")
    diff, lo, hi = bootstrap_ci(a - b, n_boot, seed)
    return {"diff": diff, "lo": lo, "hi": hi, "p": sign_flip_p(a - b, n_perm, seed)}


def format_p(p: float, n_perm: int = N_PERM) -> str:
    """``p`` for a table: ``"< 1/n_perm"`` (e.g. ``"< 0.0001"``) when no resample reached the observed
    difference, three decimals otherwise, two significant digits below 0.001; never ``"0.000"``."""
    if np.isnan(p):
        return "n/a"
    if p <= 1 / (1 + n_perm) * (1 + 1e-9):
        return f"< {1 / n_perm:.2g}"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.2g}"


def holm(pvalues) -> np.ndarray:
    """Holm–Bonferroni step-down adjusted p-values (same order as given; NaNs stay NaN and do not count).

    Sorted ascending, ``p_(i)`` becomes ``max_{j ≤ i} min(1, (m - j + 1) p_(j))`` (1-based ``j``):
    monotone in the sorted order and capped at 1. Reject H0_i at level α when the adjusted p ≤ α.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


# ----------------------------------------------------------------------------- Spearman


def spearman(a, b) -> float:
    """Spearman's ρ (Pearson correlation of average ranks; NaN when either side is constant)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=float).reshape(-1), np.asarray(b, dtype=float).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"Spearman needs paired values: {a.shape} vs {b.shape}")
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def spearman_ci(
    a, b, n_boot: int = 1000, seed: int = 0, groups=None, level: float = 0.95
) -> tuple[float, float, float]:
    """Pooled Spearman ρ over pairs (a[i], b[i]) and a percentile-bootstrap CI.

    ``groups`` [n] (e.g. the user of each pair): the bootstrap resamples whole groups with replacement,
    because pairs nested in one user are not independent; None resamples single pairs.
    """
    a, b = np.asarray(a, dtype=float).reshape(-1), np.asarray(b, dtype=float).reshape(-1)
    g = np.arange(len(a)) if groups is None else np.asarray(groups).reshape(-1)
    if not a.shape == b.shape == g.shape:
        raise ValueError(f"a, b and groups must have one entry per pair: {a.shape}, {b.shape}, {g.shape}")
    labels, inv = np.unique(g, return_inverse=True)
    members = [np.flatnonzero(inv == i) for i in range(len(labels))]
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        take = np.concatenate([members[i] for i in rng.integers(len(labels), size=len(labels))])
        boot.append(spearman(a[take], b[take]))
    lo_q, hi_q = _tails(level)
    return spearman(a, b), float(np.nanquantile(boot, lo_q)), float(np.nanquantile(boot, hi_q))


def spearman_matrix_ci(
    a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """Spearman ρ over all (row, column) pairs of ``a``, ``b`` [M, N] with a 95% CI from resampling
    columns (users) — the exact computation (same draws) of chapter 3's ``spearman_ci``."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"need two [M, N] matrices of the same shape; got {a.shape} and {b.shape}")
    rho = spearmanr(a.ravel(), b.ravel()).statistic
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        cols = rng.integers(a.shape[1], size=a.shape[1])
        boot.append(spearmanr(a[:, cols].ravel(), b[:, cols].ravel()).statistic)
    return float(rho), float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def within_user_spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
    """Spearman ρ within each user (column) of ``a``, ``b`` [M, N]: (mean over users, per-user ρ [N]).

    A user whose column is constant on either side has ρ = NaN and is left out of the mean. For a CI
    over users use :func:`within_user_spearman_ci`.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"need two [M, N] matrices of the same shape; got {a.shape} and {b.shape}")
    per = np.array([spearman(a[:, j], b[:, j]) for j in range(a.shape[1])])
    ok = per[~np.isnan(per)]
    return (float(ok.mean()) if len(ok) else float("nan")), per


def within_user_spearman_ci(
    a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean within-user ρ and its bootstrap CI over users (:func:`bootstrap_ci` of the per-user ρ)."""
    _, per = within_user_spearman(a, b)
    return bootstrap_ci(per[~np.isnan(per)], n_boot, seed)


# ----------------------------------------------------------------------------- beyond accuracy


def coverage_at_k(recommended_lists: Iterable[Sequence[Hashable]], catalogue_size: int, k: int) -> float:
    """Fraction of the catalogue's ``catalogue_size`` items that appear in at least one user's top ``k``.

    ``recommended_lists``: one ranked list of item ids per user, best first.
    """
    if catalogue_size < 1 or k < 1:
        raise ValueError(f"catalogue_size and k must be ≥ 1; got {catalogue_size} and {k}")
    seen = set()
    for items in recommended_lists:
        seen.update(list(items)[:k])
    if len(seen) > catalogue_size:
        raise ValueError(f"{len(seen)} distinct items recommended but the catalogue has {catalogue_size}")
    return len(seen) / catalogue_size


def gini(counts) -> float:
    """Gini index of how often each catalogue item is recommended (``counts`` [n], zeros included).

    ``G = Σ_i Σ_j |x_i − x_j| / (2 n² mean(x))``: 0 when every item is recommended equally often, and
    ``(n − 1) / n`` (→ 1) when one item takes every recommendation. NaN when nothing was recommended.
    """
    x = np.asarray(counts, dtype=float).reshape(-1)
    if len(x) == 0 or (x < 0).any() or np.isnan(x).any():
        raise ValueError("gini needs non-negative counts for every catalogue item")
    total = x.sum()
    if total == 0:
        return float("nan")
    n = len(x)
    xs = np.sort(x)
    # Σ_i Σ_j |x_i − x_j| = 2 Σ_i (2i − n − 1) x_(i) for the ascending order x_(1) ≤ … ≤ x_(n)
    return float(2 * np.sum((2 * np.arange(1, n + 1) - n - 1) * xs) / (2 * n * total))
