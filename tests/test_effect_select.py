"""Tests of the Effect_D selectors: the ranking is chapter 3's Effect_D on the *validation* item, the
test item never enters it, and the evaluator puts the best leakage-free demonstrations into the prompt
(the leaky ones known by hand from the fixture's construction)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_rank import tiny_model_folder
from test_select import leaky_by_hand, twin_dataset

from lrgd.demos import effect as fx
from lrgd.demos.effect_select import EffectGlobalSelector, EffectRanker, EffectSelector
from lrgd.errors import ConfigError
from lrgd.llm import load_model
from lrgd.rec.conditions import EvalConfig
from lrgd.rec.data import leave_one_out, make_synthetic, write_synthetic
from lrgd.rec.runner import Runner
from lrgd.rec.select import SELECTORS, DemoPool


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    ds = make_synthetic(n_users=30, n_items=50, seed=3, min_len=4, max_len=8)
    write_synthetic(ds, root / "amazon-games", "amazon-games")
    folder = tiny_model_folder(tmp_path_factory.mktemp("tiny"))
    lm = load_model(str(folder), device="cpu", dtype="float64")
    pool = DemoPool(ds, leave_one_out(ds), history_len=4, seed=0)
    return root, folder, lm, pool


def test_ranking_is_effect_d_on_the_validation_item(setup) -> None:
    _, _, lm, pool = setup
    ranker = EffectRanker(lm, pool, n_demos=5, positions="all")
    assert len(ranker.sources) == 5 and ranker.slot == max(len(t) for t in ranker.tokens)
    user = sorted(pool.split.valid)[0]
    r = ranker.for_user(user)
    # the same numbers from chapter 3's pairwise formula, on the user's validation prompt
    sp = ranker.slot_prompt(*pool.split.valid[user])
    us = fx.user_state(lm.model, sp, "all")
    pairwise = {
        src: fx.effect_d(fx.demo_state(lm.model, sp, t), us) for src, t in zip(ranker.sources, ranker.tokens)
    }
    assert list(r.scores) == sorted(r.scores, reverse=True)
    np.testing.assert_allclose(r.scores, [pairwise[s] for s in r.order], rtol=1e-9, atol=1e-12)


def test_the_test_item_never_enters_the_ranking(setup) -> None:
    _, _, lm, pool = setup
    ranker = EffectRanker(lm, pool, n_demos=4)
    user = sorted(pool.split.valid)[1]
    before = ranker.for_user(user)
    hist, target = pool.split.test[user]
    other = next(i for i in pool.ds.items if i != target)
    pool.split.test[user] = (hist, other)  # a different test item: the ranking must not move
    try:
        assert ranker.for_user(user) == before
    finally:
        pool.split.test[user] = (hist, target)
    mean = ranker.global_ranking(sorted(pool.split.valid)[:3])
    per = [dict(zip(x.order, x.scores)) for x in (ranker.for_user(u) for u in sorted(pool.split.valid)[:3])]
    np.testing.assert_allclose(mean.scores, [np.mean([p[s] for p in per]) for s in mean.order], rtol=1e-9)


def test_bad_sizes_fail_clearly(setup) -> None:
    _, _, lm, pool = setup
    with pytest.raises(ConfigError, match="≥ 1 demonstration"):
        EffectRanker(lm, pool, n_demos=0)
    with pytest.raises(ConfigError, match="unknown positions"):
        EffectRanker(lm, pool, positions="middle")
    with pytest.raises(ConfigError, match="--effect-pool must be ≥ 1, got 0"):
        EvalConfig("amazon-games", "effect", 1, params={"effect_pool": 0}).validate()
    with pytest.raises(ConfigError, match="--effect-users must be ≥ 1, got -2"):
        EvalConfig("amazon-games", "effect-global", 1, params={"effect_users": -2}).validate()
    with pytest.raises(ConfigError, match="'effect' takes no parameter effect_users"):
        EvalConfig("amazon-games", "effect", 1, params={"effect_users": 3}).validate()
    with pytest.raises(ConfigError, match="use --method zero-shot"):
        EvalConfig("amazon-games", "effect-global", 0).validate()


def test_each_selector_is_one_registered_class() -> None:
    assert (
        SELECTORS.get("effect") is EffectSelector and SELECTORS.get("effect-global") is EffectGlobalSelector
    )
    assert [p.name for p in SELECTORS.params("effect")] == ["effect_pool"]
    assert [p.name for p in SELECTORS.params("effect-global")] == ["effect_pool", "effect_users"]


@pytest.mark.parametrize("method", ["effect", "effect-global"])
def test_evaluator_uses_the_best_leakage_free_demonstrations(tmp_path: Path, method: str) -> None:
    """On :func:`test_select.twin_dataset` three of the ten sources leak for each user (its own, an id leak
    and a title-twin leak; written down by hand in :func:`test_select.leaky_by_hand`): the prompt holds
    the two best-ranked of the others."""
    write_synthetic(twin_dataset(), tmp_path / "data" / "amazon-games", "amazon-games")
    folder = tiny_model_folder(tmp_path / "tiny")
    params = {"effect_pool": 6} | ({"effect_users": 3} if method == "effect-global" else {})
    cfg = EvalConfig("amazon-games", method, 2, n_users=4, model=str(folder), n_candidates=8, history_len=4,
                     params=params)  # fmt: skip
    runner = Runner("ci", "cpu", quiet=True, results_root=tmp_path / "res", data_dir=tmp_path / "data")
    res = runner.run(cfg)
    assert res["n_users"] == 4 and set(res["metrics"]) == {"summed", "mean", "pmi"}
    selector = runner.method(cfg)
    for rec in runner.records(cfg):
        ranking = selector.ranking(runner, cfg, rec["user"])
        expected = [list(s) for s in ranking.order if s[0] not in leaky_by_hand(rec["user"])][:2]
        assert rec["demo_sources"] == expected and rec["fallback"] == 0
        assert rec["effect"] == sorted(rec["effect"], reverse=True)
    # the parameters are part of the cache key: a different M is a different result file
    other = replace(cfg, params={**dict(cfg.params), "effect_pool": 5})
    assert runner.key(other) != runner.key(cfg)
