"""Chapter 4's model-agnostic core: perturbations, regularisers, the two-stage optimiser, adaptation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lrgd.errors import ConfigError, DataError
from lrgd.robust import optimise as opt
from lrgd.robust import perturb as pt

N_ITEMS, PAD, OFF = 500, -1, np.arange(1000, 1010)
CTX = {"n_items": N_ITEMS, "pad_id": PAD, "off_domain": OFF, "popularity": np.arange(N_ITEMS) % 7 == 0}


def _demos(n=400, k=3, L=10, seed=0) -> pt.DemoItems:
    """Demonstrations whose histories hold distinct items (so every moved item is visible)."""
    rng = np.random.default_rng(seed)
    history = np.stack([rng.choice(N_ITEMS, (k, L + 1), replace=False) for _ in range(n)])
    return pt.DemoItems(history[..., :L], history[..., L])


def _within_binomial(count: int, n: int, rate: float) -> bool:
    """|count/n − rate| within 5 binomial standard deviations (seeded, so a pass is reproducible)."""
    return abs(count / n - rate) <= 5 * math.sqrt(rate * (1 - rate) / n)


# ----------------------------------------------------------------------------- perturbations


@pytest.mark.parametrize("name", list(pt.PERTURBATIONS))
def test_rate_zero_is_the_identity(name):
    """Sanity check (an identity): rate 0 returns equal arrays, for demonstrations and queries."""
    d = _demos(n=20)
    out = pt.perturb(d, name, np.float32(0.0), np.random.default_rng(1), **CTX)
    assert np.array_equal(out.history, d.history) and np.array_equal(out.next_item, d.next_item)
    if name != "flip_next":
        q = d.history[:, 0]
        assert np.array_equal(pt.perturb_query(q, name, 0.0, np.random.default_rng(1), **CTX), q)


def test_inputs_are_not_modified():
    d = _demos(n=20)
    before = d.history.copy(), d.next_item.copy()
    for name in pt.PERTURBATIONS:
        pt.perturb(d, name, 0.5, np.random.default_rng(2), **CTX)
    assert np.array_equal(d.history, before[0]) and np.array_equal(d.next_item, before[1])


@pytest.mark.parametrize("name", ["random", "popular", "shuffle", "dropout", "off_domain"])
@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_history_perturbation_touches_about_rate_of_items(name, rate):
    d = _demos()
    out = pt.perturb(d, name, rate, np.random.default_rng(3), **CTX)
    h, h2 = d.history, out.history
    assert np.array_equal(out.next_item, d.next_item)  # answers untouched
    if name in ("random", "popular", "shuffle"):
        changed, L = int((h2 != h).sum()), h.shape[-1]
        # shuffle: a row with one touched position has nothing to exchange with, so it stays
        expect = rate * (1 - (1 - rate) ** (L - 1)) if name == "shuffle" else rate
        assert _within_binomial(changed, h.size, expect), (changed, h.size, expect)
        if name == "shuffle":  # the same items in each row, only their order changed
            assert np.array_equal(np.sort(h2, -1), np.sort(h, -1))
        else:
            assert ((h2 >= 0) & (h2 < N_ITEMS)).all()
        if name == "popular":  # substitutes only from items with popularity > 0
            assert CTX["popularity"][h2[h2 != h]].all()
    else:
        marker = (h2 == PAD) if name == "dropout" else np.isin(h2, OFF)
        assert _within_binomial(int(marker.sum()), h.size, rate)
        if name == "dropout":  # pads on the left
            assert (np.diff(marker.astype(int), axis=-1) <= 0).all()
        for row, new in zip(h.reshape(-1, h.shape[-1]), h2.reshape(-1, h.shape[-1])):
            kept = new[~(np.isin(new, OFF) | (new == PAD))]
            if name == "dropout":  # the survivors, in their order
                pos = [int(np.flatnonzero(row == x)[0]) for x in kept]
                assert pos == sorted(pos)
            else:  # the most recent items, in order
                assert np.array_equal(kept, row[len(row) - len(kept) :])


def test_flip_next_changes_about_rate_of_answers_only():
    d = _demos(n=2000)
    out = pt.perturb(d, "flip_next", 0.2, np.random.default_rng(4), **CTX)
    assert np.array_equal(out.history, d.history)
    assert _within_binomial(int((out.next_item != d.next_item).sum()), d.next_item.size, 0.2)


def test_rate_one_hand_checked():
    """At rate 1 each perturbation's effect is known exactly."""
    d = pt.DemoItems(np.array([[3, 5, 7, 9]]), np.array([4]))
    rng = np.random.default_rng(5)
    assert pt.perturb(d, "dropout", 1.0, rng, pad_id=-1).history.tolist() == [[-1, -1, -1, -1]]
    assert pt.perturb(d, "dropout", 1.0, rng, pad_id=0, left_pad=False).history.tolist() == [[0, 0, 0, 0]]
    assert np.isin(pt.perturb(d, "off_domain", 1.0, rng, off_domain=[42]).history, [42]).all()
    shuffled = pt.perturb(d, "shuffle", 1.0, rng).history[0]
    assert sorted(shuffled.tolist()) == [3, 5, 7, 9] and (shuffled != d.history[0]).all()  # one cycle
    two = pt.DemoItems(np.array([[0, 1]]), np.array([0]))
    assert pt.perturb(two, "random", 1.0, rng, n_items=2).history.tolist() == [[1, 0]]
    assert pt.perturb(two, "flip_next", 1.0, rng, n_items=2).next_item.tolist() == [1]
    assert pt.perturb(two, "popular", 1.0, rng, popularity=[1.0, 3.0]).history.tolist() == [[1, 0]]


def test_dropout_in_place_keeps_positions():
    d = pt.DemoItems(np.array([[3, 5, 7, 9, 11, 13]] * 200), np.zeros(200, dtype=int))
    h = pt.perturb(d, "dropout", 0.5, np.random.default_rng(6), pad_id=-1, left_pad=False).history
    assert ((h == d.history) | (h == -1)).all() and 0 < (h == -1).mean() < 1


def test_popular_substitution_follows_popularity():
    pop = np.array([0.0, 1.0, 3.0, 6.0])
    d = pt.DemoItems(np.zeros((20000, 1), dtype=int), np.zeros(20000, dtype=int))  # all item 0 (p = 0)
    h = pt.perturb(d, "popular", 1.0, np.random.default_rng(7), popularity=pop).history.ravel()
    freq = np.bincount(h, minlength=4) / h.size
    assert np.allclose(freq, pop / pop.sum(), atol=0.015)
    d = pt.DemoItems(np.ones((20000, 1), dtype=int), np.zeros(20000, dtype=int))  # item 1: excluded
    h = pt.perturb(d, "popular", 1.0, np.random.default_rng(7), popularity=pop).history.ravel()
    assert np.allclose(np.bincount(h, minlength=4) / h.size, [0, 0, 1 / 3, 2 / 3], atol=0.015)


def test_perturb_keeps_other_fields_and_works_on_testbed_demos():
    from lrgd.testbeds.recworld import Demos

    history, next_item = np.arange(24).reshape(2, 3, 4), np.arange(6).reshape(2, 3)
    d = Demos(np.zeros((2, 3), int), np.ones((2, 3), int), history, next_item)
    out = pt.perturb(d, "random", 0.5, np.random.default_rng(8), n_items=30)
    assert isinstance(out, Demos) and np.array_equal(out.group, d.group) and out.history.shape == (2, 3, 4)


def test_perturbed_copies_are_seeded():
    d = _demos(n=10)
    a, b = (pt.perturbed_copies(d, "random", 0.3, 3, seed=1, **CTX) for _ in range(2))
    assert all(np.array_equal(x.history, y.history) for x, y in zip(a, b))
    assert not np.array_equal(a[0].history, a[1].history)


def test_title_noise():
    title = "the quick brown fox jumps over a lazy dog"  # distinct words, no doubled letters
    words = title.split()
    assert pt.title_noise(title, 0.0, np.random.default_rng(0)) == title  # sanity: rate 0
    rng = np.random.default_rng(9)
    untouched = sum(len(set(pt.title_noise(title, 0.3, rng).split()) & set(words)) for _ in range(400))
    assert _within_binomial(400 * len(words) - untouched, 400 * len(words), 0.3)
    assert pt.title_noise("a", 1.0, np.random.default_rng(1)) == "a"  # the last word is never dropped
    assert sorted(pt.title_noise("ab", 1.0, np.random.default_rng(1))) == ["a", "b"]


@pytest.mark.parametrize(
    "call",
    [
        lambda d: pt.perturb(d, "blur", 0.1, np.random.default_rng(0), **CTX),
        lambda d: pt.perturb(d, "random", -0.1, np.random.default_rng(0), **CTX),
        lambda d: pt.perturb(d, "random", 1.5, np.random.default_rng(0), **CTX),
        lambda d: pt.perturb(d, "random", float("nan"), np.random.default_rng(0), **CTX),
        lambda d: pt.perturb(d, "random", 0.1, np.random.default_rng(0)),  # n_items missing
        lambda d: pt.perturb(d, "popular", 0.1, np.random.default_rng(0), popularity=[-1.0, 2.0]),
        lambda d: pt.perturb(d, "off_domain", 0.1, np.random.default_rng(0), off_domain=[]),
        lambda d: pt.perturb_query(d.history[:, 0], "flip_next", 0.1, np.random.default_rng(0), **CTX),
        lambda d: pt.title_noise("x", 2.0, np.random.default_rng(0)),
    ],
)
def test_bad_perturbation_input_raises_config_error(call):
    with pytest.raises(ConfigError) as err:
        call(_demos(n=2))
    assert "\n" not in str(err.value)


def test_unknown_name_lists_the_names():
    with pytest.raises(ConfigError, match="dropout, random, popular, shuffle, off_domain, flip_next"):
        pt.perturb(_demos(n=2), "blur", 0.1, np.random.default_rng(0))


def test_popular_needs_item_ids_in_range():
    d = pt.DemoItems(np.array([[PAD, 2]]), np.array([1]))
    with pytest.raises(DataError, match="pad"):
        pt.perturb(d, "popular", 0.5, np.random.default_rng(0), popularity=np.ones(5))


# ----------------------------------------------------------------------------- regularisers


def test_robust_score_hand_computed():
    e = np.array([[1.0, 3.0], [3.0, 5.0]])  # R = 2 copies, M = 2: mean [2, 4], std [1, 1]
    assert np.allclose(pt.robust_score(e, lam=0.5, mu=1.0, step=[0.5, 2.0]), [1.0, 1.5])
    e3 = np.stack([e, 2 * e], axis=-1)  # [R, M, N=2]: means [[2, 4], [4, 8]], stds [[1, 2], [1, 2]]
    assert np.allclose(pt.robust_score(e3, lam=1.0, mu=1.0, step=[1.0, 0.0]), [[0.0, 1.0], [3.0, 6.0]])
    assert np.allclose(pt.robust_score(e), e.mean(0))  # λ = μ = 0: the plain mean


def test_kl_hand_computed():
    p, q = np.log([[0.5, 0.5]]), np.log([[0.25, 0.75]])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert np.allclose(pt.kl_from_zero_shot(p, q), [expected])
    assert np.allclose(pt.kl_from_zero_shot(p + 3.0, q - 1.0), [expected])  # logits: shifts cancel
    s = np.random.default_rng(0).normal(size=(4, 5, 7))
    assert np.allclose(pt.kl_from_zero_shot(s, s), 0) and (pt.kl_from_zero_shot(s, s[::-1]) > 0).all()


@pytest.mark.parametrize(
    "call",
    [
        lambda: pt.robust_score(np.ones(3)),
        lambda: pt.robust_score(np.ones((2, 3)), lam=-1),
        lambda: pt.robust_score(np.ones((2, 3)), mu=1.0),
        lambda: pt.robust_score(np.ones((2, 3)), mu=1.0, step=np.ones(4)),
        lambda: pt.kl_from_zero_shot(np.ones((2, 3)), np.ones((2, 4))),
    ],
)
def test_bad_regulariser_input(call):
    with pytest.raises(ConfigError):
        call()


# ----------------------------------------------------------------------------- the optimiser


class PairObjective:
    """loss(u, S) = −Σ_{d∈S} utility[d, u] + Σ_{d<e ∈ S} redundancy[d, e] (a known optimum)."""

    def __init__(self, utility: np.ndarray, redundancy: np.ndarray | None = None):
        self.utility, self.n_pool = utility, utility.shape[0]
        self.redundancy = np.zeros((self.n_pool,) * 2) if redundancy is None else redundancy
        self.calls = 0

    def set_loss(self, users, sets):
        self.calls += 1
        gain = self.utility[sets, users[:, None]].sum(1)
        pairs = self.redundancy[sets[:, :, None], sets[:, None, :]]
        return -gain + np.triu(pairs, 1).sum((1, 2))


def clustered(seed=0, n_users=40):
    """12 demonstrations in 4 clusters of 3 near-duplicates (redundancy 5 within a cluster).

    Cluster 0's demonstrations have the highest single utilities, so top-k singles picks cluster 0 thrice.
    """
    rng = np.random.default_rng(seed)
    cluster = np.repeat(np.arange(4), 3)
    value = np.array([3.0, 2.0, 1.5, 1.0])[cluster] + rng.uniform(0, 0.3, 12)
    utility = value[:, None] + rng.normal(0, 0.05, (12, n_users))
    return PairObjective(utility, 5.0 * (cluster[:, None] == cluster[None, :])), utility


def test_two_stage_finds_the_optimum_that_top_k_singles_misses():
    obj, utility = clustered()
    train, hold = np.arange(0, 20), np.arange(20, 40)
    best, j_best, brute_evals = opt.brute_force(obj, train, 3)
    s1 = opt.stage1(utility[:, train], 3)
    res = opt.two_stage(obj, utility[:, train], 3, train, hold)
    assert set(s1.tolist()) == {0, 1, 2}  # greedy by singles: one redundant cluster
    assert res.objective[0] > j_best + 1.0  # … far from the optimum
    assert set(res.best.tolist()) == set(best.tolist()) and math.isclose(res.objective[res.best_iter], j_best)
    assert res.n_evals < brute_evals and res.n_calls == obj.calls - 1  # brute force made one call
    assert np.all(np.diff(res.objective) < 0)  # every accepted swap lowers J


def test_stage1_modes():
    s = np.array([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]])  # M = 3, N = 2
    assert opt.stage1(s, 2, "global").tolist() == [1, 0]  # means 0.5, 1.0, 0.5 (tie → lower id)
    assert opt.stage1(s, 2, "per_user").tolist() == [[0, 2], [1, 2]]


def test_beam_reaches_the_optimum_too():
    obj, utility = clustered(seed=1)
    train, hold = np.arange(20), np.arange(20, 40)
    best, _, _ = opt.brute_force(obj, train, 3)
    res = opt.two_stage(obj, utility[:, train], 3, train, hold, beam=3, patience=None)
    assert set(res.best.tolist()) == set(best.tolist())


def overfitting():
    """Train users like demos 5-7 (spurious), held-out users dislike them; demo 4 is good for all.

    From the neutral start {0..3}: swap in 4 (train −2, held-out −2), then 5, 6, 7 (train −1.5 each,
    held-out +1 each): held-out ends above the start, while train keeps falling.
    """
    utility = np.zeros((8, 10))
    utility[4] = 2.0
    utility[5:8, :5], utility[5:8, 5:] = 1.5, -1.0
    return PairObjective(utility), np.arange(4), np.arange(5), np.arange(5, 10)


def test_without_guards_the_search_collapses():
    obj, start, train, hold = overfitting()
    res = opt.refine(obj, start, train, hold, patience=None, keep_best=False)
    assert np.all(np.diff(res.train_loss) < 0)
    assert np.allclose(res.holdout_loss, [0, -2, -1, 0, 1])
    assert res.holdout_loss[-1] > res.holdout_loss[0] and res.stopped_by == "converged"


def test_early_stopping_and_keep_best_return_the_held_out_best():
    obj, start, train, hold = overfitting()
    res = opt.refine(obj, start, train, hold, patience=1, keep_best=True)
    assert res.stopped_by == "early_stop" and len(res.holdout_loss) == 3  # stopped at the first rise
    assert res.best_iter == 1 and 4 in res.best and res.best.max() == 4  # the good one, no spurious one
    late = opt.refine(obj, start, train, hold, patience=None, keep_best=True)  # keep-best alone
    assert late.best_iter == 1 and np.array_equal(late.best, res.best)


def test_trust_region_bounds_the_changes():
    obj, utility = clustered()
    train, hold = np.arange(20), np.arange(20, 40)
    s1 = opt.stage1(utility[:, train], 3)
    res = opt.refine(obj, s1, train, hold, max_swaps=1, patience=None)
    assert ((~np.isin(res.sets, s1)).sum(1) <= 1).all()
    assert res.stopped_by == "trust_region" and res.objective[-1] < res.objective[0]
    forbidden = [3, 4, 5]  # a callback trust region: cluster 1 is out of bounds
    res = opt.refine(obj, s1, train, hold, trust=lambda sets: ~np.isin(sets, forbidden).any(1), patience=None)
    assert not np.isin(res.sets, forbidden).any() and len(res.sets) > 1


def test_penalty_steers_the_search():
    obj, utility = clustered()
    train, hold = np.arange(20), np.arange(20, 40)
    step = np.zeros(12)
    step[3:6] = 10.0  # cluster 1 has a large dual step
    res = opt.two_stage(obj, utility[:, train], 3, train, hold, penalty=opt.additive_penalty(step, 1.0))
    assert not np.isin(res.best, [3, 4, 5]).any()
    assert np.allclose(res.objective, res.train_loss + 10.0 * np.isin(res.sets, [3, 4, 5]).sum(1))


def test_refine_is_deterministic_given_a_seed():
    obj, utility = clustered()
    train, hold = np.arange(20), np.arange(20, 40)
    runs = [opt.two_stage(obj, utility[:, train], 3, train, hold, max_moves=5, seed=3) for _ in range(2)]
    assert np.array_equal(runs[0].sets, runs[1].sets)
    assert np.array_equal(runs[0].holdout_loss, runs[1].holdout_loss)


def drift(n_eras=5, n_users=30, seed=0):
    """In era e, demonstrations e and e+1 are the good ones (utility 1 ± noise); the rest ~0."""
    rng = np.random.default_rng(seed)
    objectives = []
    for e in range(n_eras):
        utility = rng.normal(0, 0.05, (10, n_users))
        utility[[e, e + 1]] += 1.0
        objectives.append(PairObjective(utility))
    eras = [opt.Era(np.arange(10), np.arange(10, 20), np.arange(20, 30))] * n_eras
    return objectives, eras


def test_adapt_tracks_a_drifting_optimum():
    objectives, eras = drift()
    start = opt.stage1(objectives[0].utility[:, eras[0].train], 2)
    res = opt.adapt(objectives, eras, start, verbose=True)
    adaptive = np.array([x.mean() for x in res.adaptive_test])
    static = np.array([x.mean() for x in res.static_test])
    assert math.isclose(adaptive[0], static[0])  # the same set in era 0
    assert (adaptive[1:] < static[1:] - 0.5).all()  # the static set loses its good demonstrations
    assert [sorted(s.tolist()) for s in res.adaptive_sets] == [[e, e + 1] for e in range(5)]
    assert (res.evals > 0).all()
    # warm start: one swap per era suffices; the era-0 set would need two swaps from era 2 on
    bounded = opt.adapt(objectives, eras, start, max_swaps=1)
    assert [sorted(s.tolist()) for s in bounded.adaptive_sets] == [[e, e + 1] for e in range(5)]


@pytest.mark.parametrize(
    "call",
    [
        lambda o: opt.stage1(np.ones((3, 2)), 4),
        lambda o: opt.stage1(np.ones((3, 2)), 2, "per_group"),
        lambda o: opt.refine(o, np.array([0, 0]), np.arange(3), np.arange(3, 6)),
        lambda o: opt.refine(o, np.array([0, 99]), np.arange(3), np.arange(3, 6)),
        lambda o: opt.refine(o, np.array([0, 1]), np.arange(3), np.arange(2, 6)),  # overlap
        lambda o: opt.refine(o, np.array([0, 1]), np.arange(3), np.arange(3, 6), beam=0),
        lambda o: opt.refine(o, np.array([0, 1]), np.arange(3), np.arange(3, 6), max_moves=0),
        lambda o: opt.refine(o, np.array([0, 1]), np.arange(3), np.arange(3, 6), patience=0),
        lambda o: opt.two_stage(o, np.ones((5, 3)), 2, np.arange(3), np.arange(3, 6)),
        lambda o: opt.adapt([o], [opt.Era(np.arange(3), np.arange(3, 6), np.arange(5, 8))], np.array([0, 1])),
        lambda o: opt.brute_force(o, np.arange(3), 13),
    ],
)
def test_bad_optimiser_input(call):
    obj, _ = clustered()
    with pytest.raises(ConfigError) as err:
        call(obj)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------- regularisers: μ and the KL trust region


def test_robust_score_with_a_per_user_step_hand_computed():
    e = np.stack([np.array([[1.0, 3.0], [3.0, 5.0]])] * 2, axis=-1)  # [R=2, M=2, N=2]: mean 2 / 4, std 1
    step = np.array([[0.5, 1.0], [2.0, 0.0]])  # [M, N]: the step of demonstration m at user n's queries
    # λ = 1, μ = 2: [[2 − 1 − 1, 2 − 1 − 2], [4 − 1 − 4, 4 − 1 − 0]]
    assert np.allclose(pt.robust_score(e, lam=1.0, mu=2.0, step=step), [[0.0, -1.0], [-1.0, 3.0]])
    with pytest.raises(ConfigError, match="step"):
        pt.robust_score(e, mu=1.0, step=np.ones((2, 3)))
    with pytest.raises(ConfigError, match="step"):
        pt.robust_score(e, mu=1.0, step=np.array([np.nan, 1.0]))


def test_kl_trust_region_refuses_a_set_beyond_eps():
    zero = np.zeros((1, 2))  # one row, two candidates: uniform zero-shot distribution
    by_set = {0: [math.log(3.0), 0.0], 1: [0.0, 0.0]}  # set 0: p = (3/4, 1/4); set 1: the zero-shot p

    def scores_of(sets):  # sets [c, 1] → [c, 1 row, 2]
        return np.array([[by_set[int(s[0])]] for s in sets])

    kl0 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # KL((3/4, 1/4) ‖ (1/2, 1/2)) ≈ 0.1308
    sets = np.array([[0], [1]])
    assert pt.kl_trust_region(scores_of, zero, kl0 - 1e-6)(sets).tolist() == [False, True]
    assert pt.kl_trust_region(scores_of, zero, kl0 + 1e-6)(sets).tolist() == [True, True]
    assert pt.kl_trust_region(scores_of, zero, 0.0)(sets).tolist() == [False, True]
    assert pt.kl_trust_region(scores_of, zero, math.inf)(sets).tolist() == [True, True]
    for bad in (-0.1, float("nan"), "1"):
        with pytest.raises(ConfigError, match="eps"):
            pt.kl_trust_region(scores_of, zero, bad)


def test_kl_trust_region_inside_refine_keeps_every_visited_set_inside():
    """refine with the KL trust region never moves to a set whose mean KL exceeds ε (a constructed case:
    the better demonstrations move the predictions far from zero-shot)."""
    zero = np.zeros((3, 2))
    kl_of = np.array([0.0, 0.0, 0.05, 0.4, 0.4, 0.05])  # per demonstration; a set's KL: the mean (made up)
    loss_of = np.array([1.0, 0.9, 0.5, 0.1, 0.1, 0.6])  # per demonstration; lower is better

    class Obj:
        n_pool = 6

        def set_loss(self, users, sets):
            return loss_of[sets].sum(1)

    def scores_of(sets):  # a two-candidate distribution per row whose KL from uniform is the set's mean kl_of
        kl = kl_of[sets].mean(1)
        p = np.array([_p_with_kl(x) for x in kl])
        return np.repeat(np.log(np.stack([p, 1 - p], -1))[:, None], 3, 1)

    trust = pt.kl_trust_region(scores_of, zero, 0.1)
    res = opt.refine(Obj(), np.array([0, 1]), np.arange(3), np.arange(3, 6), trust=trust, patience=None)
    assert (kl_of[res.sets].mean(1) <= 0.1 + 1e-9).all() and res.stopped_by == "trust_region"
    free = opt.refine(Obj(), np.array([0, 1]), np.arange(3), np.arange(3, 6), patience=None)
    assert sorted(free.best.tolist()) == [3, 4] and sorted(res.best.tolist()) == [2, 5]


def _p_with_kl(kl: float) -> float:
    """p ≥ 1/2 with KL((p, 1 − p) ‖ (1/2, 1/2)) = kl (bisection; kl ≤ log 2)."""
    lo, hi = 0.5, 1.0 - 1e-12
    for _ in range(100):
        mid = (lo + hi) / 2
        val = mid * math.log(2 * mid) + (1 - mid) * math.log(2 * (1 - mid))
        lo, hi = (mid, hi) if val < kl else (lo, mid)
    return lo
