"""Tests of testbed B's options for demonstration selection (chapter 4): validation next items,
calendar time, noise kinds the Bayes observer knows, and the observer for the tested condition.

The fixture ``tests/fixtures/recworld_chapter1b.npz`` holds the arrays :func:`old_api_draws` produced
with ``lrgd/testbeds/recworld.py`` as it was before these options (commit 72cbffe); regenerate it from a
commit with ``python tests/test_recworld_select.py COMMIT`` (only if chapter 1b's sampler is meant to
change).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chi2

from lrgd.config import WorldConfig, get_profile
from lrgd.errors import ConfigError
from lrgd.metrics import bootstrap_ci
from lrgd.testbeds import recworld as rw

FIXTURE = Path(__file__).parent / "fixtures" / "recworld_chapter1b.npz"
FIXTURE_COMMIT = "72cbffe"


def old_api_draws(rw) -> dict[str, np.ndarray]:
    """Draws and Bayes quantities through the API of chapter 1b only (default arguments): the arrays
    the fixture holds. ``rw`` is a recworld module (today's, or the one of the fixture's commit)."""
    out = {}
    worlds = {
        "ci": WorldConfig(),
        "noisy": WorldConfig(n_items=24, n_clusters=2, groups_per_cluster=3, latent_dim=4, user_noise=0.3,
                             drift=0.2, history_len=2, demo_history_len=3, n_candidates=6),
    }  # fmt: skip
    for name, cfg in worlds.items():
        w = rw.RecWorld.generate(cfg, 3)
        q = w.sample_queries(7, np.random.default_rng([name == "ci", 1]))
        for f in ("group", "pref", "history", "target", "candidates"):
            out[f"{name}/q/{f}"] = getattr(q, f)
        kinds = {**{k: k for k in (*rw.KINDS, "mixed")}, "array": np.arange(21).reshape(7, 3) % 3}
        for kname, kinds_arg in kinds.items():
            d = w.sample_demos(q.group, kinds_arg, 3, np.random.default_rng([len(kname), 2]))
            for f in ("kind", "group", "history", "next_item"):
                out[f"{name}/d/{kname}/{f}"] = getattr(d, f)
        b = w.sample_prompts(9, 2, np.random.default_rng(5))
        out[f"{name}/prompt/tokens"] = b.tokens()
        out[f"{name}/bayes"] = w.bayes_scores(b)
        out[f"{name}/bayes_nodemo"] = w.bayes_scores(b, use_demos=False)
        out[f"{name}/bayes_prior"] = w.bayes_scores(b, kind_probs=(0.2, 0.3, 0.5))
        out[f"{name}/posterior"] = w.group_log_posterior(b)
        out[f"{name}/evidence"] = w.demo_log_evidence(b)
        out[f"{name}/usefulness"] = w.demo_usefulness(b)
        out[f"{name}/oracle"] = w.oracle_scores(b)
        out[f"{name}/popularity"] = w.popularity_scores(b)
        out[f"{name}/with_demos"] = w.with_demos(q, 4, "mixed", np.random.default_rng(6)).tokens()
    return out


def chi_square(counts: np.ndarray, p: np.ndarray) -> float:
    """Pearson's statistic of ``counts`` against the law ``p`` (cells of tiny expectation pooled)."""
    e = counts.sum() * p
    big = e >= 5
    o, e = np.append(counts[big], counts[~big].sum()), np.append(e[big], e[~big].sum())
    keep = e > 0
    return float(((o[keep] - e[keep]) ** 2 / e[keep]).sum()), int(keep.sum() - 1)


def one_group_world(**overrides) -> rw.RecWorld:
    """12 items, one group whose taste u lies far from its cluster centre c (so next items, drawn from
    u, and history items, drawn from c + 0.2 (u − c), follow clearly different laws); drift along a."""
    cfg = WorldConfig(n_items=12, n_clusters=1, groups_per_cluster=2, latent_dim=2, temperature=0.5,
                      history_len=2, n_candidates=5, **overrides)  # fmt: skip
    rng = np.random.default_rng(0)
    return rw.RecWorld(
        cfg,
        0,
        item_vecs=rng.standard_normal((12, 2)),
        item_bias=0.3 * rng.standard_normal(12),
        centres=np.zeros((1, 2)),
        group_prefs=np.array([[1.5, -1.0], [-1.5, 1.0]]),
        drift_dirs=np.array([[0.0, 1.0], [0.0, -1.0]]),
        cluster_of=np.array([0, 0]),
    )


# ----------------------------------------------------------------------------- defaults: chapter 1b


def test_defaults_reproduce_chapter_1b_bit_for_bit():
    """Every draw and Bayes array of chapter 1b's API equals the one the code before chapter 4 produced."""
    old = np.load(FIXTURE)
    new = old_api_draws(rw)
    assert set(new) == set(old.files)
    for key in old.files:
        assert new[key].shape == old[key].shape and np.array_equal(new[key], old[key]), key
    assert WorldConfig().n_valid_next == 0 and rw.KINDS == ("same", "other", "corrupted")
    assert (rw.SAME, rw.OTHER, rw.CORRUPTED) == (0, 1, 2)
    q = rw.RecWorld.generate(WorldConfig(), 0).sample_queries(4, np.random.default_rng(0))
    assert q.valid.shape == (4, 0) and q.t0 == 0 and q.target_t == q.history.shape[1]


# ----------------------------------------------------------------------------- validation next items


def test_validation_items_follow_the_users_own_taste():
    """On a one-group world the validation items' frequencies match p(i | u, t) of a *next* item at their
    calendar time (t0 + Lh + j, with drift), and are rejected as draws from the history law."""
    w = one_group_world(n_valid_next=2, drift=0.4)
    n, t0 = 6000, 5
    q = w.sample_queries(n, np.random.default_rng(1), group=np.zeros(n, dtype=int), t0=t0)
    lh = q.history.shape[1]
    assert q.valid.shape == (n, 2) and q.target_t == t0 + lh + 2
    cut = chi2.ppf(0.999, 11)
    for j, t in enumerate((t0 + lh, t0 + lh + 1)):
        counts = np.bincount(q.valid[:, j], minlength=12)
        stat, df = chi_square(counts, np.exp(w.group_log_probs(t, True)[0]))
        assert stat < chi2.ppf(0.999, df), (j, stat)
        assert chi_square(counts, np.exp(w.group_log_probs(t, False)[0]))[0] > cut  # not the history law
        assert chi_square(counts, np.exp(w.group_log_probs(t0, True)[0]))[0] > cut  # its time, not t0
    target = np.bincount(q.target, minlength=12)
    assert chi_square(target, np.exp(w.group_log_probs(q.target_t, True)[0]))[0] < cut
    history = np.bincount(q.history[:, 0], minlength=12)
    assert chi_square(history, np.exp(w.group_log_probs(t0, False)[0]))[0] < cut


def test_validation_items_follow_the_user_not_the_group():
    """With user noise the validation items are likelier under their own user's u than another user's."""
    w = one_group_world(n_valid_next=3, user_noise=1.0)
    q = w.sample_queries(3000, np.random.default_rng(2), group=np.zeros(3000, dtype=int))
    lp = rw._log_softmax(w.logits(q.pref, q.group, 0, True))  # time is irrelevant without drift
    own = np.take_along_axis(lp, q.valid, 1).mean(1)
    other = np.take_along_axis(np.roll(lp, 1, axis=0), q.valid, 1).mean(1)
    assert bootstrap_ci(own - other, seed=0)[1] > 0.1


def test_validation_queries_hide_the_target():
    w = rw.RecWorld.generate(replace(WorldConfig(), n_valid_next=2), 0)
    q = w.sample_queries(50, np.random.default_rng(3), t0=4)
    vq = w.validation_queries(q, 1, np.random.default_rng(4))
    assert np.array_equal(vq.target, q.valid[:, 1]) and np.array_equal(vq.candidates[:, 0], q.valid[:, 1])
    assert np.array_equal(vq.valid, q.valid[:, :1]) and np.array_equal(vq.history, q.history)
    assert vq.target_t == 4 + q.history.shape[1] + 1 == q.target_t - 1
    assert all(len(set(c)) == len(c) for c in vq.candidates)  # distinct candidates, the target once
    # the held-out target plays no part: changing it changes nothing
    leaked = replace(q, target=(q.target + 1) % 96, candidates=q.candidates[:, ::-1])
    again = w.validation_queries(leaked, 1, np.random.default_rng(4))
    assert np.array_equal(again.candidates, vq.candidates)
    with pytest.raises(ConfigError, match="validation item j=2"):
        w.validation_queries(q, 2, np.random.default_rng(0))


def test_item_information_by_hand():
    """Identity check: I(g; i) for p(·|g0) = (4, 2, 1)/7, p(·|g1) = (1, 2, 4)/7 and a uniform group."""
    w = hand_world()
    p0, mix = np.array([4, 2, 1]) / 7, np.array([5, 4, 5]) / 14
    assert math.isclose(w.item_group_information(), -(mix * np.log(mix)).sum() + (p0 * np.log(p0)).sum())


def test_a_validation_next_item_tells_the_group_better_than_a_history_item():
    """Given the history, a validation next item (own taste) moves log p(g* | ·) by several times what the
    last history item (cluster-pulled taste) adds to the items before it. Chance: 0 for both."""
    w = rw.RecWorld.generate(replace(get_profile("ci").world, n_valid_next=1), 0)
    q = w.sample_queries(3000, np.random.default_rng(5))
    valid = w.validation_usefulness(q)[:, 0]
    idx = np.arange(len(q))
    full = rw._log_softmax(w._loglik_groups(q.history, 0, False))[idx, q.group]
    short = rw._log_softmax(w._loglik_groups(q.history[:, :-1], 0, False))[idx, q.group]
    _, v_lo, _ = bootstrap_ci(valid, seed=0)
    _, _, h_hi = bootstrap_ci(full - short, seed=0)
    assert v_lo > 3 * h_hi > 0, (v_lo, h_hi)
    assert w.item_group_information(0, True) > 2 * w.item_group_information(0, False)


# ----------------------------------------------------------------------------- calendar time


def hand_world(kind_probs=(1.0, 0.0, 0.0), drift: float = 0.0) -> rw.RecWorld:
    """3 items v = (1, 0, −1), 2 groups u = ±ln 2: p(·|g0) = (4, 2, 1)/7, p(·|g1) = (1, 2, 4)/7 at t = 0.
    With ``drift`` = ln 2 and a = ∓1 the tastes are u0(t) = ln 2 (1 − t), u1(t) = ln 2 (t − 1): uniform
    at t = 1 and swapped at t = 2."""
    cfg = WorldConfig(n_items=3, n_clusters=1, groups_per_cluster=2, latent_dim=1, temperature=1.0,
                      history_specificity=1.0, history_len=1, demo_history_len=1, n_candidates=3,
                      kind_probs=kind_probs, drift=drift, k_max=1)  # fmt: skip
    ln2 = math.log(2)
    return rw.RecWorld(cfg, 0, np.array([[1.0], [0.0], [-1.0]]), np.zeros(3), np.zeros((1, 1)),
                       np.array([[ln2], [-ln2]]), np.array([[-1.0], [1.0]]), np.array([0, 0]))  # fmt: skip


def hand_batch(q_t0: int, d_t0: int) -> rw.PromptBatch:
    """A query with history (item 0) and one demonstration (item 2 → item 2), at the given times."""
    q = rw.Queries(np.array([0]), np.array([[math.log(2)]]), np.array([[0]]), np.array([0]),
                   np.array([[0, 1, 2]]), t0=q_t0)  # fmt: skip
    one = np.ones((1, 1), dtype=int)
    d = rw.Demos(rw.SAME * one, one, 2 * one[..., None], 2 * one, d_t0)
    return rw.PromptBatch(q, d)


def test_drift_across_eras_by_hand():
    w = hand_world(drift=math.log(2))
    nodemo = dict(use_demos=False)
    # history item 0 at t = 0: posterior (4, 1)/5; at t = 2 the tastes have swapped: (1, 4)/5
    assert np.allclose(np.exp(w.group_log_posterior(hand_batch(0, 0), **nodemo)), [[0.8, 0.2]])
    assert np.allclose(np.exp(w.group_log_posterior(hand_batch(2, 0), **nodemo)), [[0.2, 0.8]])
    # the demonstration read at its own era: history at t = 1 (uniform, no evidence), next item 2 at
    # t = 2 (p = 4/7 under g0, 1/7 under g1): with the query at t = 0, posterior ∝ (0.8·4, 0.2·1)
    assert np.allclose(np.exp(w.group_log_posterior(hand_batch(0, 1))), [[16 / 17, 1 / 17]])
    # read at era 0 the same tokens point the other way: history item 2 at t = 0 (1/7 vs 4/7), next
    # item at t = 1 uniform → ∝ (0.8·1, 0.2·4)
    assert np.allclose(np.exp(w.group_log_posterior(hand_batch(0, 0))), [[0.5, 0.5]])
    # the target sits at t0 + Lh = 3: u0 = −2 ln 2 → p(·|g0) ∝ (1/4, 1, 4)
    p0 = np.array([0.25, 1, 4]) / 5.25
    assert np.allclose(np.exp(w.oracle_scores(hand_batch(2, 0))), [p0])


def test_samplers_set_calendar_time():
    w = rw.RecWorld.generate(WorldConfig(drift=0.3), 0)
    b = w.sample_prompts(3, 2, np.random.default_rng(0), "mixed", t0=3, demo_t0=9)
    assert (b.queries.t0, b.demos.t0, b.demos.first(1).t0) == (3, 9, 9)
    assert w.with_demos(b.queries, 2, "same", np.random.default_rng(1)).demos.t0 == 3
    assert w.with_demos(b.queries, 2, "same", np.random.default_rng(1), t0=-2).demos.t0 == -2
    assert w.sample_demos(b.queries.group, "other", 1, np.random.default_rng(2), t0=7).t0 == 7


def test_eras_move_the_posterior_only_with_drift():
    """Demonstrations of era A = 0, queries of era B = 6. The observer that reads each era's time gives
    the true group more log-posterior than one that assumes every sequence starts at t = 0; without drift
    the two are identical (identity check)."""
    for drift, must_differ in ((0.35, True), (0.0, False)):
        w = rw.RecWorld.generate(replace(get_profile("ci").world, drift=drift), 0)
        b = w.sample_prompts(1500, 3, np.random.default_rng(6), "same", t0=6, demo_t0=0)
        idx = np.arange(len(b))
        right_lp = w.group_log_posterior(b)[idx, b.queries.group]
        for wrong in (
            rw.PromptBatch(replace(b.queries, t0=0), b.demos),  # the queries' era misread
            rw.PromptBatch(b.queries, replace(b.demos, t0=6)),  # the demonstrations' era misread
        ):
            wrong_lp = w.group_log_posterior(wrong)[idx, b.queries.group]
            if must_differ:
                assert bootstrap_ci(right_lp - wrong_lp, seed=0)[1] > 0.05
            else:
                assert np.allclose(right_lp, wrong_lp)


# ----------------------------------------------------------------------------- noise kinds


def kinds_world() -> rw.RecWorld:
    """4 items, demonstrations of 2 items (16 possible), 2 clusters × 3 groups, with drift."""
    cfg = WorldConfig(n_items=4, n_clusters=2, groups_per_cluster=3, latent_dim=3, temperature=0.6,
                      popularity=1.0, drift=0.2, history_len=1, demo_history_len=1,
                      n_candidates=3)  # fmt: skip
    return rw.RecWorld.generate(cfg, 2)


@pytest.mark.parametrize("kind", rw.ALL_KINDS)
def test_each_kinds_likelihood_matches_monte_carlo(kind):
    """The observer's p(d | query group, kind) against the frequencies of 20 000 sampled demonstrations
    (query group 1, era t0 = 3): a chi-square test over the 16 possible demonstrations."""
    w, n, t0 = kinds_world(), 20000, 3
    d = w.sample_demos(np.ones(n, dtype=int), kind, 1, np.random.default_rng([7, len(kind)]), t0=t0)
    assert (d.kind == rw.ALL_KINDS.index(kind)).all() and d.t0 == t0
    seq = d.items()[:, 0]  # [n, 2]
    counts = np.bincount(seq[:, 0] * 4 + seq[:, 1], minlength=16)
    every = np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), -1).reshape(1, 16, 2)
    zeros = np.zeros((1, 16), dtype=int)
    table = rw.Demos(zeros, zeros, every[..., :1], every[..., 1], t0)
    p = np.exp(w.kind_log_likelihoods(table, (kind,))[0, :, 1, 0])  # [16] for query group 1
    assert math.isclose(p.sum(), 1.0, rel_tol=1e-9)  # identity: a distribution over the 16
    stat, df = chi_square(counts, p)
    assert stat < chi2.ppf(0.999, df), stat
    if kind != "corrupted":  # and the test has power: uniform items are rejected
        assert chi_square(counts, np.full(16, 1 / 16))[0] > chi2.ppf(0.999, 15)


def test_kind_groups():
    w = kinds_world()
    qg = np.arange(6).repeat(50)
    for kind, check in {
        "flipped": lambda g: g == qg[:, None],
        "popular": lambda g: g == -1,
        "cluster": lambda g: (g != qg[:, None]) & (w.cluster_of[g] == w.cluster_of[qg][:, None]),
    }.items():
        d = w.sample_demos(qg, kind, 2, np.random.default_rng(0))
        assert check(d.group).all(), kind
    d = w.sample_demos(qg, "cluster", 2, np.random.default_rng(0))
    assert len(set(zip(qg.repeat(2), d.group.ravel()))) == 12  # both cluster-mates of every group occur


def test_usefulness_of_the_noise_kinds():
    """Read by the observer of their condition: flipped demonstrations keep their history's weak evidence
    for the group, cluster-mates point away from it, and popular ones tell nothing (0 nats: identity)."""
    w = rw.RecWorld.generate(get_profile("ci").world, 0)
    prior = {"same": 0.4, "flipped": 0.3, "cluster": 0.3}
    b = w.sample_prompts(1200, 1, np.random.default_rng(3), prior)
    u, kind = w.demo_usefulness(b, kind_probs=prior)[:, 0], b.demos.kind[:, 0]
    ci = {name: bootstrap_ci(u[kind == rw.ALL_KINDS.index(name)], seed=0) for name in prior}
    assert ci["same"][1] > ci["flipped"][2] and ci["flipped"][1] > 0 > ci["cluster"][2]
    tab = rw.usefulness_table(u, kind, seed=0)
    assert list(tab.index) == ["same", "other", "corrupted", "flipped", "cluster"]
    assert tab.loc["flipped", "mean"] == pytest.approx(u[kind == rw.FLIPPED].mean())
    pop = w.sample_prompts(50, 2, np.random.default_rng(4), "popular")
    assert np.allclose(w.demo_usefulness(pop, kind_probs={"popular": 1.0}), 0.0)


def test_evidence_mixes_the_kinds_by_their_prior():
    """Identity checks of Eq. (B4) and backward compatibility of ``kind_probs``."""
    w = kinds_world()
    b = w.sample_prompts(40, 3, np.random.default_rng(8), {"same": 0.4, "flipped": 0.3, "cluster": 0.3})
    prior = {"same": 0.1, "other": 0.2, "corrupted": 0.1, "flipped": 0.2, "popular": 0.1, "cluster": 0.3}
    L = w.kind_log_likelihoods(b.demos)
    p = np.array([prior[k] for k in rw.ALL_KINDS])
    assert np.allclose(w.demo_log_evidence(b, prior), np.log((np.exp(L) * p).sum(-1)))
    assert np.allclose(w.demo_log_evidence(b, p), w.demo_log_evidence(b, prior))
    three = (0.5, 0.3, 0.2)
    assert np.array_equal(w.demo_log_evidence(b, three), w.demo_log_evidence(b, (*three, 0, 0, 0)))
    assert np.array_equal(w.demo_log_evidence(b, dict(zip(rw.KINDS, three))), w.demo_log_evidence(b, three))
    cond = rw.condition_prior(b.demos)
    assert math.isclose(cond.sum(), 1.0) and cond[rw.OTHER] == cond[rw.POPULAR] == 0
    assert np.array_equal(cond, np.bincount(b.demos.kind.ravel(), minlength=6) / b.demos.kind.size)
    assert np.array_equal(w.bayes_scores(b, kind_probs="condition"), w.bayes_scores(b, kind_probs=cond))


# ----------------------------------------------------------------------------- the observer for the condition


def test_condition_aware_observer_beats_the_training_prior_off_prior():
    """With six other-group demonstrations the training-prior observer reads them as likely same-group
    evidence; the observer that knows the condition uses them as evidence *against* their groups.
    Expected log p(target) is maximised by the condition's true posterior (a proper scoring rule), so
    the condition-aware observer must win on it, and it must not lose on NDCG@10 (4 000 prompts)."""
    w = rw.RecWorld.generate(get_profile("ci").world, 0)
    b = w.sample_prompts(4000, 6, np.random.default_rng(9), "other")
    train, cond = w.bayes_scores(b), w.bayes_scores(b, kind_probs="condition")
    assert bootstrap_ci(cond[:, 0] - train[:, 0], seed=0)[1] > 0.5  # nats of log p(target)
    ndcg = {name: rw.ranking_metrics(s)["NDCG@10"] for name, s in (("train", train), ("cond", cond))}
    assert bootstrap_ci(ndcg["cond"] - ndcg["train"], seed=0)[1] > 0.05
    # on the training prior's own condition the two observers are one and the same (identity check)
    mixed = w.sample_prompts(50, 6, np.random.default_rng(10))
    assert np.array_equal(w.bayes_scores(mixed), w.bayes_scores(mixed, kind_probs=w.config.kind_probs))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda w, g, r: w.sample_demos(g, "random", 1, r), "unknown demonstration kind 'random'"),
        (lambda w, g, r: w.sample_demos(g, np.full((3, 1), 6), 1, r), "kind codes must be integers 0..5"),
        (lambda w, g, r: w.sample_demos(g, {"flip": 1.0}, 1, r), r"unknown kind\(s\) \['flip'\]"),
        (lambda w, g, r: w.sample_demos(g, "same", 1, r, t0=float("nan")), "t0=nan must be a finite"),
        (lambda w, g, r: w.sample_queries(3, r, t0="late"), "t0='late' must be a finite"),
        (lambda w, g, r: w.kind_log_likelihoods(w.sample_demos(g, "same", 1, r), ("noise",)), "unknown"),
    ],
)
def test_bad_kinds_and_times_raise_one_clear_line(call, match):
    w = rw.RecWorld.generate(WorldConfig(), 0)
    with pytest.raises(ConfigError, match=match) as err:
        call(w, np.zeros(3, dtype=int), np.random.default_rng(0))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "kind_probs, match",
    [
        ((0.5, 0.5, 0.5), "sum to 1"),
        ((1.2, -0.2, 0.0), "non-negative"),
        ((1.0, 0.0), "vector of 3..6"),
        ((0.5, 0.5, 0, 0, 0, 0, 0), "vector of 3..6"),
        ({"same": 0.5, "noisy": 0.5}, "unknown kind"),
        ("train", "the one name accepted is 'condition'"),
        (("a", "b", "c"), "vector of 3..6"),
    ],
)
def test_bad_kind_probs_raise_one_clear_line(kind_probs, match):
    w = rw.RecWorld.generate(WorldConfig(), 0)
    b = w.sample_prompts(3, 2, np.random.default_rng(0))
    with pytest.raises(ConfigError, match=match) as err:
        w.bayes_scores(b, kind_probs=kind_probs)
    assert "\n" not in str(err.value)


def test_bad_world_options():
    with pytest.raises(ConfigError, match="n_valid_next=-1 must be ≥ 0"):
        get_profile("ci").section("world", n_valid_next=-1)
    single = rw.RecWorld.generate(WorldConfig(n_clusters=4, groups_per_cluster=1), 0)
    b = single.sample_prompts(3, 1, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="'cluster' needs groups_per_cluster ≥ 2"):
        single.sample_demos(np.zeros(3, dtype=int), "cluster", 1, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="'cluster' needs groups_per_cluster ≥ 2"):
        single.bayes_scores(b, kind_probs={"cluster": 1.0})
    with pytest.raises(ConfigError, match="at least one demonstration"):
        rw.condition_prior(np.zeros((3, 0), dtype=int))


# ----------------------------------------------------------------------------- the fixture


def _write_fixture(commit: str) -> None:  # pragma: no cover - run by hand only
    """Regenerate the fixture with ``lrgd/testbeds/recworld.py`` of ``commit`` (loaded from git)."""
    import importlib.util
    import subprocess
    import sys
    import tempfile

    src = subprocess.run(["git", "show", f"{commit}:lrgd/testbeds/recworld.py"], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).parents[1]).stdout  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recworld_old.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location("recworld_old", path)
        old = importlib.util.module_from_spec(spec)
        sys.modules["recworld_old"] = old  # dataclasses look their module up
        spec.loader.exec_module(old)
        np.savez_compressed(FIXTURE, **old_api_draws(old))


if __name__ == "__main__":  # pragma: no cover
    import sys

    _write_fixture(sys.argv[1] if len(sys.argv) > 1 else FIXTURE_COMMIT)
