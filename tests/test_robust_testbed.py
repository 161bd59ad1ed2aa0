"""Tests of chapter 4's testbed study (:mod:`lrgd.robust.testbed`) on a tiny random decoder: the set
objective, the validation rows (never the test target), the robust score, the guards, the pair
interaction and the drift study's bookkeeping."""

from __future__ import annotations

import json
import math
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


# --------------------------------------------------------------------- regularisers and popularity collapse


def test_dual_share_by_hand() -> None:
    """Z_D / (Z_Z + Z_D) averaged over layers, heads and positions, on one-dimensional keys and queries."""
    from lrgd.demos.effect import DemoState, UserState

    t = torch.tensor
    # layer 0: query 1, zero-shot log Z = log 2. Demo a: two keys scoring 0 → Z_D = 2 → share 1/2;
    # demo b: one key scoring log 2 → Z_D = 2 → 1/2 (padding must not count). Layer 1: log Z = log 6:
    # demo a's keys score 0 → 2 / 8 = 1/4; demo b's key scores log 2 → 2 / 8 = 1/4 ... then b's layer-1 key
    # is changed to score log 6 → 6 / 12 = 1/2.
    kz, l2 = t([[[0.0], [0.0]]], dtype=torch.float64), math.log(2)
    a = DemoState(k=[kz, kz], v=[kz, kz])
    b = DemoState(k=[t([[[l2]]], dtype=torch.float64), t([[[math.log(6)]]], dtype=torch.float64)],
                  v=[t([[[0.0]]], dtype=torch.float64)] * 2)  # fmt: skip
    one = t([[[1.0]]], dtype=torch.float64)  # [H=1, P=1, d=1]
    u = UserState(q=[one, one], out=[one, one], grad=[one, one],
                  log_z=[t([[l2]], dtype=torch.float64), t([[math.log(6)]], dtype=torch.float64)],
                  scaling=[1.0, 1.0], loss=0.0)  # fmt: skip
    assert np.allclose(rt.dual_share([a, b], [u]), [[(1 / 2 + 1 / 4) / 2], [(1 / 2 + 1 / 2) / 2]])


def test_study_step_is_a_share_and_the_mu_term_is_wired_to_it(study) -> None:
    assert study.step.shape == (SIZES.n_pool, SIZES.n_users)
    assert ((study.step > 0) & (study.step < 1)).all()
    assert study.noisy.shape == (SIZES.n_copies, SIZES.n_pool, SIZES.n_users)
    # the stored λ-scores are Eq. (R1) of the stored copies (μ = 0)
    assert np.allclose(study.robust[1], study.noisy.mean(0) - 1.0 * study.noisy.std(0))
    # stage 2 with the penalty: the objective is the train loss plus μ · Σ step_D of the user's set
    first = rt.opt.stage1(study.effect, SIZES.k, "per_user")
    for i, r in zip(range(3), rt.refine_users(study, first, True, np.arange(3), mu=5.0)):
        assert np.allclose(r.objective - r.train_loss, 5.0 * study.step[r.sets, i].sum(1))


def test_cached_objective_equals_the_plain_one_and_caches(study) -> None:
    plain = rt.TestbedObjective(study.net, study.valid, study.pool)
    cached = rt.CachedObjective(study.net, study.valid, study.pool)
    users, sets = np.array([0, 5, 9, 0]), np.array([[0, 1], [2, 3], [4, 6], [0, 1]])
    assert np.allclose(cached.set_loss(users, sets), plain.set_loss(users, sets), atol=1e-5)
    assert len(cached.cache) == 3  # the repeated (row, set) is scored once
    assert np.allclose(cached.set_loss(users[:1], sets[:1]), plain.set_loss(users[:1], sets[:1]), atol=1e-5)


def test_kl_trust_region_refuses_sets_beyond_eps_on_the_testbed(study) -> None:
    """Every set a KL-guarded search visits after its start lies inside ε on the user's train items."""
    from lrgd.robust import perturb as pt

    first, users = rt.opt.stage1(study.effect, SIZES.k, "per_user"), np.arange(4)
    zero = rt.scores(study.net, study.valid, study.pool, np.zeros((len(study.valid), 0), int))
    start_kl = [_mean_kl(study, first[i : i + 1], i, zero[study.train_rows(i)], pt) for i in users]
    eps = float(np.median(start_kl))
    runs = rt.refine_users(study, first, False, users, eps=eps)
    for i, r in zip(users, runs):
        assert all(
            _mean_kl(study, s[None], i, zero[study.train_rows(i)], pt) <= eps + 1e-6 for s in r.sets[1:]
        )
    assert any(r.stopped_by == "trust_region" for r in runs) or any(len(r.sets) > 1 for r in runs)


def test_a_trust_region_around_the_start_bounds_every_step_from_it(study) -> None:
    """Centred on the stage-1 set: every set the search visits lies within ε of the start's predictions
    on the user's train items (one-line error for an unknown centre)."""
    from lrgd.robust import perturb as pt

    first, users = rt.opt.stage1(study.effect, SIZES.k, "per_user"), np.arange(4)
    runs = rt.refine_users(study, first, False, users, eps=0.02, around="start")
    for i, r in zip(users, runs):
        rows_ = study.train_rows(i)
        ref = rt.scores(
            study.net, rt.rows(study.valid, rows_), study.pool, np.repeat(first[i : i + 1], len(rows_), 0)
        )
        assert all(_mean_kl(study, s[None], i, ref, pt) <= 0.02 + 1e-6 for s in r.sets)
    with pytest.raises(rt.ConfigError, match="centred on one of zero-shot, start"):
        rt.refine_users(study, first, False, users[:1], eps=0.1, around="history")


def _mean_kl(st, set_, i, ref, pt) -> float:
    """Mean KL(p_set ‖ p_ref) over user i's train rows; ``ref`` [len(train rows), C]."""
    train = st.train_rows(i)
    s = rt.scores(st.net, rt.rows(st.valid, train), st.pool, np.repeat(set_, len(train), 0))
    return float(pt.kl_from_zero_shot(s, ref).mean())


def test_popularity_by_hand() -> None:
    candidates = np.array([[0, 1, 2], [0, 3, 4]])
    s = np.array([[3.0, 2.0, 1.0], [5.0, 1.0, 4.0]])  # top 2: {0, 1} and {0, 4}
    pop = rt.popularity(candidates, s, n_items=10, k=2)
    # 3 of 10 items covered; counts [2, 1, 0, 0, 1, 0 …]: Σ|x_i − x_j| = 60 over ordered pairs,
    # 2 · n² · mean = 2 · 100 · 0.4 = 80 → Gini 0.75
    assert pop == {"coverage@2": pytest.approx(0.3), "Gini@2": pytest.approx(0.75)}
    same = rt.popularity(np.array([[0, 1], [0, 1]]), np.array([[1.0, 0.0], [1.0, 0.0]]), n_items=4, k=1)
    assert same == {"coverage@1": pytest.approx(0.25), "Gini@1": pytest.approx(0.75)}  # one item: (n − 1)/n


def test_mu_and_trust_tables_agree_with_the_methods(study) -> None:
    st = replace(study, sizes=replace(SIZES, mus=(0.0, 1e6), kl_eps=(1e-9,), sweep_users=3))
    sets, searches = rt.choose(st)
    mu = rt.mu_tradeoff(st, 3, searches["guarded"]).set_index(["stage", "μ"])
    s1 = mu.xs(0.0, level="μ").iloc[0]
    robust = sets[f"robust Effect_D top-k (λ = {SIZES.lam:g})"]
    assert np.isclose(s1["NDCG@10"], rt.ndcg(st, robust).mean())  # μ = 0: the robust selector of the table
    # μ huge: stage 1 picks, per user, the k demonstrations with the smallest step_D
    small = np.argsort(st.step, axis=0, kind="stable")[: SIZES.k].T
    smallest = np.take_along_axis(st.step.T, small, 1).mean()
    assert np.isclose(mu.xs(1e6, level="μ").iloc[0]["mean step_D"], smallest)
    tr = rt.trust_tradeoff(st, 3, searches["unguarded"]).set_index("ε")
    assert list(tr.index) == ["stage 1 (start)", "1e-09", "∞ (unguarded)"]
    # ε ≈ 0 admits no set with demonstrations: every search keeps its start (stage 1)
    assert np.isclose(tr.loc["1e-09", "NDCG@10"], tr.loc["stage 1 (start)", "NDCG@10"])
    unguarded = rt.ndcg(st, sets["two-stage (no guards)"])[:3].mean()
    assert np.isclose(tr.loc["∞ (unguarded)", "NDCG@10"], unguarded)
    # centred on the start set: the start is at KL 0, and a search that starts inside stays inside
    st2 = replace(st, sizes=replace(st.sizes, kl_eps=(0.05,)))
    ts = rt.trust_tradeoff(st2, 3, searches["unguarded"], around="start").set_index("ε")
    assert (ts["around"] == "start").all() and ts.loc["stage 1 (start)", "KL (train items)"] == pytest.approx(
        0
    )
    assert ts.loc["0.05", "inside ε"] == 1.0 and ts.loc["0.05", "KL (train items)"] <= 0.05 + 1e-6
    assert np.isclose(ts.loc["∞ (unguarded)", "NDCG@10"], unguarded)  # ∞: the same unguarded search
    pop = rt.popularity_table(st, sets)
    assert pop.index[0] == "zero-shot" and pop.loc["zero-shot", "KL from zero-shot"] == 0
    assert pop[["coverage@10", "Gini@10"]].apply(lambda c: c.between(0, 1)).all().all()


@pytest.mark.parametrize("bad", [{"mus": (1.0, 2.0)}, {"mus": ()}, {"mus": (0.0, -1.0)}, {"kl_eps": (0.0,)},
                                 {"kl_eps": (math.inf,)}, {"sweep_users": 0}])  # fmt: skip
def test_bad_mu_and_eps_sizes_are_one_line_config_errors(bad) -> None:
    with pytest.raises(ConfigError) as err:
        replace(SIZES, **bad).validate()
    assert "\n" not in str(err.value)


def test_chapter_tables_resume_after_an_interruption(tmp_path, monkeypatch) -> None:
    """An interrupted run keeps the tables it finished (one part file each); the rerun computes only the
    missing ones, returns what an uninterrupted run returns and removes the parts."""
    from lrgd.config import get_profile

    fail = {"b"}
    calls = _fake_tables(monkeypatch, tmp_path, fail)
    prof = get_profile("ci")
    with pytest.raises(KeyboardInterrupt):
        rt.chapter_tables(None, "w", prof)
    parts = tmp_path / "ci" / "robust" / "testbed-tables.parts"
    assert sorted(p.name for p in parts.iterdir()) == ["a.json"]
    assert not (tmp_path / "ci" / "robust" / "testbed-tables.json").exists()  # never a half-written whole

    fail.clear()
    calls.clear()
    tables, hit = rt.chapter_tables(None, "w", prof)
    assert calls == ["b", "c"] and not hit  # "a" came from its part
    assert {k: float(v["v"].iloc[0]) for k, v in tables.items()} == {"a": 1.0, "b": 2.0, "c": 3.0}
    assert not parts.exists()
    calls.clear()
    assert rt.chapter_tables(None, "w", prof)[1] and calls == []  # now the whole is cached

    # a part stored under another key (other weights) is not served
    fail.add("b")
    with pytest.raises(KeyboardInterrupt):
        rt.chapter_tables(None, "other weights", prof)
    assert (parts / "a.json").is_file()
    fail.clear()
    calls.clear()
    rt.chapter_tables(None, "newer weights", prof)
    assert calls == ["a", "b", "c"]


def _fake_tables(monkeypatch, tmp_path, fail: set[str]) -> list[str]:
    """chapter_tables with three cheap tables a, b, c under ``tmp_path``; a name in ``fail`` interrupts the
    run there. Returns the list of names computed (appended as they are)."""
    import pandas as pd

    monkeypatch.setattr(rt, "results_dir", lambda profile: tmp_path / profile)
    calls: list[str] = []

    def maker(name: str, value: float):
        def make() -> pd.DataFrame:
            calls.append(name)
            if name in fail:
                raise KeyboardInterrupt  # the run stops here
            return pd.DataFrame({"v": [value]})

        return make

    makers = {"a": maker("a", 1.0), "b": maker("b", 2.0), "c": maker("c", 3.0)}
    monkeypatch.setattr(rt._Tables, "makers", lambda self: makers)
    return calls


def test_chapter_tables_shared_out_between_runs(tmp_path, monkeypatch) -> None:
    """``only`` computes just the named tables; until every part is stored a run returns what is stored
    (stored_tables reads the same), and the run that completes the set writes the whole."""
    from lrgd.config import get_profile

    calls = _fake_tables(monkeypatch, tmp_path, set())
    prof = get_profile("ci")
    whole = tmp_path / "ci" / "robust" / "testbed-tables.json"
    tables, hit = rt.chapter_tables(None, "w", prof, only=["b"])
    assert calls == ["b"] and not hit and list(tables) == ["b"] and not whole.exists()
    assert list(rt.stored_tables("w", prof)) == ["b"] and rt.stored_tables("other", prof) == {}
    tables, _ = rt.chapter_tables(None, "w", prof, only=["a", "c"])
    assert calls == ["b", "a", "c"] and list(tables) == ["a", "b", "c"] and whole.is_file()
    assert not (tmp_path / "ci" / "robust" / "testbed-tables.parts").exists()
    assert {k: float(v["v"].iloc[0]) for k, v in rt.stored_tables("w", prof).items()} == {
        "a": 1,
        "b": 2,
        "c": 3,
    }
    with pytest.raises(ConfigError, match="unknown testbed table"):
        rt.chapter_tables(None, "w", prof, only=["d"])


def test_tables_key_ignores_the_other_studies_fields() -> None:
    """The testbed tables' key changes with a field the testbed reads and not with the fields of §4.6b,
    §4.7 and §4.8 (``drift_*``, ``reader_*``, ``opt_*``): tuning those never discards a stored run."""
    from lrgd.config import get_profile

    prof = get_profile("ci")
    key = rt._tables_key("w", prof, 0)
    for field_ in ("opt_test_users", "drift_windows", "reader_users"):
        other = replace(prof, robust=replace(prof.robust, **{field_: getattr(prof.robust, field_) + 1}))
        assert rt._tables_key("w", other, 0) == key, field_
    for field_ in ("n_users", "eras"):
        other = replace(prof, robust=replace(prof.robust, **{field_: getattr(prof.robust, field_) + 1}))
        assert rt._tables_key("w", other, 0) != key, field_


def test_full_robust_script_names_a_bad_profile(capsys) -> None:
    """scripts/full_robust.py: an unknown profile is one line naming it (exit status 2), nothing computed."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "full_robust.py"
    spec = importlib.util.spec_from_file_location("full_robust", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--profile", "nope", "--part", "testbed"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "nope" in err[0]
