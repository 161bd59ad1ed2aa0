"""lrgd.metrics against values computed by hand (the arithmetic is in the comments).

``hypothesis`` is not installed in .venv, so the property tests below draw many seeded random cases
with numpy instead.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lrgd import metrics as M
from lrgd.rec.rank import target_rank
from lrgd.rec.rank import tie_key as chapter2_tie_key

# ----------------------------------------------------------------------------- ranks and ties


def test_rank_with_explicit_keys() -> None:
    # scores [0.5, 0.9, 0.5, 0.1], target 0: one strictly higher (0.9), one tie (index 2) whose key 3 < 7
    # → two ahead → rank 3. With the target's key smallest the tie goes its way → rank 2.
    assert M.rank_of_target([0.5, 0.9, 0.5, 0.1], 0, [7, 0, 3, 1]) == 3
    assert M.rank_of_target([0.5, 0.9, 0.5, 0.1], 0, [2, 0, 3, 1]) == 2
    # equal keys keep list order (as a stable sort does): index 0 before index 2
    assert M.rank_of_target([0.5, 0.9, 0.5], 2, [1, 0, 1]) == 3
    # NaN ranks last: [nan, 0.2] → the NaN target is behind 0.2
    assert M.rank_of_target([float("nan"), 0.2], 0, [0, 1]) == 2


def test_target_tied_with_two_others_is_uniform_over_three_places() -> None:
    # target (index 0) tied with 2 others, one candidate strictly above: places 2, 3, 4, each with
    # probability 1/3 over (user, seed). 3000 draws: each count ~ Binomial(3000, 1/3), sd ≈ 25.8.
    # ids of equal length: CRC32 keys (chapter 2's old tie_key) fail this, giving counts ≈ 790/1510/700
    scores, items = [1.0, 1.0, 1.0, 2.0], ["t", "a", "b", "c"]
    ranks = [
        M.rank_of_target(scores, 0, [M.tie_key(i, f"u{u}", seed) for i in items])
        for u in range(1000)
        for seed in range(3)
    ]
    counts = np.bincount(ranks, minlength=5)
    assert counts[0] == counts[1] == 0 and counts[2:].sum() == 3000
    assert np.all(np.abs(counts[2:] - 1000) < 130)  # 5 sd
    # deterministic for a fixed key: the same user and seed give the same rank every time
    keys = [M.tie_key(i, "u7", 1) for i in items]
    assert len({M.rank_of_target(scores, 0, keys) for _ in range(5)}) == 1
    # ids like Amazon's: the first of three never landed in the middle place with CRC32 keys
    three = ["B00001", "B00002", "B00017"]
    r3 = [M.rank_of_target([0.0] * 3, 0, [M.tie_key(i, f"u{u}", 0) for i in three]) for u in range(3000)]
    assert np.all(np.abs(np.bincount(r3, minlength=4)[1:] - 1000) < 130)


def test_convention_is_chapter_2s_target_rank() -> None:
    # lrgd.rec.rank.target_rank sorts by (-score, its tie_key); given those keys rank_of_target agrees
    rng = np.random.default_rng(0)
    for t in range(2000):
        c = int(rng.integers(1, 8))
        items = [f"i{j}" for j in rng.permutation(40)[:c]]
        s = rng.integers(0, 3, c).astype(float)  # many ties
        if rng.random() < 0.2:
            s[rng.integers(c)] = np.nan
        tgt, user, seed = int(rng.integers(c)), f"u{t}", int(rng.integers(4))
        keys = [chapter2_tie_key(i, user, seed) for i in items]
        assert M.rank_of_target(s, tgt, keys) == target_rank(s, items, items[tgt], user, seed)


def test_ranks_of_targets_vectorised() -> None:
    # no ties: row 0 has 0.9 above the target 0.5 → 2; row 1 target highest → 1; row 2 two above → 3
    s = np.array([[0.5, 0.9, 0.1], [0.9, 0.5, 0.1], [0.1, 0.5, 0.9]])
    assert M.ranks_of_targets(s).tolist() == [2, 1, 3]
    # target in column 2 of row 0: 0.1 is lowest → 3
    assert M.ranks_of_targets(s, target_col=2)[0] == 3
    # ties with explicit keys: [1, 1, 1] target key 0.5; keys 0.2 (ahead) and 0.9 (behind) → rank 2
    assert M.ranks_of_targets(np.ones((1, 3)), keys=np.array([[0.5, 0.2, 0.9]])).tolist() == [2]
    # a tie of three: over rows the rank is uniform on {1, 2, 3}; the same rng seed gives the same ranks
    r = M.ranks_of_targets(np.ones((3000, 3)), rng=4)
    assert np.all(np.abs(np.bincount(r, minlength=4)[1:] - 1000) < 130)
    assert np.array_equal(r, M.ranks_of_targets(np.ones((3000, 3)), rng=4))


def test_property_rank_invariant_to_candidate_order_and_bounded() -> None:
    # property (seeded random cases; hypothesis is not installed): permuting the candidates together
    # with their keys never changes the target's rank, and 1 ≤ rank ≤ C
    rng = np.random.default_rng(1)
    for _ in range(1000):
        c = int(rng.integers(1, 10))
        s, keys, tgt = rng.integers(0, 3, c).astype(float), rng.random(c), int(rng.integers(c))
        r = M.rank_of_target(s, tgt, list(keys))
        p = rng.permutation(c)
        assert r == M.rank_of_target(s[p], int(np.flatnonzero(p == tgt)[0]), list(keys[p]))
        assert 1 <= r <= c
        assert r == M.ranks_of_targets(s[None], tgt, keys=keys[None])[0]


# ----------------------------------------------------------------------------- metrics of ranks


def test_rank_metrics_by_hand() -> None:
    # NDCG@10: rank 1 → 1/log2(2) = 1; rank 3 → 1/log2(4) = 0.5; rank 11 → 0 (outside the top 10)
    assert M.rank_metrics(1)["NDCG@10"] == 1.0
    assert M.rank_metrics(3)["NDCG@10"] == pytest.approx(0.5)
    assert M.rank_metrics(11)["NDCG@10"] == 0.0
    # rank 7: 1/log2(8) = 1/3 inside the top 10, 0 outside the top 5; HR@5 = 0, HR@10 = 1; MRR = 1/7
    r7 = M.rank_metrics(7)
    assert r7["NDCG@10"] == pytest.approx(1 / 3) and r7["NDCG@5"] == 0.0
    assert (r7["HR@1"], r7["HR@5"], r7["HR@10"]) == (0.0, 0.0, 1.0) and r7["MRR"] == pytest.approx(1 / 7)
    # any k by name: rank 3 → HR@2 = 0, NDCG@3 = 0.5
    assert M.rank_metrics(3, ("HR@2", "NDCG@3")) == {"HR@2": 0.0, "NDCG@3": pytest.approx(0.5)}
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="rank"):
            M.rank_metrics(bad)
    with pytest.raises(ValueError, match="unknown metric"):
        M.rank_metrics(1, ("NDCG10",))


def test_mrr_and_expected_random() -> None:
    # MRR of ranks 1, 2, 4: (1 + 1/2 + 1/4) / 3 = 0.58333…
    assert M.per_user_metrics([1, 2, 4])["MRR"].mean() == pytest.approx(1.75 / 3)
    # rank uniform on 1..4: HR@1 = 1/4, HR@5 = 1, MRR = (1 + 1/2 + 1/3 + 1/4) / 4 = 25/48,
    # NDCG@5 = (1 + 1/log2 3 + 1/2 + 1/log2 5) / 4
    e = M.expected_random_metrics(4)
    assert e["HR@1"] == 0.25 and e["HR@5"] == 1.0 and e["MRR"] == pytest.approx(25 / 48)
    assert e["NDCG@5"] == pytest.approx((1 + 1 / math.log2(3) + 0.5 + 1 / math.log2(5)) / 4)


def test_property_metric_bounds() -> None:
    # property: every metric is in [0, 1], HR@k and NDCG@k are non-increasing in the rank, NDCG@k ≤ HR@k
    ranks = np.arange(1, 60)
    per = M.per_user_metrics(ranks)
    for m, v in per.items():
        assert np.all((v >= 0) & (v <= 1)) and np.all(np.diff(v) <= 0), m
    assert np.all(per["NDCG@10"] <= per["HR@10"]) and np.all(per["NDCG@5"] <= per["HR@5"])


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_degenerate_and_2d() -> None:
    assert M.bootstrap_ci([0.5] * 10) == (0.5, 0.5, 0.5)  # every resample of constant data has mean 0.5
    assert all(math.isnan(v) for v in M.bootstrap_ci([]))
    # 2-D [n, 2]: column 0 constant 2 → CI (2, 2); column 1 varies → lo < mean < hi
    x = np.c_[np.full(30, 2.0), np.arange(30.0)]
    mean, lo, hi = M.bootstrap_ci(x, n_boot=500)
    assert mean.tolist() == [2.0, 14.5] and lo[0] == hi[0] == 2.0 and lo[1] < 14.5 < hi[1]
    # a column of a 2-D call equals the 1-D call (same users drawn)
    assert (mean[1], lo[1], hi[1]) == M.bootstrap_ci(np.arange(30.0), n_boot=500)
    # a wider level gives a wider interval
    _, lo99, hi99 = M.bootstrap_ci(np.arange(30.0), n_boot=500, level=0.99)
    assert lo99 <= lo[1] and hi99 >= hi[1]


def test_bootstrap_ci_covers_the_true_mean() -> None:
    # a real property of a sound CI: over 200 samples of 50 normal draws, a 95% CI covers the true mean
    # 0 about 95% of the time (a percentile bootstrap undercovers a little at n = 50; ≥ 85% allows it)
    rng = np.random.default_rng(3)
    cis = [M.bootstrap_ci(rng.normal(size=50), 500, s) for s in range(200)]
    covered = [lo <= 0 <= hi for _, lo, hi in cis]
    assert 0.85 <= np.mean(covered) <= 1.0


# ----------------------------------------------------------------------------- paired test


def test_paired_identical_gives_p_one() -> None:
    x = np.linspace(0, 1, 40)  # n > 16: random sign flips; every flipped mean of zeros is 0 ≥ 0
    out = M.paired_bootstrap(x, x, n_boot=200, n_perm=999)
    assert out == {"diff": 0.0, "lo": 0.0, "hi": 0.0, "p": 1.0}
    assert M.paired_bootstrap(x[:5], x[:5])["p"] == 1.0  # exact enumeration, likewise


def test_paired_clear_shift_gives_minimum_p() -> None:
    # every difference is positive (≈ 1): no random flip reaches the observed mean, so
    # p = (1 + 0) / (1 + n_perm), the smallest attainable value (never 0)
    rng = np.random.default_rng(0)
    b = rng.random(60)
    a = b + 1 + 0.01 * rng.random(60)
    out = M.paired_bootstrap(a, b, n_boot=500, n_perm=999)
    assert out["p"] == pytest.approx(1 / 1000) and out["p"] >= 1 / (999 + 1)
    assert 1 < out["lo"] < out["diff"] < out["hi"] < 1.01
    assert M.format_p(out["p"], 999) == "< 0.001"


def test_paired_exact_enumeration_by_hand() -> None:
    # d = [1, 2, 3]: sums over the 8 sign patterns are 6, 0, 2, -4, 4, -2, 0, -6;
    # |sum| ≥ 6 for 2 of 8 → p = 0.25
    assert M.sign_flip_p([1.0, 2.0, 3.0]) == 0.25
    # d = [3, -1, 1] (sum 3): sums 3, 1, 5, 3, -3, -5, -1, -3 → |sum| ≥ 3 for 6 of 8 → p = 0.75
    assert M.paired_bootstrap([3.0, 0.0, 1.0], [0.0, 1.0, 0.0])["p"] == 0.75


def test_paired_p_is_calibrated_under_the_null() -> None:
    # under H0 (symmetric differences) P(p ≤ 0.1) ≈ 0.1; the old "twice the smaller bootstrap tail
    # around the observed mean" was not a null distribution. 300 null data sets; binomial sd ≈ 0.017
    rng = np.random.default_rng(5)
    ps = np.array([M.sign_flip_p(rng.normal(size=30), n_perm=199, seed=s) for s in range(300)])
    assert 0.04 <= (ps <= 0.1).mean() <= 0.17


def test_paired_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="same users"):
        M.paired_bootstrap([1.0, 2.0], [1.0])


def test_format_p() -> None:
    assert M.format_p(1 / 10000) == "< 0.0001"  # the minimum with the default 9999 resamples
    assert M.format_p(0.0312) == "0.031"
    assert M.format_p(0.0004, 99999) == "0.0004"  # small but attained: not "0.000"
    assert M.format_p(1.0) == "1.000"


def test_holm_by_hand() -> None:
    # p = [0.01, 0.04, 0.03, 0.005], m = 4. Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06,
    # 0.04·1 = 0.04 → running max 0.02, 0.03, 0.06, 0.06. Back in the given order:
    assert M.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capped at 1: 0.5·2 = 1.0, then max(1.0, 0.6·1) = 1.0
    assert M.holm([0.6, 0.5]).tolist() == [1.0, 1.0]
    # NaN stays NaN and does not count in m: one p of 0.2 with m = 1 stays 0.2
    out = M.holm([np.nan, 0.2])
    assert np.isnan(out[0]) and out[1] == pytest.approx(0.2)


# ----------------------------------------------------------------------------- Spearman


def test_spearman_by_hand() -> None:
    # a = [1, 2, 3, 4], b = [10, 30, 20, 40] → ranks of b [1, 3, 2, 4]; d = [0, -1, 1, 0], Σd² = 2;
    # ρ = 1 - 6·2 / (4·(16 - 1)) = 1 - 12/60 = 0.8
    assert M.spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert math.isnan(M.spearman([1, 1, 1], [1, 2, 3]))  # a constant side has no correlation


def test_spearman_ci_groups() -> None:
    a, b = [1, 2, 3, 4], [10, 30, 20, 40]
    # one group: every resample is the whole data → the CI collapses to ρ = 0.8
    assert M.spearman_ci(a, b, 50, groups=[0, 0, 0, 0]) == pytest.approx((0.8, 0.8, 0.8))
    rho, lo, hi = M.spearman_ci(a * 5, b * 5, 300, groups=np.repeat(np.arange(5), 4))
    assert rho == pytest.approx(0.8) and lo <= rho <= hi


def test_spearman_matrix_ci_is_the_column_group_bootstrap() -> None:
    # chapter 3's matrix version resamples columns (users); spearman_ci with the column as the group draws
    # the same columns (same rng calls) and pools the same pairs, so the two agree
    rng = np.random.default_rng(2)
    a = rng.normal(size=(6, 9))
    b = a + rng.normal(size=(6, 9))
    got = M.spearman_matrix_ci(a, b, 200, seed=3)
    groups = np.tile(np.arange(9), 6)  # a.ravel() is row-major: pair (m, n) belongs to user n
    assert got == pytest.approx(M.spearman_ci(a.ravel(), b.ravel(), 200, 3, groups=groups), abs=1e-12)
    assert got[1] < got[0] < got[2]
    assert M.spearman_matrix_ci(a, 2 * a + 1, 50) == pytest.approx((1.0, 1.0, 1.0))  # monotone: ρ = 1


def test_within_user_spearman_by_hand() -> None:
    # user 0: a = b = [1, 2, 3] → ρ = 1; user 1: b reversed → ρ = -1; user 2: constant → NaN, left out
    a = np.array([[1, 1, 1], [2, 2, 1], [3, 3, 1]], dtype=float)
    b = np.array([[1, 3, 5], [2, 2, 6], [3, 1, 7]], dtype=float)
    mean, per = M.within_user_spearman(a, b)
    assert per[:2].tolist() == [1.0, -1.0] and np.isnan(per[2]) and mean == 0.0
    assert M.within_user_spearman_ci(a, b, 100)[0] == 0.0


# ----------------------------------------------------------------------------- beyond accuracy


def test_coverage_by_hand() -> None:
    lists = [[0, 1, 2], [1, 3, 4], [2, 0, 5]]
    # top 2: {0, 1} ∪ {1, 3} ∪ {2, 0} = {0, 1, 2, 3} → 4 of 10 items
    assert M.coverage_at_k(lists, 10, 2) == 0.4
    # top 1: {0, 1, 2} → 0.3; top 3: {0, 1, 2, 3, 4, 5} → 0.6
    assert M.coverage_at_k(lists, 10, 1) == 0.3 and M.coverage_at_k(lists, 10, 3) == 0.6
    with pytest.raises(ValueError, match="catalogue"):
        M.coverage_at_k(lists, 3, 3)  # 6 distinct items cannot come from a catalogue of 3


def test_gini_by_hand() -> None:
    # G = Σ_i Σ_j |x_i − x_j| / (2 n² mean): [1, 1, 1, 1] → 0.
    assert M.gini([1, 1, 1, 1]) == 0.0
    # [0, 0, 0, 4]: 6 ordered pairs (zero, 4) differ by 4 → 24; 2·4²·1 = 32 → 24/32 = 0.75 = (n − 1)/n
    assert M.gini([0, 0, 0, 4]) == pytest.approx(0.75)
    assert M.gini([4, 0, 0, 0]) == pytest.approx(0.75)  # order does not matter
    # [1, 3]: 2 ordered pairs differ by 2 → 4; 2·2²·2 = 16 → 0.25
    assert M.gini([1, 3]) == pytest.approx(0.25)
    assert math.isnan(M.gini([0, 0]))
    with pytest.raises(ValueError, match="non-negative"):
        M.gini([1, -1])
