"""Tests of chapter 4's testbed study (:mod:`lrgd.robust.testbed`) on a tiny random decoder: the set
objective, the validation rows (never the test target), the robust score, the guards, the pair
interaction and the drift study's bookkeeping."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from lrgd.config import DecoderSizes, RobustSizes, WorldConfig
from lrgd.errors import ConfigError
from lrgd.robust import testbed as rt
from lrgd.testbeds import tiny_decoder as td

SIZES = RobustSizes(n_users=8, n_pool=7, k=2, n_copies=2, lams=(0.0, 1.0), lam=1.0, max_iters=3, eras=2,
                    pair_users=4, max_swaps=1)  # fmt: skip
WORLD = WorldConfig()


@pytest.fixture(scope="module")
def net():
    torch.set_num_threads(1)
    return td.build_model(
        WORLD, DecoderSizes(hidden=16, layers=1, heads=2, kv_heads=1, intermediate=32), seed=0
    )


@pytest.fixture(scope="module")
def study(net):
    return rt.build_study(net, rt.refit_world(WORLD, SIZES, 0), SIZES, seed=0)


def test_rank_loss_by_hand() -> None:
    s = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    want = [-1 + np.log(np.e + np.e**2 + np.e**3), np.log(3)]
    assert np.allclose(rt.rank_loss(s), want)


def test_refit_world_keeps_chapter_1b_items_and_refuses_other_shapes() -> None:
    w = rt.refit_world(WORLD, SIZES, 0)
    assert w.config.n_valid_next == SIZES.n_valid_next and w.config.user_noise == SIZES.user_noise
    with pytest.raises(ConfigError, match="differ from chapter 1b"):
        rt.refit_world(WORLD, SIZES, 0, latent_dim=4)


def test_validation_rows_use_validation_items_only(study) -> None:
    n, v = study.n, SIZES.n_valid_next
    assert len(study.valid) == n * v
    for j in range(v):
        assert np.array_equal(study.valid.target[j * n : (j + 1) * n], study.queries.valid[:, j])
        assert (study.valid.candidates[j * n : (j + 1) * n, 0] == study.queries.valid[:, j]).all()
    assert set(study.train_rows(3)).isdisjoint(study.holdout_rows(3))


def test_set_objective_is_the_rank_loss_of_the_prompt(study) -> None:
    obj = rt.TestbedObjective(study.net, study.valid, study.pool)
    users, sets = np.array([0, 5, 9]), np.array([[0, 1], [2, 3], [4, 6]])
    direct = rt.rank_loss(rt.scores(study.net, rt.rows(study.valid, users), study.pool, sets))
    assert np.allclose(obj.set_loss(users, sets), direct)
    # order of rows in a batch does not change a row's loss
    assert np.allclose(obj.set_loss(users[::-1], sets[::-1]), direct[::-1], atol=1e-5)


def test_robust_score_identity_and_shapes(study) -> None:
    m, n = SIZES.n_pool, SIZES.n_users
    assert study.effect.shape == (m, n) and study.robust.shape == (len(SIZES.lams), m, n)
    assert (study.robust[1] <= study.robust[0] + 1e-12).all()  # identity: λ > 0 only subtracts a spread


def test_methods_pick_distinct_pool_members_and_guards_hold(study) -> None:
    sets, searches = rt.choose(study)
    first = sets["Effect_D top-k (stage 1)"]
    for name, s in sets.items():
        assert s.shape == (SIZES.n_users, SIZES.k), name
        assert all(len(set(r)) == SIZES.k for r in s.tolist()), name
    guarded = sets["two-stage (guarded)"]
    assert (np.array([len(set(a) - set(b)) for a, b in zip(guarded.tolist(), first.tolist())]) <= 1).all()
    for r in searches["guarded"]:  # keep-best: the returned set has the lowest held-out loss seen
        assert np.isclose(r.holdout_loss[r.best_iter], min(r.holdout_loss))
    table = rt.method_table(study, sets, n_boot=200)
    assert table.index[0] == "zero-shot" and table["p (Holm)"].dropna().between(0, 1).all()


def test_pair_interaction_is_gain_minus_singles(study) -> None:
    p = rt.pair_interactions(study, 3, n_pairs=4)
    assert len(p) == 12
    assert np.allclose(p["interaction"], p["g_ab"] - p["g_a"] - p["g_b"])


def test_drift_study_static_equals_adaptive_in_era_zero(net) -> None:
    dr = rt.drift_study(net, WORLD, replace(SIZES, drift=0.5), seed=0)
    e0 = dr[dr["era"] == 0].set_index("method")["NDCG@10"]
    assert np.isclose(e0["adaptive (re-chosen each era)"], e0["static (chosen in era 0)"])
    assert sorted(dr["era"].unique()) == [0, 1]


def test_tables_round_trip_through_the_cache_format() -> None:
    """What chapter_tables stores (JSON records) reads back as the same frames: named, unnamed and
    multi-level indexes, NaN (stored as null) and booleans."""
    import pandas as pd

    frames = {
        "plain": pd.DataFrame({"a": [1.5, np.nan], "b": [True, False]}),
        "labelled": pd.DataFrame({"x": [0.1, 0.2]}, index=["first", "second"]),
        "multi": pd.DataFrame(
            {"v": [1.0, 2.0]}, index=pd.MultiIndex.from_tuples([("s", 1), ("t", 2)], names=["s", "n"])
        ),
    }
    for name, df in frames.items():
        back = rt._frame(json.loads(json.dumps(rt._records(df))))
        if name == "labelled":
            back = back.rename_axis(None)
        pd.testing.assert_frame_equal(back, df, check_dtype=False, check_index_type=False)
