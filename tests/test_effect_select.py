"""Tests of the Effect_D selectors: the ranking is chapter 3's Effect_D on the *validation* item, the
test item never enters it, and the evaluator puts the best leakage-free demonstrations into the prompt."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_rank import tiny_model_folder

from lrgd.demos import effect as fx
from lrgd.demos.effect_select import EffectRanker
from lrgd.errors import ConfigError
from lrgd.llm import load_model
from lrgd.rec.data import leave_one_out, make_synthetic, write_synthetic
from lrgd.rec.evaluate import EvalConfig, Runner
from lrgd.rec.select import DemoPool


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
    with pytest.raises(ConfigError, match="effect-pool"):
        EvalConfig("amazon-games", "effect", 1, effect_pool=0).validate()
    with pytest.raises(ConfigError, match="use --method zero-shot"):
        EvalConfig("amazon-games", "effect-global", 0).validate()


@pytest.mark.parametrize("method", ["effect", "effect-global"])
def test_evaluator_uses_the_best_leakage_free_demonstrations(tmp_path: Path, setup, method: str) -> None:
    root, folder, _, _ = setup
    cfg = EvalConfig("amazon-games", method, 2, n_users=4, model=str(folder), n_candidates=8,
                     history_len=4, effect_pool=6, effect_users=3)  # fmt: skip
    runner = Runner("ci", "cpu", quiet=True, results_root=tmp_path, data_dir=root)
    res = runner.run(cfg)
    assert res["n_users"] == 4 and set(res["metrics"]) == {"summed", "mean", "pmi"}
    pool = runner.pool(cfg)
    for rec in runner.records(cfg):
        ranking = runner.effect_ranking(cfg, rec["user"])
        held = pool.held_out(rec["user"])
        allowed = [
            s for s in ranking.order
            if pool.allowed(rec["user"], s[0], pool.make(*s)[1], held)
        ]  # fmt: skip
        assert [tuple(s) for s in rec["demo_sources"]] == allowed[:2]
        assert rec["effect"] == sorted(rec["effect"], reverse=True)
    # the per-user and global selectors are cached under different keys; other methods keep theirs
    plain = EvalConfig("amazon-games", "random", 2, n_users=4, model=str(folder))
    assert runner.paths(replace(plain, effect_pool=99)) == runner.paths(plain)
    assert runner.paths(replace(cfg, method="effect", effect_users=9)) == runner.paths(
        replace(cfg, method="effect")
    )
